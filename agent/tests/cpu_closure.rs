//! Every CPU-second accounted: the processes list against the kernel's totals.
//!
//! The answers' rows over consecutive windows must add up to the busy time the
//! whole machine reports in `/proc/stat`, even when most of that time belongs to
//! processes that start and exit between two scans (a shell loop running
//! `/bin/true`, the shape of a build). Per process, the truth is the kernel's own
//! fold: `getrusage` of this process and of the children it reaped.
//!
//! Loading the program needs root; without it the eBPF tests skip, unless
//! `SOCKTOP_REQUIRE_ALL=1` (CI) makes that a failure.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socktop_agent::{
    collect::processes::ProcessScanner,
    config::ChildrenMode,
    cputime::{CpuTimeSource, SharedCpuSource, ebpf, proc::ProcCpuTime},
    host::clock::HostClock,
};
use testkit::closure::{ForkLoop, LOOP_SETTLE, Ledger};
use testkit::kernel;

/// The tests burn CPU and measure the whole machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ebpf_or_skip() -> Option<Box<dyn CpuTimeSource>> {
    loaded_or_skip(ebpf::load(std::path::Path::new("/proc"), host_clock()))
}

/// The eBPF source with the per-CPU sums left to user space, as on kernels before
/// 5.19: the task iterator's and the exit records' totals are summed by the agent,
/// and it deletes the entries of exited processes.
fn ebpf_summing_in_user_space_or_skip() -> Option<Box<dyn CpuTimeSource>> {
    loaded_or_skip(ebpf::load_summing_in_user_space())
}

fn loaded_or_skip(loaded: Result<ebpf::EbpfCpuTime, ebpf::EbpfLoadError>) -> Option<Box<dyn CpuTimeSource>> {
    match loaded {
        Ok(source) => Some(Box::new(source)),
        Err(error) => {
            let needs = format!("root and a kernel with BTF to load the eBPF program (here: {error})");
            testkit::skip::skip(&testkit::skip::current_test(), &needs);
            None
        }
    }
}

fn host_clock() -> HostClock {
    HostClock::from_proc(std::path::Path::new("/proc")).unwrap()
}

fn proc_source() -> Box<dyn CpuTimeSource> {
    Box::new(ProcCpuTime::new(procfs::ticks_per_second()))
}

/// A scanner of the real /proc as the agent builds one, its source told that a
/// client is connected.
fn scanner(source: Box<dyn CpuTimeSource>, children: ChildrenMode) -> ProcessScanner {
    scanner_and_source(source, children).0
}

/// [`scanner`], and the source it reads, for its error counters.
fn scanner_and_source(mut source: Box<dyn CpuTimeSource>, children: ChildrenMode) -> (ProcessScanner, SharedCpuSource) {
    // The scanner keeps up to 4096 stat files open, as the agent, which raises its
    // own limit the same way; an ordinary user's soft limit is often 1024.
    testkit::limits::raise_open_files_limit().unwrap();
    source.active();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let shared: SharedCpuSource = Arc::new(Mutex::new(source));
    let scanner = ProcessScanner::new(PathBuf::from("/proc"), host_clock(), cpus, Arc::clone(&shared), 4096, children);
    (scanner, shared)
}

/// The source's error counters that are not zero, for a failure's message.
fn nonzero_error_counts(source: &SharedCpuSource) -> Vec<(&'static str, u64)> {
    let source = source.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    source.error_counts().into_iter().filter(|(_, count)| *count > 0).collect()
}

/// One scan: every process's pid and the CPU ns its row shows for the interval.
fn scan(scanner: &mut ProcessScanner) -> Vec<(u32, u64)> {
    let snapshot = scanner.scan().unwrap();
    snapshot.processes.iter().map(|process| (process.pid, process.interval_cpu_ns.unwrap_or(0))).collect()
}

fn shown_for(rows: &[(u32, u64)], pid: u32) -> u64 {
    rows.iter().find(|(row_pid, _)| *row_pid == pid).map_or(0, |(_, ns)| *ns)
}

