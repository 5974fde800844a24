//! What one scan of the processes knows: the domain data every processes answer is
//! rendered from (the socktop protobuf list today; Prometheus counters and the
//! attribution of exited processes build on the same fields).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cputime::CpuSourceKind;

/// Every process of the host at one instant, with its CPU share over the interval
/// since the scan before.
#[derive(Debug, Clone)]
pub struct ProcessesSnapshot {
    /// When the CPU times were read (the monotonic clock).
    pub at: Instant,
    /// The same instant on the wall clock.
    pub sampled_at: SystemTime,
    /// Time since the scan before, over which `cpu_share` is measured; None on the
    /// first scan.
    pub interval: Option<Duration>,
    /// Logical CPUs online: a share of 100% is all of them busy.
    pub cpus: usize,
    /// Which source counted the CPU times.
    pub source: CpuSourceKind,
    /// Every process (threads folded into their process), ascending by pid.
    pub processes: Vec<ProcessSample>,
    /// CPU ns per command name since the agent started counting, processes that
    /// exited included (see [`CommCpu`](crate::collect::process_groups::CommCpu)):
    /// counters that only grow, in the order names were first seen.
    pub comm_cpu_ns: Vec<(Arc<str>, u64)>,
}

/// One process in a [`ProcessesSnapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSample {
    pub pid: u32,
    /// The parent's pid (0 for none).
    pub ppid: u32,
    /// When the process started, in ns since boot: with the pid, names the process
    /// across pid reuse. The eBPF iterator gives it to the ns (CLOCK_MONOTONIC);
    /// `/proc/PID/stat` in clock ticks, converted (so truncated to a tick).
    pub start_time_ns: u64,
    /// The command name (`comm`), decoded lossily.
    pub name: Arc<str>,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Cumulative on-CPU ns as the source counts them: since the process started
    /// for /proc, since the program was attached for eBPF. Only differences mean
    /// anything across sources.
    pub cpu_ns: u64,
    /// CPU ns this process accounts for over the snapshot's interval: what it ran
    /// since the scan before (all of it when it started since), plus, under
    /// `--cpu-children attribute`, the time not yet shown of its descendants that
    /// exited meanwhile (see `cputime::attribution`); None on the first scan.
    pub interval_cpu_ns: Option<u64>,
    /// `interval_cpu_ns` as a share of the whole machine over the snapshot's
    /// interval, in percent (0..=100, one busy CPU of two reads 50); None on the
    /// first scan.
    pub cpu_share: Option<f32>,
}
