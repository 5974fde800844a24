//! Precision of the CPU-time sources against the kernel's own accounting.
//!
//! Ground truth is the kernel's CPU clock of the whole process: the scheduler's
//! `sum_exec_runtime` of every thread, exited ones included. Read from outside
//! (`clock_getcpuclockid`, or `/proc/PID/schedstat`) it lags a thread that is on a
//! CPU by up to a tick, because only the caller's own thread is brought up to date;
//! so the children measured while running publish their own process clock,
//! continuously, in a shared mapping, and the tests read that. Each sample reads the
//! source and the truth back to back, so both see the same instant to within
//! microseconds.
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
    CpuTimeSource, ProcessRecord, ScannedCpu,
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

/// An 8-byte file both processes map: the child stores its process CPU clock there.
struct SharedClock {
    _file: tempfile::NamedTempFile,
    ptr: *mut i64,
}

impl SharedClock {
    fn new() -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8).unwrap();
        let ptr = map_shared(file.as_file());
        Self { _file: file, ptr }
    }

    fn read(&self) -> i64 {
        // SAFETY: a live 8-byte shared mapping; the child writes it whole.
        unsafe { self.ptr.read_volatile() }
    }
}

fn map_shared(file: &std::fs::File) -> *mut i64 {
    use std::os::fd::AsRawFd;
    // SAFETY: maps 8 bytes of a file at least that long; checked for failure.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), 8, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    ptr.cast()
}

/// A helper child and the clock it publishes.
struct Subject {
    proc: Proc,
    stdout: BufReader<ChildStdout>,
    clock: SharedClock,
}

impl Subject {
    /// Runs this test binary's `child_process` helper in `mode` and waits until it
    /// is going.
    fn start(mode: &str) -> Self {
        let clock = SharedClock::new();
        let (proc, mut stdout) = helper(mode, clock._file.path());
        wait_for(&mut stdout, "ready");
        Self { proc, stdout, clock }
    }
}

/// Runs this test binary's `child_process` helper in `mode`.
fn helper(mode: &str, shared_clock: &std::path::Path) -> (Proc, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SOCKTOP_TEST_CHILD", mode)
        .env("SOCKTOP_TEST_CLOCK", shared_clock)
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

/// One reading of `source` for `pid` and, right after, of `truth`.
fn sample(source: &mut dyn CpuTimeSource, pid: u32, truth: &dyn Fn() -> i64) -> (i64, i64) {
    let mut out = Vec::new();
    let scanned = [ScannedCpu { pid, ticks: stat_ticks(pid) }];
    source.cumulative_ns(&scanned, &mut out).unwrap();
    (out[0] as i64, truth())
}

/// Source and truth deltas of `pid` over `INTERVAL`, and the machine's steal time
/// over it.
fn deltas(source: &mut dyn CpuTimeSource, pid: u32, truth: &dyn Fn() -> i64) -> (i64, i64, i64) {
    let steal0 = steal_ns();
    let (source0, truth0) = sample(source, pid, truth);
    std::thread::sleep(INTERVAL);
    let (source1, truth1) = sample(source, pid, truth);
    (source1 - source0, truth1 - truth0, steal_ns() - steal0)
}

/// Time the hypervisor took from this VM's CPUs (the `steal` column of /proc/stat,
/// proc(5)), in ns rounded to its clock ticks.
fn steal_ns() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat.lines().next().unwrap();
    let ticks: i64 = cpu.split_whitespace().nth(8).unwrap().parse().unwrap();
    ticks * 1_000_000_000 / procfs::ticks_per_second() as i64
}

