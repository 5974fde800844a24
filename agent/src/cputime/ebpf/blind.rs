//! What the eBPF source reads from /proc: the processes the kernel's task iterator
//! does not visit although /proc lists them (on the development VM's 6.18 kernel,
//! pid 1 and its threads), found once at load by comparing the two, then read from
//! the agent's procfs (`--proc-root`) at every listing, through the same stat
//! reader and unit conversion as the /proc scan; and the stat files of processes
//! the program could not count (see `map_full`).

use super::source::EbpfCpuTime;
use crate::cputime::ProcessRecord;
use crate::host::clock::HostClock;
use crate::host::procfs::{self, ProcDir};
use crate::host::stat::{Stat, parse_stat};

/// Reads `PID/stat` files of the agent's procfs.
#[derive(Default)]
pub(super) struct ProcStats {
    /// The procfs root, kept open.
    dir: Option<ProcDir>,
    buffer: Vec<u8>,
}

impl ProcStats {
    pub(super) fn new(dir: Option<ProcDir>) -> Self {
        Self { dir, buffer: Vec::new() }
    }

    pub(super) fn dir(&self) -> Option<&ProcDir> {
        self.dir.as_ref()
    }

    /// What `take` takes from `pid`'s stat file; None when the process is gone or
    /// the file unreadable.
    pub(super) fn read<R>(&mut self, pid: u32, take: impl FnOnce(&Stat<'_>) -> R) -> Option<R> {
        let file = self.dir.as_ref()?.open_stat(pid).ok()?;
        let length = procfs::read_from_start(&file, &mut self.buffer).ok()?;
        Some(take(&parse_stat(&self.buffer[..length]).ok()?))
    }
}

/// The pids the iterator skips, and the clock that converts what /proc says of them.
#[derive(Default)]
pub(super) struct BlindPids {
    /// Ascending.
    pids: Vec<u32>,
    /// Converts /proc's clock ticks and pages.
    clock: Option<HostClock>,
}

impl BlindPids {
    /// Compares one pass of the iterator with the listing of the source's procfs
    /// and keeps the processes the iterator missed although the procfs listed them
    /// before and after it. Fails when the iterator does.
    pub(super) fn find(
        source: &mut EbpfCpuTime,
        clock: HostClock,
    ) -> Result<BlindPids, Box<dyn std::error::Error + Send + Sync>> {
        let mut buffer = Vec::new();
        let before = listed_pids(source.proc_stats.dir(), &mut buffer);
        let mut records = Vec::new();
        source.list_processes(&mut records)?;
        let after = listed_pids(source.proc_stats.dir(), &mut buffer);
        let pids: Vec<u32> = before
            .into_iter()
            .filter(|pid| after.binary_search(pid).is_ok())
            .filter(|pid| records.binary_search_by_key(pid, |record| record.tgid).is_err())
            .collect();
        if pids.is_empty() {
            return Ok(BlindPids::default());
        }
        let shown = &pids[..pids.len().min(8)];
        tracing::info!(
            "the kernel's task iterator skips processes that /proc lists (pids {shown:?}, {} in all); \
             they are read from /proc",
            pids.len()
        );
        Ok(BlindPids { pids, clock: Some(clock) })
    }

    /// Appends to `out` the record of each blind pid that the iterator's records
    /// (`out[..visited]`, sorted by pid) lack, read through `stats`, with its CPU
    /// time from `cpu_ns` (given the pid and its utime + stime in ticks).
    pub(super) fn append_missing(
        &self,
        stats: &mut ProcStats,
        out: &mut Vec<ProcessRecord>,
        visited: usize,
        mut cpu_ns: impl FnMut(u32, u64) -> u64,
    ) {
        let Some(clock) = self.clock else { return };
        for &pid in &self.pids {
            if out[..visited].binary_search_by_key(&pid, |record| record.tgid).is_ok() {
                continue;
            }
            // The record of `pid` as `PID/stat` gives it, its start time in ns since
            // boot like the iterator's (to the tick).
            let record = stats.read(pid, |stat| {
                let mut comm = [0u8; 16];
                let name = &stat.comm[..stat.comm.len().min(comm.len())];
                comm[..name.len()].copy_from_slice(name);
                let record = ProcessRecord {
                    tgid: pid,
                    ppid: stat.ppid,
                    start_time_ns: clock.ticks_to_ns(stat.start_time),
                    cpu_ns: 0,
                    rss_pages: stat.rss_pages,
                    comm,
                };
                (record, stat.utime + stat.stime)
            });
            if let Some((record, ticks)) = record {
                out.push(ProcessRecord { cpu_ns: cpu_ns(pid, ticks), ..record });
            }
        }
    }
}

/// The pids `dir` lists, ascending; none when it cannot be listed.
pub(super) fn listed_pids(dir: Option<&ProcDir>, buffer: &mut Vec<u8>) -> Vec<u32> {
    let mut pids = Vec::new();
    let Some(dir) = dir else { return pids };
    if let Err(error) = dir.list_pids(buffer, &mut pids) {
        tracing::debug!("listing /proc: {error}");
        pids.clear();
    }
    pids.sort_unstable();
    pids
}
