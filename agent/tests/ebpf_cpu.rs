//! Precision of the CPU-time sources against the kernel's own accounting.
//!
//! Ground truth is the kernel's CPU clock of the whole process
//! (`clock_getcpuclockid`): the scheduler's `sum_exec_runtime` of every thread,
//! exited ones included, brought up to date at the read. (`/proc/PID/schedstat`
//! holds the same counter but skips that update, so it lags a running task by up to
//! a tick.) Each sample reads the source and the clock back to back, so both see
//! the same instant to within microseconds.
//!
//! Loading the program needs root; without it these tests skip, unless
//! `SOCKTOP_REQUIRE_EBPF=1` (CI) makes that a failure.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use socktop_agent::cputime::{
    CpuTimeSource, ScannedCpu,
    ebpf::{self, AttachKind, EbpfCpuTime},
    proc::ProcCpuTime,
};

/// 0.2% of one CPU over the 1 s interval.
const EBPF_BOUND_NS: i64 = 2_000_000;
/// /proc counts in clock ticks: each of the two readings truncates up to one tick.
fn proc_bound_ns() -> i64 {
    2 * 1_000_000_000 / procfs::ticks_per_second() as i64 + 1_000_000
}
const INTERVAL: Duration = Duration::from_secs(1);

/// The tests load programs and burn CPU: one at a time keeps them from disturbing
/// each other's timing on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn load_or_skip(kind: AttachKind) -> Option<EbpfCpuTime> {
    match ebpf::load_kind(kind) {
        Ok(source) => Some(source),
        Err(error) if std::env::var("SOCKTOP_REQUIRE_EBPF").as_deref() == Ok("1") => {
            panic!("SOCKTOP_REQUIRE_EBPF=1 but the eBPF program did not load: {error}")
        }
        Err(error) => {
            eprintln!("skipped: eBPF program not loaded ({error})");
            None
        }
    }
}

/// A child that is killed when the test ends, passing or not.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn busy_loop() -> Proc {
    Proc(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
}

/// Runs this test binary's `child_process` helper in `mode`.
fn helper(mode: &str) -> (Proc, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SOCKTOP_TEST_CHILD", mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Proc(child), stdout)
}

/// Reads the helper's output up to a line holding `word`; returns what follows it.
/// (libtest prints `test child_process ... ` before the helper's first line.)
fn wait_for(stdout: &mut BufReader<ChildStdout>, word: &str) -> String {
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once(word) {
            return rest.trim().to_owned();
        }
    }
    panic!("helper exited before printing {word}");
}

/// The kernel's CPU time of the whole process `pid`, in ns.
fn process_cpu_ns(pid: u32) -> i64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain out-parameter calls.
    assert_eq!(unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) }, 0);
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// utime + stime of `pid` in ticks, fields 14 and 15 of /proc/PID/stat (proc(5)),
/// counted after the command name's closing parenthesis.
fn stat_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One reading of `source` for `pid` and, right after, of the kernel's clock.
fn sample(source: &mut dyn CpuTimeSource, pid: u32) -> (i64, i64) {
    let mut out = Vec::new();
    let scanned = [ScannedCpu { pid, ticks: stat_ticks(pid) }];
    source.cumulative_ns(&scanned, &mut out).unwrap();
    (out[0] as i64, process_cpu_ns(pid))
}

/// Source and kernel deltas of `pid` over `INTERVAL`.
fn deltas(source: &mut dyn CpuTimeSource, pid: u32) -> (i64, i64) {
    let (source0, truth0) = sample(source, pid);
    std::thread::sleep(INTERVAL);
    let (source1, truth1) = sample(source, pid);
    (source1 - source0, truth1 - truth0)
}

fn assert_within(measured: i64, truth: i64, bound: i64, what: &str) {
    let error = measured - truth;
    eprintln!("{what}: measured {measured} ns, kernel {truth} ns, error {error} ns (bound {bound})");
    assert!(error.abs() <= bound, "{what}: error {error} ns exceeds {bound} ns");
}

fn live_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Task ids always read and the map never full. Unseen switches (`mismatch`) are
/// the kernel's doing and only reported.
fn assert_no_program_errors(source: &EbpfCpuTime) {
    let errors = source.error_counts().unwrap();
    eprintln!("program counters: {errors:?}");
    assert_eq!((errors.read_task, errors.map_full), (0, 0), "{errors:?}");
}