/// What the rows of `windows` consecutive scans `window` apart add up to, against
/// the busy time of the machine over the same windows, under a fork loop.
fn closure(source: Box<dyn CpuTimeSource>, windows: u32, window: Duration) -> (u64, u64) {
    let mut scanner = scanner(source, ChildrenMode::Attribute);
    let _loop = ForkLoop::start(window * (windows + 3), |_| {}).unwrap();
    std::thread::sleep(LOOP_SETTLE);
    scan(&mut scanner);
    let mut ledger = Ledger::open().unwrap();
    let mut next = Instant::now();
    for _ in 0..windows {
        next += window;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let shown: u64 = scan(&mut scanner).iter().map(|(_, ns)| ns).sum();
        ledger.add_rows(Duration::from_nanos(shown));
    }
    let closure = ledger.close().unwrap();
    (closure.rows.as_nanos() as u64, closure.busy.as_nanos() as u64)
}

#[test]
fn ebpf_rows_add_up_to_the_busy_time_of_the_machine_under_a_fork_loop() {
    let _serial = serial();
    let Some(source) = ebpf_or_skip() else { return };
    assert_rows_add_up(source, "eBPF");
}

#[test]
fn ebpf_summed_in_user_space_rows_add_up_to_the_busy_time_of_the_machine_under_a_fork_loop() {
    let _serial = serial();
    let Some(source) = ebpf_summing_in_user_space_or_skip() else { return };
    assert_rows_add_up(source, "eBPF, sums in user space");
}

fn assert_rows_add_up(source: Box<dyn CpuTimeSource>, what: &str) {
    let (shown, busy) = closure(source, 10, Duration::from_secs(1));
    let ratio = shown as f64 / busy as f64;
    eprintln!("{what}: rows {shown} ns, {} busy {busy} ns over 10 s: {:.1}%", kernel::busy_clock(), ratio * 100.0);
    assert!((0.95..=1.03).contains(&ratio), "rows {shown} ns against busy {busy} ns: {:.1}%", ratio * 100.0);
}

/// The /proc fallback sees exited children only through their parents' cutime and
/// cstime: children that no process reaps (nor ever listed) are missing, and
/// utime and stime are sampled by the tick.
#[test]
fn proc_rows_add_up_to_most_of_the_busy_time_of_the_machine_under_a_fork_loop() {
    let _serial = serial();
    let (shown, busy) = closure(proc_source(), 10, Duration::from_secs(1));
    let ratio = shown as f64 / busy as f64;
    eprintln!("/proc: rows {shown} ns, {} busy {busy} ns over 10 s: {:.1}%", kernel::busy_clock(), ratio * 100.0);
    assert!((0.85..=1.05).contains(&ratio), "rows {shown} ns against busy {busy} ns: {:.1}%", ratio * 100.0);
}

/// CPU ns of this process (all threads) and of the children it reaped.
fn rusage_ns(who: libc::c_int) -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write.
    assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Forks a child of this process that burns CPU until `burn` of its own CPU time
/// or `wall` have passed, then exits; returns its pid.
fn fork_burner(burn: Duration, wall: Duration) -> libc::pid_t {
    let burn_ns = burn.as_nanos() as i64;
    let wall_ns = wall.as_nanos() as i64;
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: async-signal-safe, valid timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    // SAFETY: the child calls only async-signal-safe functions (clock_gettime,
    // _exit) before it exits, as a child of a multi-threaded process must.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let started = read(libc::CLOCK_MONOTONIC);
        while read(libc::CLOCK_PROCESS_CPUTIME_ID) < burn_ns && read(libc::CLOCK_MONOTONIC) - started < wall_ns {}
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
}

/// Readings of this process's own CPU time just before and just after a scan:
/// the scan read it somewhere between.
struct Bracketed {
    before: u64,
    after: u64,
    rows: Vec<(u32, u64)>,
}

