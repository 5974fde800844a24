//! The processes the kernel's task iterator does not visit although /proc lists
//! them (on the development VM's 6.18 kernel, pid 1 and its threads): found once at
//! load by comparing the two, then read from the agent's procfs (`--proc-root`) at
//! every listing, through the same stat reader and unit conversion as the /proc scan.

use super::source::EbpfCpuTime;
use crate::cputime::ProcessRecord;
use crate::host::clock::HostClock;
use crate::host::procfs::{self, ProcDir};
use crate::host::stat::parse_stat;

/// The pids the iterator skips, and what reading them from /proc needs.
#[derive(Default)]
pub(super) struct BlindPids {
    /// Ascending.
    pids: Vec<u32>,
    /// The procfs root, kept open to read the pids' stat files.
    dir: Option<ProcDir>,
    /// Converts /proc's clock ticks and pages.
    clock: Option<HostClock>,
    stat_buffer: Vec<u8>,
}

impl BlindPids {
    /// Compares one pass of the iterator with the listing of `dir` and keeps the
    /// processes the iterator missed although `dir` listed them before and after it.
    /// Fails when the iterator does.
    pub(super) fn find(
        source: &mut EbpfCpuTime,
        dir: Option<ProcDir>,
        clock: HostClock,
    ) -> Result<BlindPids, Box<dyn std::error::Error + Send + Sync>> {
        let mut buffer = Vec::new();
        let before = listed_pids(dir.as_ref(), &mut buffer);
        let mut records = Vec::new();
        source.list_processes(&mut records)?;
        let after = listed_pids(dir.as_ref(), &mut buffer);
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
        Ok(BlindPids { pids, dir, clock: Some(clock), stat_buffer: Vec::new() })
    }

    /// Appends to `out` the record of each blind pid that the iterator's records
    /// (`out[..visited]`, sorted by pid) lack, with its CPU time from `cpu_ns`.
    pub(super) fn append_missing(&mut self, out: &mut Vec<ProcessRecord>, visited: usize, cpu_ns: impl Fn(u32) -> u64) {
        for index in 0..self.pids.len() {
            let pid = self.pids[index];
            if out[..visited].binary_search_by_key(&pid, |record| record.tgid).is_err()
                && let Some(record) = self.record_from_proc(pid, &cpu_ns)
            {
                out.push(record);
            }
        }
    }

    /// The record of `pid` as `PID/stat` and the CPU-time map give it, its start time
    /// in ns since boot like the iterator's (to the tick); None when it is gone.
    fn record_from_proc(&mut self, pid: u32, cpu_ns: impl Fn(u32) -> u64) -> Option<ProcessRecord> {
        let (dir, clock) = (self.dir.as_ref()?, self.clock?);
        let file = dir.open_stat(pid).ok()?;
        let length = procfs::read_from_start(&file, &mut self.stat_buffer).ok()?;
        let stat = parse_stat(&self.stat_buffer[..length]).ok()?;
        let mut comm = [0u8; 16];
        let name = &stat.comm[..stat.comm.len().min(comm.len())];
        comm[..name.len()].copy_from_slice(name);
        Some(ProcessRecord {
            tgid: pid,
            start_time_ns: clock.ticks_to_ns(stat.start_time),
            cpu_ns: cpu_ns(pid),
            rss_pages: stat.rss_pages,
            comm,
            ..ProcessRecord::default()
        })
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
