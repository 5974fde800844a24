//! Which row of the processes list a nanosecond of CPU time shows in.
//!
//! Between two scans, processes start and exit; a /proc reader never sees one that
//! lived between two scans, and the time a listed process ran after the last scan
//! leaves with it. The rule here (`--cpu-children attribute`, the default): at
//! each scan, every nanosecond any process ran since the previous scan appears in
//! the answer exactly once:
//! - a listed process shows the time it ran since the previous scan (all of it when
//!   it was born after the previous scan);
//! - an exited process's time not yet shown (its final total less what earlier
//!   answers counted of it; all of it for one never listed) shows in its nearest
//!   ancestor that is listed now: its parent, or that one's parent, up to pid 1,
//!   walking through ancestors that exited too. This is the rule of the kernel's
//!   `cutime` and of `top`'s cumulative mode, without counting anything twice.
//!
//! Two ways to learn of exits feed it. The eBPF source hands over each exited
//! process's final total ([`Exit`]). The /proc fallback has only what the kernel
//! folds into a parent's `cutime` + `cstime` when it reaps a child (the child's
//! total and its own reaped children's): [`Listed::children_ns`]. That fold holds
//! the part of a listed child that earlier answers already showed, so when a listed
//! child leaves, that part is owed by the ancestor that reaps it and subtracted
//! from its next growth of `children_ns`.
//!
//! With `--cpu-children own`, a row shows only the process's own time.

use super::rate::RateRule;
use crate::config::ChildrenMode;

/// One process of a scan. Times are cumulative ns; `start_time` is in the unit of
/// the clock reading passed to [`Attribution::account`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Listed {
    pub pid: u32,
    /// With the pid, names the process across pid reuse.
    pub start_time: u64,
    /// The parent's pid (0 when none).
    pub ppid: u32,
    /// Its own on-CPU time.
    pub own_ns: u64,
    /// Time of reaped children that the kernel folded into it (/proc `cutime` +
    /// `cstime`); 0 where the source hands over [`Exit`]s instead.
    pub children_ns: u64,
}

/// A process that exited, with its final own on-CPU total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exit {
    pub pid: u32,
    pub start_time: u64,
    pub ppid: u32,
    pub total_ns: u64,
    /// Its `comm` when it exited, NUL-padded: the name its final time is counted
    /// under per command name.
    pub comm: [u8; 16],
}

/// What the last scan knew of a listed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    pid: u32,
    start_time: u64,
    ppid: u32,
    /// `own_ns` and `children_ns` at that scan: up to there, its time was shown
    /// (or ran before the first scan, when nobody was shown it).
    own_ns: u64,
    children_ns: u64,
}

/// A process that was listed and is not any more, kept until its exit is known or
/// for `DEPARTED_SCANS` scans: the eBPF exit record comes an RCU grace period after
/// the process left the task list, so possibly one scan later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Departed {
    known: Known,
    /// Scans since it left.
    age: u32,
}

/// The parent of an exited process, kept a few scans so that a child whose record
/// comes later still walks up through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    pid: u32,
    ppid: u32,
    age: u32,
}

/// How many scans a departed process and an exited process's parent link are kept.
const DEPARTED_SCANS: u32 = 3;
/// How many scans the time owed by a /proc parent for a departed child waits for
/// its `children_ns` to grow (a child that is not reaped by it, e.g. one whose
/// parent ignores SIGCHLD, never folds in).
const DEBT_SCANS: u32 = 2;
/// Longest ancestor walk (a guard against loops made by reused pids).
const MAX_WALK: usize = 64;
/// pid 1 adopts orphans: an exit whose ancestors are all unknown is shown there.
const INIT_PID: u32 = 1;

/// Time a /proc-mode ancestor owes for listed children that left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Debt {
    pid: u32,
    ns: u64,
    age: u32,
}

/// The state of the rule between scans.
#[derive(Debug)]
pub struct Attribution {
    mode: ChildrenMode,
    /// Tells whether two start times of one pid name one process.
    rate: RateRule,
    /// The clock reading of the previous scan; None before the first.
    previous_clock: Option<u64>,
    /// Every process of the previous scan, sorted by pid.
    known: Vec<Known>,
    /// Next scan's `known`, kept for its allocation.
    next_known: Vec<Known>,
    departed: Vec<Departed>,
    links: Vec<Link>,
    debts: Vec<Debt>,
}

