//! When the program's process map is full: which processes are read from /proc
//! instead, and one log line when the map fills, one when it has room again.
//!
//! The program counts a process's time only in its map entry; a process that
//! cannot get one (the map holds `capacity` processes, or, allocated on demand, the
//! kernel had no memory at hand) runs uncounted and the program bumps
//! `ERR_MAP_FULL`. Its CPU time then comes from /proc (utime + stime of
//! `/proc/PID/stat`, in ns, as the /proc source reports it), by this rule:
//!
//! - An **episode** opens at the reading that sees the map-full count risen since
//!   the reading before, and closes at the first reading that sees it unchanged
//!   while the last complete listing had fewer processes than the map holds.
//! - While an episode is open, a process read without an entry in the map is put
//!   **on /proc**; it stays there, episode over or not, until a listing no longer
//!   has its pid (it exited). Every reading of it, by either path (the task
//!   iterator's listing, the /proc scan, one process's detail), is its /proc total.
//!
//! So a process never moves back from /proc's clock (since its start) to the
//! map's (since it got an entry), which would make its count drop. The processes
//! that fill a map are new ones, whose first reading is on /proc: no step at all.
//! A process that had no entry for another reason when the episode opened (it had
//! not run since the program loaded, possible with the preallocated map, which is
//! not prefilled) read 0 until then and steps once to its /proc total; its share
//! over that one interval is overstated, never afterwards.

use std::collections::BTreeSet;

use crate::host::clock::HostClock;

/// The map-full episodes of one loaded program.
#[derive(Debug)]
pub(super) struct MapFull {
    /// How many processes the map holds.
    capacity: u32,
    /// Converts /proc's clock ticks.
    clock: HostClock,
    open: bool,
    /// Processes whose CPU time comes from /proc until they exit.
    on_proc: BTreeSet<u32>,
    /// The map-full count at the last reading.
    seen_failures: u64,
    /// Processes of the last complete listing.
    live: usize,
}

impl MapFull {
    pub(super) fn new(capacity: u32, clock: HostClock) -> Self {
        Self { capacity, clock, open: false, on_proc: BTreeSet::new(), seen_failures: 0, live: 0 }
    }

    /// Opens or closes the episode from the program's map-full count, before a
    /// reading; logs each opening and closing once.
    pub(super) fn observe(&mut self, failures: u64) {
        let new = failures.saturating_sub(self.seen_failures);
        self.seen_failures = failures;
        if new > 0 && !self.open {
            self.open = true;
            tracing::warn!(
                "eBPF process map full ({} entries) or out of memory: {new} switch-ins not counted; \
                 processes without an entry are read from /proc until they exit",
                self.capacity
            );
        } else if new > 0 {
            tracing::debug!("eBPF process map still full: {new} more switch-ins not counted");
        } else if self.open && self.live < self.capacity as usize {
            self.open = false;
            tracing::info!(
                "eBPF process map has room again; {} processes stay on /proc values until they exit",
                self.on_proc.len()
            );
        }
    }

    /// Whether a reading may need /proc at all: an episode is open, or some
    /// processes are on /proc. False nearly always, and then nothing else is asked.
    pub(super) fn active(&self) -> bool {
        self.open || !self.on_proc.is_empty()
    }

    /// Whether the process is on /proc (already, or from now: read without an entry
    /// while an episode is open). `has_entry` is asked only when that decides.
    pub(super) fn reads_from_proc(&mut self, pid: u32, has_entry: impl FnOnce() -> bool) -> bool {
        if self.on_proc.contains(&pid) {
            return true;
        }
        if !self.open || has_entry() {
            return false;
        }
        self.on_proc.insert(pid);
        true
    }

    /// The /proc value of a process: utime + stime in clock ticks, in ns.
    pub(super) fn proc_ns(&self, ticks: u64) -> u64 {
        self.clock.ticks_to_ns(ticks)
    }

    /// A complete listing: `live` is every pid, sorted. Forgets the processes that
    /// exited; the count decides when an episode can close.
    pub(super) fn retain_live(&mut self, live: &[u32]) {
        self.live = live.len();
        if !self.on_proc.is_empty() {
            self.on_proc.retain(|pid| live.binary_search(pid).is_ok());
        }
    }

    /// The number of processes of a complete listing, when its pids are not at hand.
    pub(super) fn listed(&mut self, count: usize) {
        self.live = count;
    }

    #[cfg(any(test, feature = "testing"))]
    pub(super) fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_full(capacity: u32) -> MapFull {
        MapFull::new(capacity, HostClock::new(100, 0, 4096))
    }

    #[test]
    fn opens_when_failures_rise_and_closes_once_there_is_room() {
        let mut full = map_full(8);
        full.listed(20);
        full.observe(0);
        assert!(!full.active());
        full.observe(3);
        assert!(full.is_open());
        full.observe(3);
        assert!(full.is_open(), "20 processes cannot fit in 8 entries, failures or not");
        full.listed(5);
        full.observe(9);
        assert!(full.is_open(), "still failing");
        full.observe(9);
        assert!(!full.is_open());
    }

    #[test]
    fn a_process_read_without_an_entry_stays_on_proc_until_it_exits() {
        let mut full = map_full(8);
        assert!(!full.reads_from_proc(42, || false), "no episode: no entry reads 0 (not run since loading)");
        full.listed(20);
        full.observe(1);
        assert!(full.reads_from_proc(42, || false));
        assert!(!full.reads_from_proc(43, || true), "a process with an entry is counted by the program");
        full.listed(3);
        full.observe(1);
        assert!(!full.is_open());
        assert!(full.reads_from_proc(42, || panic!("not asked: it is on /proc")), "after the episode too");
        assert!(!full.reads_from_proc(44, || false));
        full.retain_live(&[7, 43]);
        assert!(!full.active(), "42 exited");
        assert_eq!(full.proc_ns(250), 2_500_000_000);
    }
}
