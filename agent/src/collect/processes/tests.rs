//! The scanner against fake /proc trees and the real one.

use std::sync::Mutex;

use super::*;
use crate::cputime::proc::ProcCpuTime;

fn fake_proc(processes: &[(u32, &str, u64, u64)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for &(pid, name, ticks, rss_pages) in processes {
        let pid_dir = dir.path().join(pid.to_string());
        std::fs::create_dir(&pid_dir).unwrap();
        let stat =
            format!("{pid} ({name}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 100 1000 {rss_pages} 0\n");
        std::fs::write(pid_dir.join("stat"), stat).unwrap();
    }
    dir
}

fn scanner(root: &std::path::Path) -> ProcessScanner {
    scanner_with(root, Box::new(ProcCpuTime::new(100)), 4096)
}

/// A scanner of `root` on a 2-CPU host (100 ticks/s, 4 KiB pages) with `source`
/// and at most `kept_files` stat files kept open.
fn scanner_with(root: &std::path::Path, source: Box<dyn CpuTimeSource>, kept_files: usize) -> ProcessScanner {
    // Up to `kept_files` files open at once across the tests running in parallel,
    // as the agent, which raises its own limit the same way; an ordinary user's
    // soft limit is often 1024.
    testkit::limits::raise_open_files_limit().expect("raising the open-files limit");
    let source: SharedCpuSource = Arc::new(Mutex::new(source));
    ProcessScanner::new(
        root.to_path_buf(),
        HostClock::new(100, 0, 4096),
        2,
        source,
        kept_files,
        ChildrenMode::Attribute,
    )
}

#[test]
fn lists_every_numeric_entry_with_name_and_resident_bytes() {
    let root = fake_proc(&[(1, "init", 0, 100), (42, "my (odd) name", 5, 3)]);
    let mut scanner = scanner(root.path());
    let mut rows = scanner.scan().unwrap().processes.clone();
    rows.sort_by_key(|r| r.pid);
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[1].pid, &*rows[1].name, rows[1].rss_bytes), (42, "my (odd) name", 3 * 4096));
    assert!(rows.iter().all(|r| usage(r) == 0.0), "first scan has no interval");
}

#[test]
fn cpu_share_is_the_tick_delta_over_wall_time_and_all_cpus() {
    let root = fake_proc(&[(7, "busy", 0, 1)]);
    let mut scanner = scanner(root.path());
    scanner.scan().unwrap();
    // Pretend the previous scan was one second ago and 100 ticks (1 s) ran since.
    scanner.previous_at = Some(Instant::now() - std::time::Duration::from_secs(1));
    let stat = "7 (busy) R 1 7 7 0 -1 0 0 0 0 0 60 40 0 0 20 0 1 0 100 1000 1 0\n";
    std::fs::write(root.path().join("7/stat"), stat).unwrap();
    let usage = usage(&scanner.scan().unwrap().processes[0]);
    // One busy CPU out of two is 50%; the wall clock ran slightly over 1 s.
    assert!((49.0..=50.0).contains(&usage), "{usage}");
}

#[test]
fn a_reused_pid_starts_from_zero_instead_of_a_negative_delta() {
    let root = fake_proc(&[(7, "old", 500, 1)]);
    let mut scanner = scanner(root.path());
    scanner.scan().unwrap();
    let reborn = "7 (new) R 1 7 7 0 -1 0 0 0 0 0 1 0 0 0 20 0 1 0 999 1000 1 0\n";
    std::fs::write(root.path().join("7/stat"), reborn).unwrap();
    assert_eq!(usage(&scanner.scan().unwrap().processes[0]), 0.0);
}

fn add_process(root: &std::path::Path, pid: u32) {
    std::fs::create_dir(root.join(pid.to_string())).unwrap();
    let stat = format!("{pid} (p{pid}) S 1 0 0 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 100 1000 1 0\n");
    std::fs::write(root.join(format!("{pid}/stat")), stat).unwrap();
}

fn pids(snapshot: Arc<ProcessesSnapshot>) -> Vec<u32> {
    snapshot.processes.iter().map(|r| r.pid).collect()
}

/// The share as the answer carries it: 0 without an interval.
fn usage(process: &ProcessSample) -> f32 {
    process.cpu_share.unwrap_or(0.0)
}

