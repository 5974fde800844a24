//! Per-command-name totals for Prometheus, bounded whatever the number of
//! processes: CPU time, run-queue wait and switches summed per `comm` into
//! counters that never go back, plus the live processes and resident bytes per
//! name, and the few processes using the most CPU.
//!
//! A sum over the processes alive now would drop when one exits or execs under a
//! new name, and Prometheus reads any drop of a counter as a reset (a spike in
//! `rate`). So each name's counters grow by what its processes used *since the
//! previous sample* (a new process counts in full): what a process used before an
//! exec stays with its old name, and an exited process's time stays counted.
//! The CPU counters are kept by the processes scanner itself ([`CommCpu`], on
//! every scan, whoever asked for it, with the exit records of the eBPF source), so
//! a process that exits between two scrapes keeps all its time; the scrape only
//! maps those names onto its capped series.
//!
//! At most `max_names` names get series of their own, first come first served,
//! so that no name ever moves between its own series and `other`.

use std::collections::HashMap;
use std::sync::Arc;

use super::processes::{ProcessSample, comm_bytes};

use crate::cputime::attribution::Exit;
use crate::cputime::rate::RateRule;
use crate::host::schedstat::SchedStat;
use crate::host::stat::comm_name;

/// The series all names past the cap are summed into.
pub const OTHER: &str = "other";

/// The totals of one name (or of `other`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommTotals {
    pub comm: String,
    /// Counters: grow only.
    pub cpu_ns: u64,
    pub run_queue_wait_ns: u64,
    pub switches: u64,
    /// Gauges, of the processes alive in the last sample.
    pub processes: u64,
    pub rss_bytes: u64,
}

/// A process of the top list; `cpu_percent` is its share of the whole machine
/// over the snapshot's interval, 0..100.
#[derive(Debug, Clone, PartialEq)]
pub struct TopProcess {
    pub pid: u32,
    pub comm: String,
    pub cpu_ns: u64,
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

/// What is kept of each live process between samples, sorted by pid.
#[derive(Debug, Clone, Copy)]
struct Known {
    pid: u32,
    start_time_ns: u64,
    cpu_ns: u64,
    sched: Option<SchedStat>,
}

/// The running totals; feed it every sample of the processes list.
#[derive(Debug)]
pub struct CommGroups {
    max_names: usize,
    /// Tells a reused pid from the same process.
    rate: RateRule,
    groups: Vec<CommTotals>,
    index: HashMap<String, usize>,
    other: CommTotals,
    known: Vec<Known>,
    next_known: Vec<Known>,
    /// How many schedstat files the last sample asked for (a cost figure).
    pub schedstat_reads: usize,
}

impl CommGroups {
    pub fn new(max_names: usize, rate: RateRule) -> Self {
        Self {
            max_names,
            rate,
            groups: Vec::new(),
            index: HashMap::new(),
            other: CommTotals { comm: OTHER.to_owned(), ..CommTotals::default() },
            known: Vec::new(),
            next_known: Vec::new(),
            schedstat_reads: 0,
        }
    }

