//! Per-process cumulative CPU time: the one interface behind which the eBPF
//! accounting and the /proc fallback sit, so the collectors and the protocol code
//! do not know which one runs.
//!
//! Both sources report cumulative on-CPU nanoseconds per process (all its threads,
//! exited ones included). Turning two readings into a percentage is done once, in
//! [`rate::RateRule`] (on [`cpu_percent`]), so both modes show the same scale.

pub mod attribution;
pub mod btf;
pub mod ebpf;
pub mod proc;
pub mod rate;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::host::clock::HostClock;

/// The CPU-time source, shared by the processes list and the per-process detail.
pub type SharedCpuSource = Arc<Mutex<Box<dyn CpuTimeSource>>>;

/// Which source is counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSourceKind {
    /// The `sched_switch` eBPF program's per-process counters.
    Ebpf,
    /// utime+stime from `/proc/PID/stat`.
    Proc,
}

impl CpuSourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuSourceKind::Ebpf => "ebpf",
            CpuSourceKind::Proc => "proc",
        }
    }
}

/// What the /proc scan knows of one process's CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedCpu {
    pub pid: u32,
    /// utime + stime from `/proc/PID/stat`, in clock ticks.
    pub ticks: u64,
}

pub use agent_common::cputime::ProcessRecord;

#[derive(Debug, thiserror::Error)]
pub enum CpuTimeError {
    #[error("reading the eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the eBPF process iterator: {0}")]
    Iterator(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A source of cumulative per-process CPU time.
pub trait CpuTimeSource: Send {
    fn kind(&self) -> CpuSourceKind;

    /// Why this is the /proc source rather than the eBPF one.
    fn fallback(&self) -> Option<&Fallback> {
        None
    }

    /// The eBPF features this kernel lacks, each with why (`feature: why`); the
    /// source counts on without them. Empty for a source that lacks nothing.
    fn degraded(&self) -> &[String] {
        &[]
    }

    /// Cumulative counts of what the source could not count, by cause (for the
    /// eBPF program: switches lost to a full map, ...). Empty when it has none.
    fn error_counts(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Writes into `out`, in the order of `procs`, the cumulative on-CPU nanoseconds of
    /// each process. `out` is cleared first.
    fn cumulative_ns(&mut self, procs: &[ScannedCpu], out: &mut Vec<u64>) -> Result<(), CpuTimeError>;

    /// Every process of the host with its cumulative CPU time, in one read, for a
    /// source that can list them itself (the eBPF task iterator), sorted by pid into
    /// `out` (cleared first). None when it cannot: the caller scans /proc instead.
    fn read_processes(&mut self, _out: &mut Vec<ProcessRecord>) -> Option<Result<(), CpuTimeError>> {
        None
    }

    /// Moves into `out` (cleared first) the processes that exited since the last
    /// call, with their final totals, for a source that records exits; false for
    /// one that does not (their time is then seen only through their parents'
    /// reaped-children times).
    fn take_exits(&mut self, _out: &mut Vec<attribution::Exit>) -> bool {
        false
    }

    /// Drops whatever the source keeps for processes that are gone. `live` is every pid
    /// of one complete scan, sorted.
    fn retain_live(&mut self, live: &[u32]);

    /// A first client connected: start the periodic kernel work readings need, so
    /// that the first reading does not wait for it.
    fn active(&mut self) {}

    /// No client is connected: stop any periodic kernel work until the next reading,
    /// so an agent nobody watches costs the host nothing but its tracepoint.
    fn idle(&mut self) {}
}

/// Why the agent counts CPU time from /proc; its text is the agent info's and
/// the health metric's `cpu_source_reason`.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    #[error("disabled by --ebpf off or SOCKTOP_AGENT_EBPF=0")]
    Disabled,
    #[error(transparent)]
    EbpfFailed(#[from] ebpf::EbpfLoadError),
}

/// Picks the CPU-time source once at start-up: the eBPF program unless
/// `force_proc` (`--ebpf off` / `SOCKTOP_AGENT_EBPF=0`) or it cannot load, else
/// /proc, which keeps the reason ([`CpuTimeSource::fallback`]). Logs exactly one
/// line, `cpu source: ebpf` or `cpu source: proc (<reason>)`. `proc_root` is the
/// procfs the agent reads (`--proc-root`), `clock` its units.
pub fn select_source(force_proc: bool, proc_root: &Path, clock: HostClock) -> Box<dyn CpuTimeSource> {
    let loaded =
        if force_proc { Err(Fallback::Disabled) } else { ebpf::load(proc_root, clock).map_err(Fallback::from) };
    match loaded {
        Ok(source) => {
            tracing::info!("cpu source: ebpf");
            Box::new(source)
        }
        Err(reason) => {
            tracing::info!("cpu source: proc ({reason})");
            Box::new(proc::ProcCpuTime::new(clock.ticks_per_second()).because(reason))
        }
    }
}

/// Share of the whole machine, in percent clamped to 0..=100, of `busy_ns` spent
/// over `wall` on a machine with `cpus` logical CPUs. This is the scale of the
/// original agent (process jiffies over total jiffies): one busy thread on a
/// 2-CPU host reads 50.
pub fn cpu_percent(busy_ns: u64, wall: Duration, cpus: usize) -> f32 {
    let capacity_ns = wall.as_nanos() as f64 * cpus.max(1) as f64;
    if capacity_ns <= 0.0 {
        return 0.0;
    }
    (busy_ns as f64 / capacity_ns * 100.0).clamp(0.0, 100.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_busy_thread_on_two_cpus_is_half_the_machine() {
        let pct = cpu_percent(1_000_000_000, Duration::from_secs(1), 2);
        assert!((pct - 50.0).abs() < 1e-4, "{pct}");
    }

    #[test]
    fn a_disabled_ebpf_source_is_the_proc_one_saying_why_in_the_documented_words() {
        let source = select_source(true, Path::new("/proc"), HostClock::new(100, 0, 4096));
        assert_eq!(source.kind(), CpuSourceKind::Proc);
        let reason = source.fallback().expect("a fallback reason");
        assert!(matches!(reason, Fallback::Disabled), "{reason:?}");
        // docs/PROTOCOL.md quotes it for `cpu_source_reason`.
        assert_eq!(reason.to_string(), "disabled by --ebpf off or SOCKTOP_AGENT_EBPF=0");
    }

    #[test]
    fn percent_is_clamped_and_safe_on_zero_wall_time() {
        assert_eq!(cpu_percent(5_000_000_000, Duration::from_secs(1), 2), 100.0);
        assert_eq!(cpu_percent(5, Duration::ZERO, 2), 0.0);
    }
}