impl Attribution {
    pub fn new(mode: ChildrenMode, rate: RateRule) -> Self {
        Self {
            mode,
            rate,
            previous_clock: None,
            known: Vec::new(),
            next_known: Vec::new(),
            departed: Vec::new(),
            links: Vec::new(),
            debts: Vec::new(),
        }
    }

    /// Drops the vector kept for the next scan's list (the collector's
    /// `release`, when the agent goes idle).
    pub fn release(&mut self) {
        self.next_known = Vec::new();
        self.known.shrink_to_fit();
    }

    /// Writes into `out`, for each of `listed` (sorted by pid), the ns to show for
    /// the interval since the previous call: 0 for every row on the first call.
    /// `clock` is read before the listing, in the unit of `start_time`: a process
    /// that started after the previous call's `clock` ran only in this interval.
    /// `exits` are the processes that exited since the previous call, from a source
    /// that records them; None from one that folds them into their parents instead
    /// ([`Listed::children_ns`]).
    pub fn account(&mut self, clock: u64, listed: &[Listed], exits: Option<&[Exit]>, out: &mut Vec<u64>) {
        debug_assert!(listed.is_sorted_by_key(|p| p.pid));
        out.clear();
        let previous_clock = self.previous_clock.replace(clock);
        let mut known = std::mem::take(&mut self.known).into_iter().peekable();
        self.next_known.clear();
        for process in listed {
            while let Some(gone) = known.next_if(|k| k.pid < process.pid) {
                self.departed.push(Departed { known: gone, age: 0 });
            }
            let before = match known.next_if(|k| k.pid == process.pid) {
                Some(k) if self.rate.is_same_process(k.start_time, process.start_time) => Some(k),
                Some(reused) => {
                    self.departed.push(Departed { known: reused, age: 0 });
                    None
                }
                None => None,
            };
            out.push(match (before, previous_clock) {
                (_, None) => 0,
                (Some(k), _) => {
                    let own = process.own_ns.saturating_sub(k.own_ns);
                    let children = process.children_ns.saturating_sub(k.children_ns);
                    own + if self.mode == ChildrenMode::Attribute { children } else { 0 }
                }
                // Born since the previous scan: everything it ran is in the interval.
                (None, Some(previous)) if process.start_time > previous => match self.mode {
                    ChildrenMode::Attribute => process.own_ns + process.children_ns,
                    ChildrenMode::Own => process.own_ns,
                },
                // There at the previous scan without being listed: from now on.
                (None, Some(_)) => 0,
            });
            self.next_known.push(Known {
                pid: process.pid,
                start_time: process.start_time,
                ppid: process.ppid,
                own_ns: process.own_ns,
                children_ns: process.children_ns,
            });
        }
        self.departed.extend(known.map(|gone| Departed { known: gone, age: 0 }));
        std::mem::swap(&mut self.known, &mut self.next_known);
        if previous_clock.is_none() || self.mode == ChildrenMode::Own {
            self.departed.clear();
            self.links.clear();
            self.debts.clear();
            return;
        }
        match exits {
            Some(exits) => self.place_exits(listed, exits, out),
            None => self.settle_departed(listed),
        }
        self.pay_debts(listed, out);
        self.age();
    }

    /// Adds each exit's time not yet shown to its nearest listed ancestor.
    fn place_exits(&mut self, listed: &[Listed], exits: &[Exit], out: &mut [u64]) {
        let mut unplaced_ns = 0;
        for exit in exits {
            self.links.push(Link { pid: exit.pid, ppid: exit.ppid, age: 0 });
        }
        for exit in exits {
            let listed_now = row_of(listed, exit.pid);
            if listed_now.is_some_and(|row| self.rate.is_same_process(listed[row].start_time, exit.start_time)) {
                // Still listed: its time is in its own row.
                continue;
            }
            let departed = self.departed.iter().position(|d| {
                d.known.pid == exit.pid && self.rate.is_same_process(d.known.start_time, exit.start_time)
            });
            let shown = match departed {
                Some(index) => self.departed.swap_remove(index).known.own_ns,
                None => 0,
            };
            let unshown = exit.total_ns.saturating_sub(shown);
            match self.ancestor_row(listed, exit.ppid) {
                Some(row) => out[row] += unshown,
                None => unplaced_ns += unshown,
            }
        }
        if unplaced_ns > 0 {
            // Only when pid 1 itself is not listed.
            tracing::debug!("{unplaced_ns} ns of exited processes found no listed ancestor");
        }
    }