    /// Adds one scan's processes (sorted by pid, as a snapshot lists them), with the
    /// scanner's cumulative CPU ns per name (see [`CommCpu`]). `read_sched` is asked
    /// for the schedstat of a process only when it is new or its CPU time moved
    /// (see [`crate::host::schedstat`]); `None` means unreadable (it exited meanwhile).
    pub fn update(
        &mut self,
        processes: &[ProcessSample],
        comm_cpu_ns: &[(Arc<str>, u64)],
        mut read_sched: impl FnMut(u32) -> Option<SchedStat>,
    ) {
        for group in self.groups.iter_mut().chain(std::iter::once(&mut self.other)) {
            group.processes = 0;
            group.rss_bytes = 0;
            group.cpu_ns = 0;
        }
        // Each name stays in its series or in `other` for good, and the scanner's
        // totals only grow: so do these sums.
        for (name, cpu_ns) in comm_cpu_ns {
            let group = self.group_of(name);
            self.totals_mut(group).cpu_ns += cpu_ns;
        }
        self.schedstat_reads = 0;
        let mut previous = std::mem::take(&mut self.known).into_iter().peekable();
        for process in processes {
            while previous.next_if(|k| k.pid < process.pid).is_some() {}
            let before = (previous.next_if(|k| k.pid == process.pid))
                .filter(|k| self.rate.is_same_process(k.start_time_ns, process.start_time_ns));
            let group = self.group_of(&process.name);
            let cpu_moved = before.is_none_or(|k| k.cpu_ns != process.cpu_ns);
            let sched = if cpu_moved {
                self.schedstat_reads += 1;
                read_sched(process.pid).or(before.and_then(|k| k.sched))
            } else {
                before.and_then(|k| k.sched)
            };
            let totals = self.totals_mut(group);
            totals.processes += 1;
            totals.rss_bytes += process.rss_bytes;
            if let Some(now) = sched {
                let then = before.and_then(|k| k.sched).unwrap_or_default();
                totals.run_queue_wait_ns += now.wait_ns.saturating_sub(then.wait_ns);
                totals.switches += now.timeslices.saturating_sub(then.timeslices);
            }
            self.next_known.push(Known {
                pid: process.pid,
                start_time_ns: process.start_time_ns,
                cpu_ns: process.cpu_ns,
                sched,
            });
        }
        drop(previous);
        std::mem::swap(&mut self.known, &mut self.next_known);
        self.next_known.clear();
    }

    /// Drops the vector kept for the next sample's list; the totals stay.
    pub fn release(&mut self) {
        self.next_known = Vec::new();
        self.known.shrink_to_fit();
    }

    /// Every name's totals, then `other` when anything was summed into it.
    pub fn totals(&self) -> impl Iterator<Item = &CommTotals> {
        let other = &self.other;
        let other_used = other.cpu_ns > 0 || other.processes > 0;
        self.groups.iter().chain(other_used.then_some(other))
    }

    fn group_of(&mut self, comm: &str) -> Option<usize> {
        if let Some(&i) = self.index.get(comm) {
            return Some(i);
        }
        if self.groups.len() >= self.max_names || comm == OTHER {
            return None;
        }
        self.groups.push(CommTotals { comm: comm.to_owned(), ..CommTotals::default() });
        self.index.insert(comm.to_owned(), self.groups.len() - 1);
        Some(self.groups.len() - 1)
    }

    fn totals_mut(&mut self, group: Option<usize>) -> &mut CommTotals {
        match group {
            Some(i) => &mut self.groups[i],
            None => &mut self.other,
        }
    }
}

/// Most names [`CommCpu`] keeps apart (the scrape's own cap is lower); past it,
/// names are summed into [`OTHER`], so a host that makes up names without end
/// cannot grow the scanner without end.
const MAX_COUNTED_NAMES: usize = 10_000;

/// The cumulative CPU ns of every command name, counted at each scan of the
/// processes: a listed process adds what it ran since the scan before (all of it
/// when new, or when its pid was reused) under its current name; an exited one
/// (from the eBPF source's exit records) adds its final total less what earlier
/// scans counted for it (all of it when no scan listed it) under the name it
/// exited with. Each nanosecond is counted once and the totals never go back.
#[derive(Debug)]
pub struct CommCpu {
    /// Tells a reused pid from the same process.
    rate: RateRule,
    /// In the order names were first seen.
    totals: Vec<(Arc<str>, u64)>,
    index: HashMap<Arc<str>, usize>,
    /// What was counted for each process of the last scan, sorted by pid.
    counted: Vec<Counted>,
    next_counted: Vec<Counted>,
}

#[derive(Debug, Clone, Copy)]
struct Counted {
    pid: u32,
    /// The index in `totals` of the name it was counted under. Processes carry
    /// the `Arc` of their name's total ([`CommCpu::name_of`]), so a steady scan
    /// finds each process's total by comparing pointers, without hashing names.
    slot: u32,
    start_time_ns: u64,
    cpu_ns: u64,
}

impl CommCpu {
    pub fn new(rate: RateRule) -> Self {
        Self { rate, totals: Vec::new(), index: HashMap::new(), counted: Vec::new(), next_counted: Vec::new() }
    }

