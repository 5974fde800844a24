//! Reading the program's maps: per-process times (summed over CPUs at the
//! instant of the read), the task iterator's listing, the error counters and
//! the exit records.

use std::io::Read as _;

use agent_common::cputime::{
    CPU_NS_UNSUMMED, ERR_COUNT, ERR_EXIT_LOST, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, ExitRecord,
    PROGRAM_PROCESSES, ProcessTime,
};
use aya::maps::{MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::programs::Iter;

use super::super::exit_ring::ExitRing;
use super::{EbpfCpuTime, ErrorCounts};
use crate::cputime::ProcessRecord;
use crate::host::clock::monotonic_ns;

impl EbpfCpuTime {
    /// Cumulative on-CPU ns of process `tgid` since the program was attached, at
    /// the instant of the call; 0 if it has not run since.
    pub fn process_ns(&self, tgid: u32) -> Result<u64, MapError> {
        Ok(self.entry(tgid)?.map_or(0, |copies| sum_at(copies.iter(), monotonic_ns())))
    }

    /// The CPU time of process `tgid`, whose utime + stime in /proc are
    /// `proc_ticks`: from the map, or from /proc when the map-full rule says so.
    pub(super) fn reading_ns(&mut self, tgid: u32, proc_ticks: u64) -> Result<u64, MapError> {
        let copies = self.entry(tgid)?;
        if self.map_full.active() && self.map_full.reads_from_proc(tgid, || copies.is_some()) {
            return Ok(self.map_full.proc_ns(proc_ticks));
        }
        Ok(copies.map_or(0, |copies| sum_at(copies.iter(), monotonic_ns())))
    }

    /// Every process with its cumulative CPU time, from one pass of the task
    /// iterator, in pid order. Each pass needs its own iterator file, made from a
    /// fresh link (two syscalls; the program stays loaded). Private: callers go
    /// through `read_processes`, which attaches `resync` first; without it a task
    /// that came onto a CPU untraced is not counted until its next switch.
    pub(in crate::cputime::ebpf) fn list_processes(
        &mut self,
        out: &mut Vec<ProcessRecord>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        out.clear();
        if !self.iterator {
            return Err("the task iterator is not loaded".into());
        }
        let program: &mut Iter = self.ebpf.program_mut(PROGRAM_PROCESSES).ok_or("no iterator program")?.try_into()?;
        let link = program.attach()?;
        let mut file = program.take_link(link)?.into_file()?;
        self.iterator_output.clear();
        file.read_to_end(&mut self.iterator_output)?;
        let record_len = std::mem::size_of::<ProcessRecord>();
        out.extend(self.iterator_output.chunks_exact(record_len).map(|bytes| {
            // SAFETY: `bytes` holds `record_len` bytes, and `ProcessRecord` is plain
            // integers (aya::Pod), valid for any bit pattern; read unaligned.
            unsafe { bytes.as_ptr().cast::<ProcessRecord>().read_unaligned() }
        }));
        self.sum_unsummed(out);
        // The kernel walks tasks in pid order; sorting guards the merge (and the
        // search below) against a kernel that does not.
        if !out.is_sorted_by_key(|record| record.tgid) {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        let visited = out.len();
        if self.map_full.active() {
            self.read_uncounted_from_proc(out);
        }
        let (blind, mut stats) = (std::mem::take(&mut self.blind), std::mem::take(&mut self.proc_stats));
        blind.append_missing(&mut stats, out, visited, |pid, ticks| self.reading_ns(pid, ticks).unwrap_or(0));
        (self.blind, self.proc_stats) = (blind, stats);
        if out.len() > visited {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        self.map_full.listed(out.len());
        Ok(())
    }

    /// Fills in the time of the records the iterator could not sum (a kernel without
    /// `bpf_map_lookup_percpu_elem`): one map lookup each, which returns every CPU's
    /// copy; 0 for a process without an entry, as the iterator would write.
    fn sum_unsummed(&self, records: &mut [ProcessRecord]) {
        for record in records.iter_mut().filter(|record| record.cpu_ns == CPU_NS_UNSUMMED) {
            record.cpu_ns = match self.entry(record.tgid) {
                Ok(copies) => copies.map_or(0, |copies| sum_at(copies.iter(), monotonic_ns())),
                Err(error) => {
                    tracing::debug!("reading the eBPF entry of {}: {error}", record.tgid);
                    0
                }
            };
        }
    }

    /// Every CPU's copy of `tgid`'s entry; None without one.
    pub(in crate::cputime::ebpf) fn entry(&self, tgid: u32) -> Result<Option<PerCpuValues<ProcessTime>>, MapError> {
        match self.times.get(&tgid, 0) {
            Ok(copies) => Ok(Some(copies)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The program's error counters, summed over CPUs.
    pub fn error_counts(&self) -> Result<ErrorCounts, MapError> {
        let sum = |index: u32| -> Result<u64, MapError> { Ok(self.errors.get(&index, 0)?.iter().sum()) };
        debug_assert_eq!(ERR_COUNT, 4);
        Ok(ErrorCounts {
            map_full: sum(ERR_MAP_FULL)?,
            read_task: sum(ERR_READ_TASK)?,
            mismatch: sum(ERR_MISMATCH)?,
            exit_lost: sum(ERR_EXIT_LOST)?,
        })
    }

    /// Logs failures the program counted since the last report, and opens or
    /// closes a map-full episode (logged once each), before a reading.
    pub(super) fn report_errors(&mut self) {
        let counts = match self.error_counts() {
            Ok(counts) => counts,
            Err(error) => return tracing::warn!("reading the eBPF error counters: {error}"),
        };
        let new = |now: u64, before: u64| now.saturating_sub(before);
        self.map_full.observe(counts.map_full);
        let unread = new(counts.read_task, self.reported.read_task);
        if unread > 0 {
            tracing::warn!("eBPF program could not read {unread} task ids; their time is not counted");
        }
        let lost = new(counts.exit_lost, self.reported.exit_lost);
        if lost > 0 {
            tracing::warn!(
                "eBPF exit records: {lost} exited processes did not fit in the ring between two scans; \
                 the time they ran since the previous scan is missing from their parents"
            );
        }
        let mismatch = new(counts.mismatch, self.reported.mismatch);
        if mismatch > 0 {
            // Some kernels switch some tasks without the tracepoint (docs/EBPF.md);
            // a few a second is normal there, so this is no warning.
            tracing::debug!("eBPF program saw {mismatch} switch-outs of an unexpected task");
        }
        self.reported = counts;
    }

    /// True when `tgid`'s entry shows no thread on a CPU, so it may be deleted
    /// without unbalancing a running slice (see `retain_live`).
    pub(super) fn is_idle(&self, tgid: u32) -> bool {
        matches!(self.entry(tgid), Ok(Some(copies)) if !copies.iter().any(|time| time.running()))
    }

    /// Hands `each` the exit records written since the last call, oldest first,
    /// and frees their room in the ring.
    pub fn take_exit_records(&mut self, each: impl FnMut(ExitRecord)) {
        drain_exits(&mut self.exits, each);
    }
}

/// Hands `each` the records in the `exits` ring, oldest first, and frees their room.
pub(super) fn drain_exits(exits: &mut ExitRing, mut each: impl FnMut(ExitRecord)) {
    while let Some(item) = exits.next() {
        if item.len() >= std::mem::size_of::<ExitRecord>() {
            // SAFETY: the program writes whole `ExitRecord`s, plain integers
            // (aya::Pod) valid for any bit pattern; read unaligned.
            each(unsafe { item.as_ptr().cast::<ExitRecord>().read_unaligned() });
        }
    }
}

/// The final total of an exit `record`. One the program could not sum (before
/// Linux 5.19) is summed here from the process's entry, which the program left for
/// this, and the entry is deleted. Until then its pid could be reused by a process
/// whose first slices would add to it; pids being handed out in increasing order up
/// to `pid_max`, that needs the pids to wrap between an exit and the next scan.
pub(super) fn final_total(times: &mut PerCpuHashMap<MapData, u32, ProcessTime>, record: &ExitRecord) -> u64 {
    if record.cpu_ns != CPU_NS_UNSUMMED {
        return record.cpu_ns;
    }
    let total = match times.get(&record.tgid, 0) {
        Ok(copies) => sum_at(copies.iter(), monotonic_ns()),
        Err(_) => 0,
    };
    match times.remove(&record.tgid) {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(error) => tracing::debug!("deleting the eBPF entry of {}: {error}", record.tgid),
    }
    total
}

/// A process's cumulative on-CPU ns at `now_ns`: its copies summed over CPUs.
///
/// `now_ns` must be read after the copies: a slice that started after it (a
/// fork loop's child, first run between the clock read and the lookup) would
/// count negative time. Should a start still be a little ahead of the clock
/// (the program's clock and ours are both CLOCK_MONOTONIC, but a start can be
/// derived from the run queue's clock), the sum is held at 0 rather than
/// wrapping to an absurd total.
fn sum_at<'a>(copies: impl IntoIterator<Item = &'a ProcessTime>, now_ns: u64) -> u64 {
    let signed = copies.into_iter().fold(0u64, |total, time| total.wrapping_add(time.at(now_ns))) as i64;
    signed.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened_at(start_ns: u64) -> ProcessTime {
        ProcessTime(ProcessTime::open_delta(start_ns))
    }

    #[test]
    fn a_slice_running_on_each_of_two_cpus_counts_up_to_now_on_both() {
        let copies = [opened_at(1_000), ProcessTime(ProcessTime::finished_delta(300)), opened_at(1_500)];
        assert_eq!(sum_at(&copies, 2_000), 1_000 + 300 + 500);
    }

    #[test]
    fn a_slice_that_starts_after_the_clock_was_read_never_wraps_to_an_absurd_total() {
        // A fork loop's child whose first slice began 40 µs after `now`: its only
        // copy holds `-start`, which must not read as 2^64 - 40 µs.
        assert_eq!(sum_at(&[opened_at(1_040_000)], 1_000_000), 0);
        // Another CPU's finished time still counts when it outweighs the early start.
        let copies = [ProcessTime(ProcessTime::finished_delta(90_000)), opened_at(1_040_000)];
        assert_eq!(sum_at(&copies, 1_000_000), 50_000);
    }
}