/// The kernel leaves stolen time out of a task's runtime; the program cannot see it
/// in a slice still running at a reading, so the eBPF bound grows by the steal seen
/// (zero on bare metal and on a quiet host).
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
    let busy = Subject::start("busy");
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let (measured, truth, steal) = deltas(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS + steal, "tp_btf, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_raw_tracepoint_twin_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::RawTracePoint) else { return };
    let busy = Subject::start("busy");
    let (measured, truth, steal) = deltas(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS + steal, "raw_tp, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_duty_cycle_process_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let duty = Subject::start("duty");
    let (measured, truth, steal) = deltas(&mut source, duty.proc.pid(), &|| duty.clock.read());
    // About 30% of a CPU: it must have run, and slept most of the time.
    assert!((50_000_000..700_000_000).contains(&truth), "not a ~30% duty cycle: {truth} ns");
    assert_within(measured, truth, EBPF_BOUND_NS + steal, "tp_btf, 30% duty cycle");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_counts_a_thread_that_exited_between_samples() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let Subject { proc, mut stdout, clock: _clock } = Subject::start("thread");
    let task_dir = format!("/proc/{}/task", proc.pid());
    let tasks_before = std::fs::read_dir(&task_dir).unwrap().count();
    let steal0 = steal_ns();
    // The child is asleep at both samples, so its clock read from here is exact.
    let truth = || process_cpu_ns(proc.pid());
    let (source0, truth0) = sample(&mut source, proc.pid(), &truth);
    writeln!(proc.0.stdin.as_ref().unwrap(), "go").unwrap();
    let thread_ns: i64 = wait_for(&mut stdout, "done").parse().unwrap();
    // pthread_join returns when the thread clears its tid, a moment before the
    // kernel unlists it: wait for it to be gone from /proc before the second sample.
    let started = Instant::now();
    while std::fs::read_dir(&task_dir).unwrap().count() > tasks_before {
        assert!(started.elapsed() < Duration::from_secs(2), "the burning thread never went away");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (source1, truth1) = sample(&mut source, proc.pid(), &truth);
    assert!(thread_ns > 200_000_000, "the thread burned only {thread_ns} ns");
    assert!(source1 - source0 >= thread_ns - EBPF_BOUND_NS, "the exited thread's {thread_ns} ns are missing");
    let steal = steal_ns() - steal0;
    assert_within(source1 - source0, truth1 - truth0, EBPF_BOUND_NS + steal, "tp_btf, exited thread");
}

/// A busy child, once the program has counted it.
fn counted_busy_loop(source: &EbpfCpuTime) -> Proc {
    let busy = busy_loop();
    let started = Instant::now();
    while source.process_ns(busy.pid()).unwrap() == 0 && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(source.is_tracked(busy.pid()).unwrap(), "the busy loop was never counted");
    busy
}

#[test]
fn ebpf_entries_of_exited_processes_are_deleted_by_the_kernel() {
    let _serial = serial();
    let Some(source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    assert!(source.kernel_cleanup(), "the sched_process_free program did not attach");
    let busy = counted_busy_loop(&source);
    let pid = busy.pid();
    drop(busy); // killed and reaped: freed after an RCU grace period
    let started = Instant::now();
    while source.is_tracked(pid).unwrap() && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!source.is_tracked(pid).unwrap(), "the exited process's entry is still there");
    // This test process is alive and has run since loading: its entry stays.
    assert!(source.is_tracked(std::process::id()).unwrap());
}

#[test]
fn ebpf_entries_of_processes_absent_from_a_scan_go_after_retain_live() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let mut busy = counted_busy_loop(&source);
    let pid = busy.pid();
    // Killed but not reaped: a zombie, so the kernel has not freed it and only
    // `retain_live` can delete its entry.
    busy.0.kill().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let live: Vec<u32> = live_pids().into_iter().filter(|&p| p != pid).collect();
    source.retain_live(&live);
    assert!(!source.is_tracked(pid).unwrap(), "the dead process's entry survived retain_live");
    assert!(source.is_tracked(std::process::id()).unwrap());
}

/// The fields of `/proc/PID/stat` after the command name (proc(5) field N is at
/// index N - 3), and the name.
fn stat_fields(pid: u32) -> Option<(String, Vec<u64>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let fields = stat[close + 2..].split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0));
    // Index 0 is field 3 (the state letter), kept as 0 here.
    Some((stat[open + 1..close].to_owned(), std::iter::once(0).chain(fields).collect()))
}

fn listed(source: &mut EbpfCpuTime) -> Vec<ProcessRecord> {
    let mut records = Vec::new();
    source.list_processes(&mut records).unwrap();
    records
}