    /// Drops the vector kept for the next scan's list; the totals stay.
    pub fn release(&mut self) {
        self.next_counted = Vec::new();
        self.counted.shrink_to_fit();
    }

    /// The text of a process's `comm`, shared: the `Arc` its name's total is kept
    /// under, so every process of one name holds the same one (no allocation per
    /// process, and [`CommCpu::count`] finds the total by pointer). A name past the
    /// cap gets an `Arc` of its own.
    pub fn name_of(&mut self, comm: &[u8]) -> Arc<str> {
        let text = comm_name(comm);
        let slot = self.slot_of(&text);
        let (name, _) = &self.totals[slot];
        if **name == *text { Arc::clone(name) } else { Arc::from(text) }
    }

    /// Counts one scan: `listed` sorted by pid, `exits` the processes that exited
    /// since the scan before (before this scan listed; empty from a source that
    /// does not record exits).
    pub fn count(&mut self, listed: &[ProcessSample], exits: &[Exit]) {
        for exit in exits {
            let already = (self.counted.binary_search_by_key(&exit.pid, |c| c.pid).ok())
                .map(|i| &self.counted[i])
                .filter(|c| self.rate.is_same_process(c.start_time_ns, exit.start_time))
                .map_or(0, |c| c.cpu_ns);
            let slot = self.slot_of(&comm_name(comm_bytes(&exit.comm)));
            self.totals[slot].1 += exit.total_ns.saturating_sub(already);
        }
        let mut previous = std::mem::take(&mut self.counted).into_iter().peekable();
        for process in listed {
            while previous.next_if(|c| c.pid < process.pid).is_some() {}
            let before = previous.next_if(|c| c.pid == process.pid);
            let slot = match &before {
                Some(c) if Arc::ptr_eq(&self.totals[c.slot as usize].0, &process.name) => c.slot as usize,
                _ => self.slot_of(&process.name),
            };
            let already = (before.filter(|c| self.rate.is_same_process(c.start_time_ns, process.start_time_ns)))
                .map_or(0, |c| c.cpu_ns);
            self.totals[slot].1 += process.cpu_ns.saturating_sub(already);
            self.next_counted.push(Counted {
                pid: process.pid,
                start_time_ns: process.start_time_ns,
                // A source reading lower than before (it never should) is not
                // counted again up to where it was.
                cpu_ns: process.cpu_ns.max(already),
                // At most MAX_COUNTED_NAMES + 1 slots.
                slot: slot as u32,
            });
        }
        drop(previous);
        std::mem::swap(&mut self.counted, &mut self.next_counted);
        self.next_counted.clear();
    }

    /// Every name with its cumulative CPU ns, in the order first seen.
    pub fn totals(&self) -> &[(Arc<str>, u64)] {
        &self.totals
    }

