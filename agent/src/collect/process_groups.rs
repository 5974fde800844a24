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
//! A process that exits between two samples loses what it used after the last
//! one, unless the CPU-time source reports its final time ([`ExitRecord`]).
//!
//! At most `max_names` names get series of their own, first come first served,
//! so that no name ever moves between its own series and `other`.

use std::collections::HashMap;

use super::processes::ProcessSample;

use crate::cputime::rate::RateRule;
use crate::host::schedstat::SchedStat;

/// The series all names past the cap are summed into.
pub const OTHER: &str = "other";

/// The final CPU time of a process that exited, from a source that sees exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitRecord<'a> {
    pub pid: u32,
    pub start_time_ns: u64,
    pub comm: &'a str,
    pub cpu_ns: u64,
}

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
    /// Index into `CommGroups::groups`, or `None` for `other`.
    group: Option<usize>,
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

    /// Adds one scan's processes (sorted by pid, as a snapshot lists them). `read_sched` is asked
    /// for the schedstat of a process only when it is new or its CPU time moved
    /// (see [`crate::host::schedstat`]); `None` means unreadable (it exited meanwhile).
    pub fn update(&mut self, processes: &[ProcessSample], mut read_sched: impl FnMut(u32) -> Option<SchedStat>) {
        for group in self.groups.iter_mut().chain(std::iter::once(&mut self.other)) {
            group.processes = 0;
            group.rss_bytes = 0;
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
            totals.cpu_ns += process.cpu_ns.saturating_sub(before.map_or(0, |k| k.cpu_ns));
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
                group,
            });
        }
        drop(previous);
        std::mem::swap(&mut self.known, &mut self.next_known);
        self.next_known.clear();
    }

    /// Adds the time processes used after the last sample saw them (or all of it,
    /// for processes it never saw), from exit records.
    pub fn add_exits(&mut self, exits: &[ExitRecord<'_>]) {
        for exit in exits {
            let position = (self.known.binary_search_by_key(&exit.pid, |k| k.pid).ok())
                .filter(|&i| self.rate.is_same_process(self.known[i].start_time_ns, exit.start_time_ns));
            let (group, already) = match position {
                Some(i) => (self.known[i].group, self.known[i].cpu_ns),
                None => (self.group_of(exit.comm), 0),
            };
            self.totals_mut(group).cpu_ns += exit.cpu_ns.saturating_sub(already);
            if let Some(i) = position {
                // Counted to its end: a later sample must not count it again.
                self.known[i].cpu_ns = self.known[i].cpu_ns.max(exit.cpu_ns);
            }
        }
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

    #[test]
    fn cpu_time_is_summed_per_name_and_kept_after_exit() {
        let mut groups = groups(10);
        groups.update(&[p(1, "a", 100), p(2, "b", 50), p(3, "a", 10)], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 110, 2), ("b".into(), 50, 1)]);
        // Process 3 exited after using 5 more ns the sample did not see.
        groups.update(&[p(1, "a", 130), p(2, "b", 50)], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 140, 1), ("b".into(), 50, 1)]);
    }

    #[test]
    fn an_exec_under_a_new_name_does_not_take_time_from_the_old_one() {
        let mut groups = groups(10);
        groups.update(&[p(1, "sh", 100)], no_sched);
        groups.update(&[p(1, "sleep", 120)], no_sched);
        assert_eq!(totals(&groups), [("sh".into(), 100, 0), ("sleep".into(), 20, 1)]);
    }

    #[test]
    fn a_reused_pid_counts_as_a_new_process() {
        let mut groups = groups(10);
        groups.update(&[p(1, "a", 100)], no_sched);
        let reused = ProcessSample { start_time_ns: 8_000_000_000, ..p(1, "a", 30) };
        groups.update(&[reused], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 130, 1)]);
    }

    #[test]
    fn names_past_the_cap_go_to_other_for_good() {
        let mut groups = groups(2);
        groups.update(&[p(1, "a", 1), p(2, "b", 2), p(3, "c", 4), p(4, "d", 8)], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 1, 1), ("b".into(), 2, 1), ("other".into(), 12, 2)]);
        // Even once "a" and "b" are gone, "c" stays in other.
        groups.update(&[p(3, "c", 5)], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 1, 0), ("b".into(), 2, 0), ("other".into(), 13, 1)]);
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
        groups.update(&[p(1, "a", 100), p(2, "a", 5)], &mut reader);
        groups.update(&[p(1, "a", 100), p(2, "a", 9)], &mut reader);
        assert_eq!(asked, [1, 2, 2], "process 1 did not run: its wait and switches cannot have moved");
        let a = groups.totals().next().unwrap().clone();
        // First sample: 100 + 200 (1 + 2 switches); then process 2 from 200 to 300 (2 to 3).
        assert_eq!((a.run_queue_wait_ns, a.switches), (400, 4));
    }

    #[test]
    fn exit_records_add_what_the_last_sample_missed_and_processes_it_never_saw() {
        let mut groups = groups(10);
        groups.update(&[p(1, "a", 100), p(2, "b", 10)], no_sched);
        groups.add_exits(&[
            ExitRecord { pid: 2, start_time_ns: 7_000_000_000, comm: "b", cpu_ns: 25 },
            ExitRecord { pid: 9, start_time_ns: 7_000_000_000, comm: "short", cpu_ns: 40 },
        ]);
        groups.update(&[p(1, "a", 100)], no_sched);
        assert_eq!(totals(&groups), [("a".into(), 100, 1), ("b".into(), 25, 0), ("short".into(), 40, 0)]);
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