#[test]
fn proc_is_listed_again_only_once_a_new_pid_was_handed_out() {
    let root = fake_proc(&[(1, "init", 0, 1)]);
    std::os::unix::fs::symlink(std::process::id().to_string(), root.path().join("self")).unwrap();
    let loadavg = |last_pid: u32| std::fs::write(root.path().join("loadavg"), format!("0.0 0.0 0.0 1/9 {last_pid}\n"));
    loadavg(1).unwrap();
    // No stat file kept open, so a removed process fails its read as in /proc.
    let mut scanner = scanner_with(root.path(), Box::new(ProcCpuTime::new(100)), 0);
    assert_eq!(pids(scanner.scan().unwrap()), [1]);
    add_process(root.path(), 2);
    assert_eq!(pids(scanner.scan().unwrap()), [1], "no pid handed out: the listing is reused");
    loadavg(2).unwrap();
    assert_eq!(pids(scanner.scan().unwrap()), [1, 2]);
    std::fs::remove_dir_all(root.path().join("1")).unwrap();
    assert_eq!(pids(scanner.scan().unwrap()), [2], "an exit shows without a listing");
}

/// A /proc source that records the live lists it is given.
struct Recording(Arc<Mutex<Vec<Vec<u32>>>>);

impl CpuTimeSource for Recording {
    fn kind(&self) -> crate::cputime::CpuSourceKind {
        crate::cputime::CpuSourceKind::Proc
    }
    fn cumulative_ns(&mut self, procs: &[ScannedCpu], out: &mut Vec<u64>) -> Result<(), crate::cputime::CpuTimeError> {
        ProcCpuTime::new(100).cumulative_ns(procs, out)
    }
    fn retain_live(&mut self, live: &[u32]) {
        self.0.lock().unwrap().push(live.to_vec());
    }
}

#[test]
fn the_cpu_source_forgets_processes_only_when_some_may_have_exited() {
    let root = fake_proc(&[(1, "init", 0, 1), (2, "b", 0, 1)]);
    std::os::unix::fs::symlink(std::process::id().to_string(), root.path().join("self")).unwrap();
    let loadavg = |last_pid: u32| std::fs::write(root.path().join("loadavg"), format!("0 0 0 1/9 {last_pid}\n"));
    loadavg(2).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut scanner = scanner_with(root.path(), Box::new(Recording(Arc::clone(&calls))), 0);
    scanner.scan().unwrap();
    scanner.scan().unwrap();
    assert_eq!(*calls.lock().unwrap(), [vec![1, 2]], "nothing could have exited in between");
    std::fs::remove_dir_all(root.path().join("2")).unwrap();
    scanner.scan().unwrap();
    scanner.scan().unwrap();
    assert_eq!(calls.lock().unwrap().last(), Some(&vec![1]));
    assert_eq!(calls.lock().unwrap().len(), 2);
    loadavg(3).unwrap();
    scanner.scan().unwrap();
    assert_eq!(calls.lock().unwrap().len(), 3, "a pid was handed out: maybe born and gone");
}

#[test]
fn at_most_the_budget_of_stat_files_stays_open() {
    let root = fake_proc(&[(1, "a", 0, 1), (2, "b", 0, 1), (3, "c", 0, 1)]);
    let mut scanner = scanner_with(root.path(), Box::new(ProcCpuTime::new(100)), 2);
    for _ in 0..3 {
        assert_eq!(scanner.scan().unwrap().processes.len(), 3);
        assert_eq!(scanner.tracked.iter().filter(|t| t.stat.is_some()).count(), 2);
    }
    std::fs::remove_dir_all(root.path().join("1")).unwrap();
    add_process(root.path(), 4);
    assert_eq!(pids(scanner.scan().unwrap()), [2, 3, 4]);
    assert_eq!(scanner.tracked.iter().filter(|t| t.stat.is_some()).count(), 2, "the freed slot is reused");
}

#[test]
fn a_changed_command_name_is_picked_up() {
    let root = fake_proc(&[(5, "before", 0, 1)]);
    let mut scanner = scanner(root.path());
    assert_eq!(&*scanner.scan().unwrap().processes[0].name, "before");
    let exec = "5 (after) S 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1000 1 0\n";
    std::fs::write(root.path().join("5/stat"), exec).unwrap();
    assert_eq!(&*scanner.scan().unwrap().processes[0].name, "after");
}