fn bracketed_scan(scanner: &mut ProcessScanner) -> Bracketed {
    let before = rusage_ns(libc::RUSAGE_SELF);
    let rows = scan(scanner);
    Bracketed { before, after: rusage_ns(libc::RUSAGE_SELF), rows }
}

/// The time the kernel's own accounting allows this process's rows to show from
/// `first` to `last`: its own time between the scans (bracketed), plus `children`
/// (reaped in between); within `slack` of the brackets.
fn assert_shown_within(shown: u64, first: &Bracketed, last: &Bracketed, children: u64, slack: u64, what: &str) {
    let low = (last.before - first.after + children).saturating_sub(slack);
    let high = last.after - first.before + children + slack;
    eprintln!("{what}: shown {shown} ns; allowed {low} – {high} ns (children {children} ns)");
    assert!((low..=high).contains(&shown), "{what}: shown {shown} ns, allowed {low} – {high} ns");
}

/// Chained slice starts lag the clock by a few µs; a repaired slice by up to a
/// resync period on a CPU that switched untraced; reading rusage is tick-adjusted
/// utime/stime summed to the scheduler's count.
const SLACK_NS: u64 = 500_000;

/// A child of this process that, once told, forks a grandchild burning CPU for
/// `burn` of its own time or `wall`, whichever comes first, reaps it, and reports
/// its own CPU ns and the grandchild's; it then waits to be killed. Its own work
/// is a fork and a wait, so its row shows little but the grandchild.
struct Spawner {
    pid: libc::pid_t,
    go: libc::c_int,
    report: libc::c_int,
}

impl Spawner {
    fn start(burn: Duration, wall: Duration) -> Self {
        let (mut go, mut report) = ([0; 2], [0; 2]);
        // SAFETY: two valid arrays of two fds.
        assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) + libc::pipe(report.as_mut_ptr()) }, 0);
        // SAFETY: the child calls only async-signal-safe functions (read, fork,
        // clock_gettime, waitpid, getrusage, write, pause, _exit), as a child of a
        // multi-threaded process must.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: plain syscalls on the pipes made above.
            unsafe {
                libc::read(go[0], (&raw mut byte).cast(), 1);
                let grandchild = fork_burner(burn, wall);
                let mut status = 0;
                libc::waitpid(grandchild, &mut status, 0);
                let reported = [rusage_ns(libc::RUSAGE_SELF), rusage_ns(libc::RUSAGE_CHILDREN), grandchild as u64];
                libc::write(report[1], reported.as_ptr().cast(), 24);
                loop {
                    libc::pause();
                }
            }
        }
        // SAFETY: closing our copies of the child's ends.
        unsafe {
            libc::close(go[0]);
            libc::close(report[1]);
        }
        Self { pid, go: go[1], report: report[0] }
    }

    /// Lets the grandchild run, and returns once it was reaped: the spawner's own
    /// CPU ns, the grandchild's, and the grandchild's pid.
    fn run(&self) -> (u64, u64, u32) {
        let mut report = [0u64; 3];
        // SAFETY: plain syscalls on our ends of the pipes.
        unsafe {
            assert_eq!(libc::write(self.go, [1u8].as_ptr().cast(), 1), 1);
            assert_eq!(libc::read(self.report, report.as_mut_ptr().cast(), 24), 24);
        }
        (report[0], report[1], report[2] as u32)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: our own child and fds.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::close(self.go);
            libc::close(self.report);
        }
        reap(self.pid);
    }
}

#[test]
#[ignore = "open defect: the grandchild's time shows twice or not at all in some runs (docs/EBPF.md, \"5.10 in CI\"); run with --ignored"]
fn ebpf_a_process_living_2_ms_shows_in_its_parent_within_one_window() {
    let _serial = serial();
    let Some(source) = ebpf_or_skip() else { return };
    assert_grandchild_shows_in_its_parent(source);
}