#[test]
fn ebpf_busy_loop_started_before_loading_matches_the_kernel() {
    let _serial = serial();
    // Started first: the program must pick up a task that was already running.
    let busy = busy_loop();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let (measured, truth) = deltas(&mut source, busy.pid());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS, "tp_btf, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_raw_tracepoint_twin_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::RawTracePoint) else { return };
    let busy = busy_loop();
    let (measured, truth) = deltas(&mut source, busy.pid());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS, "raw_tp, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_duty_cycle_process_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let (duty, mut stdout) = helper("duty");
    wait_for(&mut stdout, "ready");
    let (measured, truth) = deltas(&mut source, duty.pid());
    // About 30% of a CPU: it must have run, and slept most of the time.
    assert!((50_000_000..700_000_000).contains(&truth), "not a ~30% duty cycle: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS, "tp_btf, 30% duty cycle");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_counts_a_thread_that_exited_between_samples() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let (proc, mut stdout) = helper("thread");
    wait_for(&mut stdout, "ready");
    let task_dir = format!("/proc/{}/task", proc.pid());
    let tasks_before = std::fs::read_dir(&task_dir).unwrap().count();
    let (source0, truth0) = sample(&mut source, proc.pid());
    writeln!(proc.0.stdin.as_ref().unwrap(), "go").unwrap();
    let thread_ns: i64 = wait_for(&mut stdout, "done").parse().unwrap();
    // pthread_join returns when the thread clears its tid, a moment before the
    // kernel unlists it: wait for it to be gone from /proc before the second sample.
    let started = Instant::now();
    while std::fs::read_dir(&task_dir).unwrap().count() > tasks_before {
        assert!(started.elapsed() < Duration::from_secs(2), "the burning thread never went away");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (source1, truth1) = sample(&mut source, proc.pid());
    assert!(thread_ns > 200_000_000, "the thread burned only {thread_ns} ns");
    assert!(source1 - source0 >= thread_ns - EBPF_BOUND_NS, "the exited thread's {thread_ns} ns are missing");
    assert_within(source1 - source0, truth1 - truth0, EBPF_BOUND_NS, "tp_btf, exited thread");
}

#[test]
fn ebpf_entries_of_exited_processes_go_after_retain_live() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let busy = busy_loop();
    let pid = busy.pid();
    let started = Instant::now();
    while source.process_ns(pid).unwrap() == 0 && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(source.is_tracked(pid).unwrap(), "the busy loop was never counted");
    drop(busy); // killed and reaped: gone from /proc
    source.retain_live(&live_pids());
    assert!(!source.is_tracked(pid).unwrap(), "the exited process's entry survived retain_live");
    // This test process is alive and has run since loading: its entry stays.
    assert!(source.is_tracked(std::process::id()).unwrap());
}

#[test]
fn proc_source_busy_loop_matches_the_kernel_to_a_tick() {
    let _serial = serial();
    let mut source = ProcCpuTime::new(procfs::ticks_per_second());
    let busy = busy_loop();
    let (measured, truth) = deltas(&mut source, busy.pid());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, proc_bound_ns(), "/proc, busy loop");
}

/// Not a test: the body of the child processes the tests above measure, selected
/// by `SOCKTOP_TEST_CHILD`. Ignored, so only those tests run it.
#[test]
#[ignore = "helper run as a child process by the other tests"]
fn child_process() {
    match std::env::var("SOCKTOP_TEST_CHILD").as_deref() {
        Ok("duty") => duty_cycle(),
        Ok("thread") => short_lived_thread(),
        _ => {}
    }
}

/// Busy 3 ms, asleep 7 ms, forever.
fn duty_cycle() {
    println!("ready");
    loop {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3) {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_millis(7));
    }
}

/// On "go", runs a thread that burns 300 ms of CPU and exits, then prints the
/// thread's own CPU time and idles until stdin closes.
fn short_lived_thread() {
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let burned = std::thread::spawn(|| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            // SAFETY: out-parameter call.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            let ns = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
            if ns >= 300_000_000 {
                return ns;
            }
        }
    })
    .join()
    .unwrap();
    println!("done {burned}");
    let _ = std::io::stdin().read_line(&mut line);
}