#[test]
fn ebpf_process_iterator_lists_what_proc_lists() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let sleeper = Proc(Command::new("sleep").arg("30").spawn().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let before = live_pids();
    let records = listed(&mut source);
    let after = live_pids();
    let tgids: Vec<u32> = records.iter().map(|r| r.tgid).collect();
    assert!(tgids.is_sorted(), "records not in pid order");
    // Every process alive throughout is listed; nothing is listed that never was.
    for pid in before.iter().filter(|pid| after.binary_search(pid).is_ok()) {
        assert!(tgids.binary_search(pid).is_ok(), "pid {pid} is in /proc but not listed");
    }
    for &tgid in &tgids {
        if before.binary_search(&tgid).is_ok() || after.binary_search(&tgid).is_ok() {
            continue;
        }
        // Born and gone between the listings, or a thread listed as a process: a
        // thread's /proc/TID is reachable though not listed, with another Tgid.
        let status = std::fs::read_to_string(format!("/proc/{tgid}/status")).unwrap_or_default();
        let owner = status.lines().find_map(|l| l.strip_prefix("Tgid:")).map(|v| v.trim().parse::<u32>().unwrap());
        assert!(owner.is_none_or(|owner| owner == tgid), "tgid {tgid} is listed but is a thread of {owner:?}");
    }
    // A sleeping process's name and resident pages match /proc/PID/stat exactly.
    let record = records.iter().find(|r| r.tgid == sleeper.pid()).expect("the sleeper is listed");
    let (name, fields) = stat_fields(sleeper.pid()).unwrap();
    let comm = record.comm.split(|&b| b == 0).next().unwrap();
    assert_eq!(comm, name.as_bytes());
    assert_eq!(record.rss_pages, fields[24 - 3], "rss pages of the sleeper");
    assert!(record.rss_pages > 0);
    // Start times order as the processes started (kthreadd is the second task).
    let kthreadd = records.iter().find(|r| r.tgid == 2).expect("kthreadd is listed");
    assert!(record.start_time_ns > kthreadd.start_time_ns);
    // Kernel threads have no memory map.
    assert_eq!(kthreadd.rss_pages, 0);
}

#[test]
fn ebpf_process_iterator_cpu_time_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let busy = Subject::start("busy");
    let pid = busy.proc.pid();
    let sample = |source: &mut EbpfCpuTime| {
        let records = listed(source);
        let truth = busy.clock.read();
        let record = records.iter().find(|r| r.tgid == pid).expect("the busy process is listed");
        (record.cpu_ns as i64, truth)
    };
    let steal0 = steal_ns();
    let (source0, truth0) = sample(&mut source);
    std::thread::sleep(INTERVAL);
    let (source1, truth1) = sample(&mut source);
    let steal = steal_ns() - steal0;
    let truth = truth1 - truth0;
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(source1 - source0, truth, EBPF_BOUND_NS + steal, "task iterator, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn proc_source_busy_loop_matches_the_kernel_to_a_tick() {
    let _serial = serial();
    let mut source = ProcCpuTime::new(procfs::ticks_per_second());
    let busy = Subject::start("busy");
    let (measured, truth, _) = deltas(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(truth > 100_000_000, "the busy loop barely ran: {truth} ns");
    assert_within(measured, truth, proc_bound_ns(), "/proc, busy loop");
}

/// Not a test: the body of the child processes the tests above measure, selected
/// by `SOCKTOP_TEST_CHILD`. Ignored, so only those tests run it.
#[test]
#[ignore = "helper run as a child process by the other tests"]
fn child_process() {
    match std::env::var("SOCKTOP_TEST_CHILD").as_deref() {
        Ok("busy") => busy(&published_clock()),
        Ok("duty") => duty_cycle(&published_clock()),
        Ok("thread") => short_lived_thread(),
        _ => {}
    }
}

/// The parent's shared clock file, mapped.
fn published_clock() -> SharedClockWriter {
    let path = std::env::var_os("SOCKTOP_TEST_CLOCK").unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    SharedClockWriter(map_shared(&file))
}

struct SharedClockWriter(*mut i64);

impl SharedClockWriter {
    /// Stores this process's CPU clock, exact because it is read by a thread of the
    /// process itself.
    fn publish(&self) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: out-parameter call; the mapping is live and 8 bytes.
        unsafe {
            libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
            self.0.write_volatile(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
        }
    }
}

/// Busy forever, publishing its clock.
fn busy(clock: &SharedClockWriter) {
    println!("ready");
    loop {
        clock.publish();
    }
}

/// Busy 3 ms, asleep 7 ms, forever, publishing its clock.
fn duty_cycle(clock: &SharedClockWriter) {
    println!("ready");
    loop {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3) {
            clock.publish();
        }
        clock.publish();
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
