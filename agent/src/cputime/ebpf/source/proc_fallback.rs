//! The processes the program could not count while its map was full, read
//! from /proc instead (the rule is `map_full`'s).

use aya::maps::MapError;

use super::EbpfCpuTime;
use crate::cputime::ProcessRecord;

impl EbpfCpuTime {
    /// Puts the iterator's `records` of processes on /proc (see `map_full`) on their
    /// /proc totals. A record with time has an entry: only one read as 0 may lack one.
    pub(super) fn read_uncounted_from_proc(&mut self, records: &mut [ProcessRecord]) {
        for record in records {
            let (tgid, times) = (record.tgid, &self.times);
            let has_entry = || record.cpu_ns != 0 || !matches!(times.get(&tgid, 0), Err(MapError::KeyNotFound));
            if !self.map_full.reads_from_proc(tgid, has_entry) {
                continue;
            }
            // Gone since the iterator saw it: its record goes with the next listing.
            if let Some(ticks) = self.proc_stats.read(tgid, |stat| stat.utime + stat.stime) {
                record.cpu_ns = self.map_full.proc_ns(ticks);
            }
        }
    }
}