    /// The index in `totals` of `name` (or of `other`, past the cap), added if new.
    fn slot_of(&mut self, name: &str) -> usize {
        let name = if self.index.contains_key(name) || self.totals.len() < MAX_COUNTED_NAMES { name } else { OTHER };
        if let Some(&slot) = self.index.get(name) {
            return slot;
        }
        let name: Arc<str> = Arc::from(name);
        self.totals.push((Arc::clone(&name), 0));
        self.index.insert(name, self.totals.len() - 1);
        self.totals.len() - 1
    }
}

/// The `n` processes with the highest CPU share, highest first (ties by pid).
pub fn top_by_cpu(processes: &[ProcessSample], n: usize) -> Vec<TopProcess> {
    let mut ranked: Vec<&ProcessSample> = processes.iter().collect();
    let share = |p: &ProcessSample| p.cpu_share.unwrap_or(0.0);
    let by_share = |a: &&ProcessSample, b: &&ProcessSample| share(b).total_cmp(&share(a)).then(a.pid.cmp(&b.pid));
    if n < ranked.len() {
        if n == 0 {
            return Vec::new();
        }
        ranked.select_nth_unstable_by(n - 1, by_share);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(by_share);
    ranked
        .into_iter()
        .map(|p| TopProcess {
            pid: p.pid,
            comm: p.name.to_string(),
            cpu_ns: p.cpu_ns,
            cpu_percent: share(p),
            rss_bytes: p.rss_bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, comm: &str, cpu_ns: u64) -> ProcessSample {
        ProcessSample {
            pid,
            ppid: 1,
            start_time_ns: 7_000_000_000,
            name: comm.into(),
            rss_bytes: 1000,
            cpu_ns,
            interval_cpu_ns: None,
            cpu_share: None,
        }
    }

    fn groups(max_names: usize) -> CommGroups {
        CommGroups::new(max_names, RateRule::new(2, 100))
    }

    fn totals(groups: &CommGroups) -> Vec<(String, u64, u64)> {
        groups.totals().map(|t| (t.comm.clone(), t.cpu_ns, t.processes)).collect()
    }

    fn no_sched(_: u32) -> Option<SchedStat> {
        None
    }

    fn cpu(names: &[(&str, u64)]) -> Vec<(Arc<str>, u64)> {
        names.iter().map(|&(name, ns)| (Arc::from(name), ns)).collect()
    }

    fn exit(pid: u32, start_time: u64, comm: &str, total_ns: u64) -> Exit {
        let mut padded = [0; 16];
        padded[..comm.len()].copy_from_slice(comm.as_bytes());
        Exit { pid, start_time, ppid: 1, total_ns, comm: padded }
    }

    fn comm_cpu() -> CommCpu {
        CommCpu::new(RateRule::new(2, 100))
    }

    fn cpu_totals(counter: &CommCpu) -> Vec<(String, u64)> {
        counter.totals().iter().map(|(name, ns)| (name.to_string(), *ns)).collect()
    }

    #[test]
    fn listed_processes_add_what_they_ran_since_the_scan_before_under_their_name() {
        let mut counter = comm_cpu();
        counter.count(&[p(1, "a", 100), p(2, "b", 50), p(3, "a", 10)], &[]);
        assert_eq!(cpu_totals(&counter), [("a".into(), 110), ("b".into(), 50)]);
        // Process 3 left without an exit record (the /proc source): what it ran
        // after the last scan is not seen, what was counted stays.
        counter.count(&[p(1, "sh", 130), p(2, "b", 50)], &[]);
        assert_eq!(cpu_totals(&counter), [("a".into(), 110), ("b".into(), 50), ("sh".into(), 30)]);
    }

    #[test]
    fn an_exited_process_adds_its_final_total_less_what_scans_counted_exactly_once() {
        let mut counter = comm_cpu();
        counter.count(&[p(1, "sh", 100), p(2, "child", 10)], &[]);
        // The child ran 15 ns more after the scan, then exited; another child was
        // born and gone between the two scans.
        let exits = [exit(2, 7_000_000_000, "child", 25), exit(9, 7_500_000_000, "child", 40)];
        counter.count(&[p(1, "sh", 100)], &exits);
        assert_eq!(cpu_totals(&counter), [("sh".into(), 100), ("child".into(), 65)]);
        counter.count(&[p(1, "sh", 100)], &[]);
        assert_eq!(cpu_totals(&counter), [("sh".into(), 100), ("child".into(), 65)], "no exit is counted twice");
    }

    #[test]
    fn an_exit_counts_under_the_name_it_exited_with() {
        let mut counter = comm_cpu();
        counter.count(&[p(3, "sh", 10)], &[]);
        // It exec'd `sleep` after the scan and exited.
        counter.count(&[], &[exit(3, 7_000_000_000, "sleep", 15)]);
        assert_eq!(cpu_totals(&counter), [("sh".into(), 10), ("sleep".into(), 5)]);
    }

    #[test]
    fn a_reused_pid_is_a_new_process_for_exits_and_listings() {
        let mut counter = comm_cpu();
        counter.count(&[p(5, "old", 100)], &[]);
        // Pid 5 exited (120 ns in all) and was handed to a new process.
        let reused = ProcessSample { start_time_ns: 8_000_000_000, ..p(5, "new", 30) };
        counter.count(std::slice::from_ref(&reused), &[exit(5, 7_000_000_000, "old", 120)]);
        assert_eq!(cpu_totals(&counter), [("old".into(), 120), ("new".into(), 30)]);
        // An exit of an earlier holder of a listed pid, never listed itself, counts in full.
        counter.count(std::slice::from_ref(&reused), &[exit(5, 6_000_000_000, "older", 7)]);
        assert_eq!(cpu_totals(&counter), [("old".into(), 120), ("new".into(), 30), ("older".into(), 7)]);
    }

    #[test]
    fn a_scrape_takes_the_scanners_cpu_totals_and_caps_names_for_good() {
        let mut groups = groups(2);
        let processes = [p(1, "a", 1), p(2, "b", 2), p(3, "c", 4), p(4, "d", 8)];
        groups.update(&processes, &cpu(&[("a", 1), ("b", 2), ("c", 4), ("d", 8)]), no_sched);
        assert_eq!(totals(&groups), [("a".into(), 1, 1), ("b".into(), 2, 1), ("other".into(), 12, 2)]);
        // Even once "a" and "b" are gone, "c" stays in other; exited "gone" joins it.
        groups.update(&[p(3, "c", 5)], &cpu(&[("a", 1), ("b", 2), ("c", 5), ("d", 8), ("gone", 3)]), no_sched);
        assert_eq!(totals(&groups), [("a".into(), 1, 0), ("b".into(), 2, 0), ("other".into(), 16, 1)]);
    }

    #[test]
    fn schedstat_is_read_only_for_processes_whose_cpu_time_moved() {
        let mut groups = groups(10);
        let mut asked = Vec::new();
        // Each reading is later, so larger, than the one before.
        let mut reader = |pid: u32| {
            asked.push(pid);
            let calls = asked.len() as u64;
            Some(SchedStat { run_ns: 0, wait_ns: calls * 100, timeslices: calls })
        };
        groups.update(&[p(1, "a", 100), p(2, "a", 5)], &[], &mut reader);
        groups.update(&[p(1, "a", 100), p(2, "a", 9)], &[], &mut reader);
        assert_eq!(asked, [1, 2, 2], "process 1 did not run: its wait and switches cannot have moved");
        let a = groups.totals().next().unwrap().clone();
        // First sample: 100 + 200 (1 + 2 switches); then process 2 from 200 to 300 (2 to 3).
        assert_eq!((a.run_queue_wait_ns, a.switches), (400, 4));
    }

    #[test]
    fn the_top_list_is_ordered_by_share_and_bounded() {
        let mut processes = Vec::new();
        for (pid, share) in [(1, 5.0), (2, 50.0), (3, 0.0), (4, 20.0), (5, 20.0)] {
            processes.push(ProcessSample { cpu_share: Some(share), ..p(pid, "x", 0) });
        }
        let pids = |n| top_by_cpu(&processes, n).into_iter().map(|t| t.pid).collect::<Vec<_>>();
        assert_eq!(pids(3), [2, 4, 5]);
        assert_eq!(pids(10), [2, 4, 5, 1, 3]);
        assert!(pids(0).is_empty());
    }
}