    /// Without exit records: a listed child that left is folded by the kernel into
    /// its reaper's `children_ns` with the part earlier answers showed, which that
    /// ancestor's row must not show again; it is owed by that ancestor.
    fn settle_departed(&mut self, listed: &[Listed]) {
        for departed in std::mem::take(&mut self.departed) {
            self.links.push(Link { pid: departed.known.pid, ppid: departed.known.ppid, age: 0 });
            let owed = departed.known.own_ns + departed.known.children_ns;
            if let Some(row) = self.ancestor_row(listed, departed.known.ppid) {
                let pid = listed[row].pid;
                match self.debts.iter_mut().find(|d| d.pid == pid) {
                    Some(debt) => debt.ns += owed,
                    None => self.debts.push(Debt { pid, ns: owed, age: 0 }),
                }
            }
        }
    }

    /// Subtracts what ancestors owe from their rows, as far as the rows go; the rest
    /// waits for later scans (see `DEBT_SCANS`).
    fn pay_debts(&mut self, listed: &[Listed], out: &mut [u64]) {
        for debt in &mut self.debts {
            if let Some(row) = row_of(listed, debt.pid) {
                let paid = debt.ns.min(out[row]);
                out[row] -= paid;
                debt.ns -= paid;
            }
        }
    }

    /// The row of the nearest listed process among `pid` and its ancestors, known
    /// from this scan's list, departed processes and recent exits; pid 1 when the
    /// walk ends at a process nothing is known of; None when pid 1 is not listed.
    fn ancestor_row(&self, listed: &[Listed], mut pid: u32) -> Option<usize> {
        for _ in 0..MAX_WALK {
            if let Some(row) = row_of(listed, pid) {
                return Some(row);
            }
            let parent = self
                .departed
                .iter()
                .find(|d| d.known.pid == pid)
                .map(|d| d.known.ppid)
                .or_else(|| self.links.iter().rev().find(|link| link.pid == pid).map(|link| link.ppid));
            match parent {
                Some(parent) if parent != 0 && parent != pid => pid = parent,
                _ => break,
            }
        }
        row_of(listed, INIT_PID)
    }

    /// Ages what is kept between scans and drops what is too old.
    fn age(&mut self) {
        self.departed.retain_mut(|d| {
            d.age += 1;
            d.age < DEPARTED_SCANS
        });
        self.links.retain_mut(|link| {
            link.age += 1;
            link.age < DEPARTED_SCANS
        });
        self.debts.retain_mut(|debt| {
            debt.age += 1;
            debt.ns > 0 && debt.age < DEBT_SCANS
        });
    }
}