#[test]
#[ignore = "open defect: the grandchild's time shows twice or not at all in some runs (docs/EBPF.md, \"5.10 in CI\"); run with --ignored"]
fn ebpf_summed_in_user_space_a_process_living_2_ms_shows_in_its_parent_within_one_window() {
    let _serial = serial();
    let Some(source) = ebpf_summing_in_user_space_or_skip() else { return };
    assert_grandchild_shows_in_its_parent(source);
}

fn assert_grandchild_shows_in_its_parent(source: Box<dyn CpuTimeSource>) {
    let (mut scanner, source) = scanner_and_source(source, ChildrenMode::Attribute);
    let spawner = Spawner::start(Duration::from_millis(1), Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(50));
    scan(&mut scanner);
    let errors_before = nonzero_error_counts(&source);
    let started = Instant::now();
    let (own_at_report, grandchild, grandchild_pid) = spawner.run();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    let rows = scan(&mut scanner);
    let shown = shown_for(&rows, spawner.pid as u32);
    // The parent's own time up to the scan, by the scheduler: it runs on after it
    // reported (its write, entering pause), which takes milliseconds where the
    // CPUs are emulated and the pages it touches are still cold.
    let own = testkit::kernel::on_cpu_ns(spawner.pid as u32).unwrap();
    // For the open defect (see the ignore reason): whether the grandchild got a
    // row of its own, and the program's error counters (an unseen switch counts
    // in `mismatch`) before and after its window.
    let grandchild_row = rows.iter().find(|(pid, _)| *pid == grandchild_pid);
    eprintln!(
        "2 ms grandchild (pid {grandchild_pid}): {grandchild} ns; its parent showed {shown} ns (its own time in \
         all: {own} ns, {own_at_report} ns when it reported); the grandchild's own row: {grandchild_row:?}; \
         error counters before the window {errors_before:?}, after it {:?}",
        nonzero_error_counts(&source)
    );
    assert!(grandchild > 200_000, "the grandchild burnt only {grandchild} ns");
    // The parent's row: the grandchild's total and at most the parent's own time.
    let (low, high) = (grandchild.saturating_sub(SLACK_NS), grandchild + own + SLACK_NS);
    assert!((low..=high).contains(&shown), "shown {shown} ns, allowed {low} – {high} ns");
}

#[test]
fn ebpf_a_child_listed_for_several_windows_adds_only_its_last_slice_to_its_parent() {
    let _serial = serial();
    let Some(source) = ebpf_or_skip() else { return };
    let mut scanner = scanner(source, ChildrenMode::Attribute);
    scan(&mut scanner);
    let me = std::process::id();
    let first = bracketed_scan(&mut scanner);
    let children_before = rusage_ns(libc::RUSAGE_CHILDREN);
    let child = fork_burner(Duration::from_secs(60), Duration::from_millis(2_500));
    let mut scans = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        scans.push(bracketed_scan(&mut scanner));
    }
    reap(child);
    let children = rusage_ns(libc::RUSAGE_CHILDREN) - children_before;
    std::thread::sleep(Duration::from_secs(1));
    scans.push(bracketed_scan(&mut scanner));
    let child_shown: u64 = scans.iter().map(|scan| shown_for(&scan.rows, child as u32)).sum();
    let parent_shown: u64 = scans.iter().map(|scan| shown_for(&scan.rows, me)).sum();
    assert!(shown_for(&scans[0].rows, child as u32) > 0, "the child was listed");
    // The parent's rows hold its own time and the child's time after its last
    // listing; the child's rows hold the rest. Counted twice, the parent would
    // show the child's whole ~2.5 s again.
    let last = scans.last().unwrap();
    assert_shown_within(parent_shown + child_shown, &first, last, children, SLACK_NS, "child listed, then gone");
    let own_high = last.after - first.before;
    assert!(
        parent_shown.saturating_sub(own_high) < 1_100_000_000,
        "the parent showed {parent_shown} ns, more than its own {own_high} ns and one window of its child"
    );
}