#[test]
fn an_exited_child_leaves_the_list_of_the_real_proc() {
    let mut scanner = scanner(std::path::Path::new("/proc"));
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    assert!(pids(scanner.scan().unwrap()).contains(&child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!pids(scanner.scan().unwrap()).contains(&child.id()));
}

#[test]
fn broken_stat_files_are_counted_not_fatal() {
    let root = fake_proc(&[(1, "ok", 0, 1)]);
    std::fs::create_dir(root.path().join("2")).unwrap();
    std::fs::write(root.path().join("2/stat"), "garbage").unwrap();
    std::fs::create_dir(root.path().join("3")).unwrap();
    std::fs::write(root.path().join("3/stat"), "").unwrap();
    std::fs::create_dir(root.path().join("4")).unwrap();
    let mut scanner = scanner(root.path());
    assert_eq!(scanner.scan().unwrap().processes.len(), 1);
    assert_eq!(scanner.last_issues, ScanIssues { vanished: 2, unparsable: 1 });
}

#[test]
fn the_real_proc_lists_this_test_process_with_its_resident_memory() {
    let mut scanner = scanner(std::path::Path::new("/proc"));
    let processes = scanner.scan().unwrap();
    let me = processes.processes.iter().find(|r| r.pid == std::process::id()).expect("own pid listed");
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let rss_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    let page = 4096;
    let diff = me.rss_bytes.abs_diff(rss_pages * page);
    assert!(diff < 8 * 1024 * 1024, "rss {} vs statm {}", me.rss_bytes, rss_pages * page);
}

#[test]
fn a_snapshot_nobody_holds_lends_its_memory_to_a_later_scan() {
    let root = fake_proc(&[(1, "a", 0, 1), (2, "b", 0, 1)]);
    let mut scanner = scanner(root.path());
    let first = scanner.scan().unwrap();
    let memory = first.processes.as_ptr();
    drop(first);
    let second = scanner.scan().unwrap();
    assert_eq!(second.processes.as_ptr(), memory, "the released snapshot's vector is refilled");
    assert_eq!(pids(Arc::clone(&second)), [1, 2]);
    let third = scanner.scan().unwrap();
    assert_ne!(third.processes.as_ptr(), second.processes.as_ptr(), "a snapshot still held is left alone");
    assert_eq!(pids(third), [1, 2]);
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks_of(pid: u32) -> u64 {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
    let stat = parse_stat(&stat).unwrap();
    stat.utime + stat.stime
}

#[test]
fn after_a_release_the_next_scan_reopens_what_it_needs_and_keeps_the_shares() {
    let mut scanner = scanner(std::path::Path::new("/proc"));
    let mut busy = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
    scanner.scan().unwrap();
    let before = scanner.scan().unwrap().processes.len();
    let ticks_before = cpu_ticks_of(busy.id());
    assert!(scanner.open_files > 0);
    scanner.release();
    assert_eq!((scanner.open_files, scanner.merged.capacity(), scanner.handed_out.iter().flatten().count()), (0, 0, 0));
    // Less than RELIST_AFTER: on a quiet host no pid is handed out meanwhile.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let after = scanner.scan().unwrap();
    let ticks = cpu_ticks_of(busy.id()) - ticks_before;
    busy.kill().unwrap();
    busy.wait().unwrap();
    // No pid handed out since the last listing would skip listing: the closed
    // directory must be reopened all the same, and every process read.
    assert!(
        after.processes.len().abs_diff(before) < 10,
        "{before} processes before the release, {}",
        after.processes.len()
    );
    assert!(scanner.open_files > 0, "stat files kept again");
    // The share over the time since the scan before the release, measured from
    // the reading kept through it, against the kernel's ticks (100/s, 2 CPUs here).
    let share = after.processes.iter().find(|r| r.pid == busy.id()).and_then(|r| r.cpu_share).expect("busy listed");
    let truth = ticks as f64 / 100.0 / after.interval.unwrap().as_secs_f64() / 2.0 * 100.0;
    if truth <= 5.0 {
        let needs = format!("a CPU to spare: the busy loop ran {ticks} ticks, {truth:.1}% of the machine");
        return testkit::skip::skip(&testkit::skip::current_test(), &needs);
    }
    assert!((f64::from(share) - truth).abs() < 5.0, "share after a release {share} vs kernel {truth:.1}");
}

#[test]
fn a_proc_root_that_cannot_be_listed_is_a_listing_error_with_its_cause() {
    let root = tempfile::tempdir().unwrap();
    let mut scanner = scanner(&root.path().join("missing"));
    let error = scanner.collect().unwrap_err();
    let CollectError::ListingProcesses(cause) = &error else { panic!("{error:?}") };
    assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(error.to_string(), format!("listing processes failed: {cause}"), "the error answer's text");
}