/// The index of `pid` in `listed` (sorted by pid).
fn row_of(listed: &[Listed], pid: u32) -> Option<usize> {
    listed.binary_search_by_key(&pid, |p| p.pid).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Start times (in the tests' small numbers) name one process only when equal.
    fn rule() -> RateRule {
        RateRule::new(2, 1_000_000_000)
    }

    fn listed(pid: u32, ppid: u32, start_time: u64, own_ns: u64) -> Listed {
        Listed { pid, start_time, ppid, own_ns, children_ns: 0 }
    }

    fn exit(pid: u32, ppid: u32, start_time: u64, total_ns: u64) -> Exit {
        Exit { pid, start_time, ppid, total_ns, ..Exit::default() }
    }

    /// Runs one scan and returns the rows as (pid, ns).
    fn scan(rule: &mut Attribution, clock: u64, processes: &[Listed], exits: &[Exit]) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        rule.account(clock, processes, Some(exits), &mut out);
        processes.iter().map(|p| p.pid).zip(out).collect()
    }

    /// One scan of a source without exit records (the /proc fallback).
    fn scan_folded(rule: &mut Attribution, clock: u64, processes: &[Listed]) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        rule.account(clock, processes, None, &mut out);
        processes.iter().map(|p| p.pid).zip(out).collect()
    }

    #[test]
    fn the_first_scan_shows_nothing_and_a_live_process_shows_its_own_time_since() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        assert_eq!(scan(&mut rule, 100, &[listed(1, 0, 0, 50 * MS)], &[]), [(1, 0)]);
        assert_eq!(scan(&mut rule, 200, &[listed(1, 0, 0, 80 * MS)], &[]), [(1, 30 * MS)]);
    }

    #[test]
    fn a_process_born_and_gone_between_scans_shows_in_its_parent() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let shell = |own| [listed(1, 0, 0, 0), listed(10, 1, 5, own)];
        scan(&mut rule, 100, &shell(10 * MS), &[]);
        let children: Vec<Exit> = (0..5).map(|i| exit(20 + i, 10, 110 + u64::from(i), MS)).collect();
        assert_eq!(scan(&mut rule, 200, &shell(12 * MS), &children), [(1, 0), (10, 2 * MS + 5 * MS)]);
    }

    #[test]
    fn a_child_listed_for_several_scans_adds_only_its_last_unshown_slice() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = listed(10, 1, 5, 0);
        scan(&mut rule, 100, &[parent], &[]);
        // A ten-minute compile: listed for many scans, showing its own time.
        let mut total = 0;
        for scan_index in 1..=5u64 {
            total += 900 * MS;
            let compile = listed(30, 10, 150, total);
            let rows = scan(&mut rule, 100 + scan_index * 1_000, &[parent, compile], &[]);
            let expected = if scan_index == 1 { total } else { 900 * MS };
            assert_eq!(rows, [(10, 0), (30, expected)], "scan {scan_index}");
        }
        // It exits having run 300 ms more than the last scan showed.
        let rows = scan(&mut rule, 7_000, &[parent], &[exit(30, 10, 150, total + 300 * MS)]);
        assert_eq!(rows, [(10, 300 * MS)]);
    }

    #[test]
    fn an_exit_record_one_scan_late_still_subtracts_what_was_shown() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = listed(10, 1, 5, 0);
        scan(&mut rule, 100, &[parent, listed(30, 10, 50, 40 * MS)], &[]);
        scan(&mut rule, 200, &[parent, listed(30, 10, 50, 70 * MS)], &[]);
        // Gone from the list, its record not yet there (freed an RCU grace period later).
        assert_eq!(scan(&mut rule, 300, &[parent], &[]), [(10, 0)]);
        assert_eq!(scan(&mut rule, 400, &[parent], &[exit(30, 10, 50, 75 * MS)]), [(10, 5 * MS)]);
    }

    #[test]
    fn exited_ancestors_are_walked_through_to_the_nearest_listed_one() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let make = listed(10, 1, 5, 0);
        scan(&mut rule, 100, &[listed(1, 0, 0, 0), make], &[]);
        // make -> sh (exited) -> gcc (exited) -> cc1 (exited), records in any order.
        let exits = [exit(42, 41, 130, 200 * MS), exit(40, 10, 110, MS), exit(41, 40, 120, 3 * MS)];
        assert_eq!(scan(&mut rule, 200, &[listed(1, 0, 0, 0), make], &exits), [(1, 0), (10, 204 * MS)]);
        // A grandchild whose record comes a scan after its parent's still finds make.
        scan(&mut rule, 300, &[listed(1, 0, 0, 0), make], &[exit(50, 10, 210, MS)]);
        let late = [exit(51, 50, 220, 7 * MS)];
        assert_eq!(scan(&mut rule, 400, &[listed(1, 0, 0, 0), make], &late), [(1, 0), (10, 7 * MS)]);
    }

    #[test]
    fn an_exit_with_no_known_ancestor_shows_in_pid_1() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        scan(&mut rule, 100, &[listed(1, 0, 0, 0), listed(10, 1, 5, 0)], &[]);
        let rows = scan(&mut rule, 200, &[listed(1, 0, 0, 0), listed(10, 1, 5, 0)], &[exit(60, 59, 150, 4 * MS)]);
        assert_eq!(rows, [(1, 4 * MS), (10, 0)]);
    }

    #[test]
    fn a_reused_pid_is_a_new_process() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = listed(10, 1, 5, 0);
        scan(&mut rule, 100, &[parent, listed(30, 10, 50, 900 * MS)], &[]);
        // 30 exited (its last 10 ms unshown) and a new 30, born since, ran 2 ms.
        let rows = scan(&mut rule, 200, &[parent, listed(30, 10, 150, 2 * MS)], &[exit(30, 10, 50, 910 * MS)]);
        assert_eq!(rows, [(10, 10 * MS), (30, 2 * MS)]);
    }

    #[test]
    fn exits_before_the_first_scan_are_not_shown() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = listed(10, 1, 5, 0);
        assert_eq!(scan(&mut rule, 100, &[parent], &[exit(20, 10, 50, 5 * MS)]), [(10, 0)]);
        assert_eq!(scan(&mut rule, 200, &[parent], &[]), [(10, 0)]);
    }

    #[test]
    fn own_mode_shows_only_own_time() {
        let mut rule = Attribution::new(ChildrenMode::Own, rule());
        let parent = |own| listed(10, 1, 5, own);
        scan(&mut rule, 100, &[parent(0)], &[]);
        assert_eq!(scan(&mut rule, 200, &[parent(MS)], &[exit(20, 10, 150, 5 * MS)]), [(10, MS)]);
    }

    fn folded(pid: u32, ppid: u32, start_time: u64, own_ns: u64, children_ns: u64) -> Listed {
        Listed { pid, start_time, ppid, own_ns, children_ns }
    }

    #[test]
    fn proc_mode_shows_reaped_children_through_the_parents_fold() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        scan_folded(&mut rule, 100, &[folded(10, 1, 5, 10 * MS, 100 * MS)]);
        // Children never listed were reaped: 30 ms folded in.
        assert_eq!(scan_folded(&mut rule, 200, &[folded(10, 1, 5, 11 * MS, 130 * MS)]), [(10, 31 * MS)]);
    }

    #[test]
    fn proc_mode_does_not_show_again_what_a_listed_child_showed() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = |children| folded(10, 1, 5, 0, children);
        scan_folded(&mut rule, 100, &[parent(0), folded(30, 10, 50, 400 * MS, 0)]);
        assert_eq!(scan_folded(&mut rule, 200, &[parent(0), folded(30, 10, 50, 900 * MS, 0)])[1], (30, 500 * MS));
        // Reaped with 950 ms: the parent's fold grows by all of it; 50 ms were unshown.
        assert_eq!(scan_folded(&mut rule, 300, &[parent(950 * MS)]), [(10, 50 * MS)]);
        assert_eq!(scan_folded(&mut rule, 400, &[parent(960 * MS)]), [(10, 10 * MS)]);
    }

    #[test]
    fn proc_mode_debt_waits_one_scan_for_a_late_fold_then_lapses() {
        let mut rule = Attribution::new(ChildrenMode::Attribute, rule());
        let parent = |children| folded(10, 1, 5, 0, children);
        scan_folded(&mut rule, 100, &[parent(MS), folded(30, 10, 50, 400 * MS, 0)]);
        // Gone, but the fold shows a scan later.
        assert_eq!(scan_folded(&mut rule, 200, &[parent(MS)]), [(10, 0)]);
        assert_eq!(scan_folded(&mut rule, 300, &[parent(420 * MS)]), [(10, 19 * MS)]);
        // A debt that is never paid lapses instead of hiding later growth for ever.
        scan_folded(&mut rule, 400, &[parent(420 * MS), folded(31, 10, 350, 100 * MS, 0)]);
        scan_folded(&mut rule, 500, &[parent(420 * MS)]);
        scan_folded(&mut rule, 600, &[parent(420 * MS)]);
        assert_eq!(scan_folded(&mut rule, 700, &[parent(425 * MS)]), [(10, 5 * MS)]);
    }
}
