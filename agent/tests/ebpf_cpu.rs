//! Precision of the CPU-time sources against the kernel's own accounting.
//!
//! Ground truth is the kernel's CPU clock of the whole process: the scheduler's
//! `sum_exec_runtime` of every thread, exited ones included. Read from outside
//! (`clock_getcpuclockid`, or `/proc/PID/schedstat`) it lags a thread that is on a
//! CPU by up to a tick, because only the caller's own thread is brought up to date;
//! so the children measured while running publish their own process clock,
//! continuously, in a shared mapping, and the tests read that. Each sample reads the
//! truth just before and just after the source: an exact source lies between, however
//! long the test thread waited for a CPU in between (it competes with the busy
//! children for them).
//!
//! Loading the program needs root; without it these tests skip, unless
//! `SOCKTOP_REQUIRE_ALL=1` (CI) makes that a failure.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use socktop_agent::cputime::{
    CpuTimeSource, ProcessRecord, ScannedCpu,
    ebpf::{self, AttachKind, EbpfCpuTime, EbpfLoadError, MapMemory},
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
    loaded_or_skip(ebpf::load_kind(kind))
}

fn loaded_or_skip(loaded: Result<EbpfCpuTime, EbpfLoadError>) -> Option<EbpfCpuTime> {
    match loaded {
        Ok(source) => Some(source),
        Err(error) => {
            let needs = format!("root and a kernel with BTF to load the eBPF program (here: {error})");
            testkit::skip::skip(&testkit::skip::current_test(), &needs);
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

/// A file both processes map, of one 8-byte slot per clock the child publishes
/// (its process clock, or each thread's own): the truth is their sum.
struct SharedClock {
    _file: tempfile::NamedTempFile,
    ptr: *mut i64,
    slots: usize,
}

impl SharedClock {
    fn new(slots: usize) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(8 * slots as u64).unwrap();
        let ptr = map_shared(file.as_file(), slots);
        Self { _file: file, ptr, slots }
    }

    fn read(&self) -> i64 {
        // SAFETY: a live shared mapping of `slots` i64s; the child writes each whole.
        (0..self.slots).map(|slot| unsafe { self.ptr.add(slot).read_volatile() }).sum()
    }
}

fn map_shared(file: &std::fs::File, slots: usize) -> *mut i64 {
    use std::os::fd::AsRawFd;
    // SAFETY: maps `slots` i64s of a file at least that long; checked for failure.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8 * slots,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
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
        Self::with_clocks(mode, 1)
    }

    /// As `start`, for a helper that publishes `slots` clocks.
    fn with_clocks(mode: &str, slots: usize) -> Self {
        let clock = SharedClock::new(slots);
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
    testkit::kernel::cpu_ticks(pid).unwrap()
}

/// One reading of a source and the truth around it.
#[derive(Debug, Clone, Copy)]
struct Reading {
    source: i64,
    /// The truth just before the source was read.
    before: i64,
    /// The truth just after.
    after: i64,
}

impl Reading {
    fn width(&self) -> i64 {
        self.after - self.before
    }
}

/// A reading whose truth moved more than this is taken again (up to
/// `READ_ATTEMPTS` times, keeping the narrowest): the test thread was held off a
/// CPU meanwhile, and a wide bracket proves less. A pass of the task iterator
/// takes a few hundred µs, with two busy threads' time moving the truth twice as fast.
const NARROW_NS: i64 = 1_000_000;
const READ_ATTEMPTS: usize = 20;

/// Reads `source` between two readings of `truth`.
fn bracketed(mut source: impl FnMut() -> i64, truth: &dyn Fn() -> i64) -> Reading {
    let mut narrowest: Option<Reading> = None;
    for _ in 0..READ_ATTEMPTS {
        let before = truth();
        let source = source();
        let reading = Reading { source, before, after: truth() };
        if narrowest.is_none_or(|narrowest| reading.width() < narrowest.width()) {
            narrowest = Some(reading);
        }
        if reading.width() <= NARROW_NS {
            break;
        }
    }
    narrowest.unwrap()
}

/// `source`'s cumulative count of `pid`.
fn count(source: &mut dyn CpuTimeSource, pid: u32) -> i64 {
    let mut out = Vec::new();
    let scanned = [ScannedCpu { pid, ticks: stat_ticks(pid) }];
    source.cumulative_ns(&scanned, &mut out).unwrap();
    out[0] as i64
}

/// One reading of `source` for `pid`, bracketed by `truth`.
fn sample(source: &mut dyn CpuTimeSource, pid: u32, truth: &dyn Fn() -> i64) -> Reading {
    bracketed(|| count(source, pid), truth)
}

/// Two readings and the machine's steal time between them (at most).
struct Interval {
    first: Reading,
    last: Reading,
    steal: i64,
}

impl Interval {
    /// Reads `source` now and after `INTERVAL`.
    fn measure(mut source: impl FnMut() -> i64, truth: &dyn Fn() -> i64) -> Self {
        let steal0 = steal_ns();
        let first = bracketed(&mut source, truth);
        std::thread::sleep(INTERVAL);
        let last = bracketed(&mut source, truth);
        // /proc/stat counts in clock ticks: on a host that steals at all, up to a
        // tick of stolen time hides between two readings (seen here: 2.4-3.7 ms
        // more than the kernel's count with no tick of steal shown).
        let unseen = if steal0 > 0 { 1_000_000_000 / procfs::ticks_per_second() as i64 } else { 0 };
        Self { first, last, steal: steal_ns() - steal0 + unseen + emulated_cpu_slack_ns() }
    }

    /// The kernel's count over the interval, from the middles of the brackets.
    fn truth(&self) -> i64 {
        (self.last.before + self.last.after - self.first.before - self.first.after) / 2
    }

    /// Fails when the source's count over the interval is further than `bound` from
    /// every count the brackets allow. The kernel leaves stolen time out of a task's
    /// runtime; the program cannot see it in a slice still running at a reading, so
    /// the eBPF bounds grow by the steal seen (zero on bare metal and on a quiet host).
    fn assert_within(&self, bound: i64, what: &str) {
        let measured = self.last.source - self.first.source;
        let least = self.last.before - self.first.after;
        let most = self.last.after - self.first.before;
        let error = measured - measured.clamp(least, most);
        let from_middle = measured - self.truth();
        eprintln!(
            "{what}: measured {measured} ns, kernel {least}..={most} ns, \
             error {error} ns outside that ({from_middle} from its middle; bound {bound})"
        );
        assert!(error.abs() <= bound, "{what}: error {error} ns exceeds {bound} ns");
    }
}

/// `source`'s count of `pid` over `INTERVAL`, with the truth around each reading.
fn interval(source: &mut dyn CpuTimeSource, pid: u32, truth: &dyn Fn() -> i64) -> Interval {
    Interval::measure(|| count(source, pid), truth)
}

/// Under an emulator (QEMU's TCG) the host deschedules the guest's CPUs without the
/// guest seeing it as steal, so the eBPF bounds grow by this much there: `cargo xtask
/// vm-test` sets `SOCKTOP_TEST_EMULATED_CPU_SLACK_NS` to what it measured (docs/EBPF.md,
/// "Kernels in VMs"); zero everywhere else.
fn emulated_cpu_slack_ns() -> i64 {
    std::env::var("SOCKTOP_TEST_EMULATED_CPU_SLACK_NS").map_or(0, |ns| ns.parse().unwrap())
}

/// Time the hypervisor took from this VM's CPUs (the `steal` column of /proc/stat,
/// proc(5)), in ns rounded to its clock ticks.
fn steal_ns() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat.lines().next().unwrap();
    let ticks: i64 = cpu.split_whitespace().nth(8).unwrap().parse().unwrap();
    ticks * 1_000_000_000 / procfs::ticks_per_second() as i64
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
    let counted = interval(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(counted.truth() > 100_000_000, "the busy loop barely ran: {} ns", counted.truth());
    counted.assert_within(EBPF_BOUND_NS + counted.steal, "tp_btf, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_raw_tracepoint_twin_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::RawTracePoint) else { return };
    let busy = Subject::start("busy");
    let counted = interval(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(counted.truth() > 100_000_000, "the busy loop barely ran: {} ns", counted.truth());
    counted.assert_within(EBPF_BOUND_NS + counted.steal, "raw_tp, busy loop");
    assert_no_program_errors(&source);
}

/// The raw_tp twins that name only the preallocated map (the switch, exit and
/// repair programs), as a kernel before 6.1 that refuses tp_btf would run them.
#[test]
fn ebpf_raw_tracepoint_twins_of_the_preallocated_map_match_the_kernel() {
    let _serial = serial();
    let loaded = ebpf::load_with_memory(AttachKind::RawTracePoint, MapMemory::Preallocated);
    let Some(mut source) = loaded_or_skip(loaded) else { return };
    assert_eq!(source.map_memory(), MapMemory::Preallocated);
    let busy = Subject::start("busy");
    let counted = interval(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(counted.truth() > 100_000_000, "the busy loop barely ran: {} ns", counted.truth());
    counted.assert_within(EBPF_BOUND_NS + counted.steal, "raw_tp, preallocated map, busy loop");
    assert_no_program_errors(&source);
}

#[test]
fn ebpf_duty_cycle_process_matches_the_kernel() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let duty = Subject::start("duty");
    let counted = interval(&mut source, duty.proc.pid(), &|| duty.clock.read());
    // About 30% of a CPU: it must have run, and slept most of the time.
    let truth = counted.truth();
    assert!((50_000_000..700_000_000).contains(&truth), "not a ~30% duty cycle: {truth} ns");
    counted.assert_within(EBPF_BOUND_NS + counted.steal, "tp_btf, 30% duty cycle");
    assert_no_program_errors(&source);
}

/// Whether the running kernel is at least `major.minor` (from uname's release).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap(), numbers.next().unwrap_or(0)) >= (major, minor)
}

/// A process with one busy thread per CPU (at most 4): it is counted in several
/// CPUs' copies of its entry at once.
struct BusyThreads {
    subject: Subject,
    cpus: usize,
}

impl BusyThreads {
    fn start() -> Self {
        let cpus = std::thread::available_parallelism().unwrap().get().min(4);
        Self { subject: Subject::with_clocks("threads", cpus), cpus }
    }

    /// Whether the threads' time over `counted` shows two of them running at once,
    /// given back what the hypervisor took from the CPUs meanwhile. Where they
    /// did not (a host too busy to give them two CPUs), the test is skipped: the
    /// count would prove nothing about adding up several CPUs' copies.
    fn ran_in_parallel(&self, counted: &Interval) -> bool {
        let (truth, steal) = (counted.truth(), counted.steal);
        let parallel = self.cpus == 1 || truth + steal > 1_100_000_000;
        if !parallel {
            let needs = format!(
                "two CPUs to spare: the threads ran {truth} ns in 1 s ({steal} ns stolen), never on two CPUs at once"
            );
            testkit::skip::skip(&testkit::skip::current_test(), &needs);
        }
        parallel
    }
}

/// `BusyThreads` measured over 1 s through `source`.
fn threads_on_every_cpu(source: &mut EbpfCpuTime, what: &str) {
    let threads = BusyThreads::start();
    let clock = &threads.subject.clock;
    let counted = interval(source, threads.subject.proc.pid(), &|| clock.read());
    if !threads.ran_in_parallel(&counted) {
        return;
    }
    counted.assert_within(EBPF_BOUND_NS + counted.steal, what);
    assert_no_program_errors(source);
}

#[test]
fn ebpf_threads_on_every_cpu_add_up_to_the_kernel_count() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    // Linux 6.1 lets perf-event programs use hash maps allocated on demand.
    if kernel_at_least(6, 1) {
        assert_eq!(source.map_memory(), MapMemory::OnDemand);
    }
    threads_on_every_cpu(&mut source, "tp_btf, one busy thread per CPU");
}

#[test]
fn ebpf_preallocated_map_twin_counts_the_same() {
    let _serial = serial();
    let loaded = ebpf::load_with_memory(AttachKind::BtfTracePoint, MapMemory::Preallocated);
    let Some(mut source) = loaded_or_skip(loaded) else { return };
    assert_eq!(source.map_memory(), MapMemory::Preallocated);
    threads_on_every_cpu(&mut source, "tp_btf, preallocated map, one busy thread per CPU");
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
    let first = sample(&mut source, proc.pid(), &truth);
    writeln!(proc.0.stdin.as_ref().unwrap(), "go").unwrap();
    let thread_ns: i64 = wait_for(&mut stdout, "done").parse().unwrap();
    // pthread_join returns when the thread clears its tid, a moment before the
    // kernel unlists it: wait for it to be gone from /proc before the second sample.
    let started = Instant::now();
    while std::fs::read_dir(&task_dir).unwrap().count() > tasks_before {
        assert!(started.elapsed() < Duration::from_secs(2), "the burning thread never went away");
        std::thread::sleep(Duration::from_millis(1));
    }
    let last = sample(&mut source, proc.pid(), &truth);
    assert!(thread_ns > 200_000_000, "the thread burned only {thread_ns} ns");
    let measured = last.source - first.source;
    assert!(measured >= thread_ns - EBPF_BOUND_NS, "the exited thread's {thread_ns} ns are missing");
    let counted = Interval { first, last, steal: steal_ns() - steal0 };
    counted.assert_within(EBPF_BOUND_NS + counted.steal, "tp_btf, exited thread");
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

/// What the agent logs while a test runs on this thread.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> CapturedLog {
        self.clone()
    }
}

impl CapturedLog {
    /// Logs everything at info and above of this thread into the capture, until the
    /// guard goes.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A map of 8 entries on a host with many more processes is full from the start,
/// and stays full (its entries are long-lived processes' from the prefill): a busy
/// loop started now gets no entry, and both read paths (the task iterator's
/// listing and the /proc scan's `cumulative_ns`) give its /proc time, within the
/// test's own readings of /proc/PID/stat around each; the program counted the
/// switch-ins it lost, and the full map is logged once over many readings.
#[test]
fn ebpf_processes_a_full_map_cannot_hold_read_their_proc_time_and_it_is_logged_once() {
    let _serial = serial();
    let log = CapturedLog::default();
    let _logging = log.install();
    let capacity = 8;
    let Some(mut source) = loaded_or_skip(ebpf::load_with_capacity(AttachKind::BtfTracePoint, capacity)) else {
        return;
    };
    assert!(live_pids().len() > 2 * capacity as usize, "the host has too few processes to fill the map");
    let busy = busy_loop();
    let pid = busy.pid();
    let tick_ns = 1_000_000_000 / procfs::ticks_per_second();
    let mut last = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let before = stat_ticks(pid) * tick_ns;
        let records = listed(&mut source);
        let after = stat_ticks(pid) * tick_ns;
        let listed_ns = records.iter().find(|r| r.tgid == pid).expect("the busy loop is listed").cpu_ns;
        assert!((before..=after).contains(&listed_ns), "listed {listed_ns} ns, /proc said {before}..={after}");
        let ticks = stat_ticks(pid);
        let mut out = Vec::new();
        source.cumulative_ns(&[ScannedCpu { pid, ticks }], &mut out).unwrap();
        assert_eq!(out, [ticks * tick_ns], "the /proc scan's reading is its /proc time");
        assert!(listed_ns >= last, "never goes back: {listed_ns} after {last}");
        last = out[0];
    }
    assert!(!source.is_tracked(pid).unwrap(), "the full map took the busy loop");
    assert!(source.error_counts().unwrap().map_full > 0, "the program counted nothing lost");
    assert!(source.map_full_episode_open());
    let text = log.text();
    assert_eq!(text.matches("eBPF process map full").count(), 1, "one line per episode:\n{text}");
    assert!(!text.contains("has room again"), "{text}");
    // The readings above are compared with /proc's: a loop that hardly ran
    // compared little.
    if last < 500_000_000 {
        let needs = format!("a CPU to spare: the busy loop ran {last} ns of about a second, too little to compare");
        testkit::skip::skip(&testkit::skip::current_test(), &needs);
    }
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

/// Waits (up to 10 s) until `pid` sleeps with its resident pages unchanged over
/// 50 ms: a fixed pause was too short in an emulated guest, where `sleep` was
/// still faulting its pages in 50 ms after it started (62 pages listed, 63 in
/// /proc a moment later, under TCG).
fn settle_asleep(pid: u32) {
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        Some((after_name.chars().next()?, stat_fields(pid)?.1[24 - 3]))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let now = state(pid);
        if matches!(now, Some(('S', _))) && now == last {
            return;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{pid} did not settle asleep: {last:?}");
}

/// One pass of the task iterator, through the agent's own call.
fn listed(source: &mut EbpfCpuTime) -> Vec<ProcessRecord> {
    let mut records = Vec::new();
    source.read_processes(&mut records).expect("the iterator is loaded").unwrap();
    records
}

/// Every listed process's start time is in ns since boot, whichever path gave it:
/// the iterator's own (to the ns) and /proc's for the pids the iterator skips (in
/// ticks, converted) both lie within a tick of /proc/PID/stat's `starttime`.
#[test]
fn ebpf_listed_start_times_are_ns_since_boot_for_every_process() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let tick_ns = 1_000_000_000 / procfs::ticks_per_second();
    let records = listed(&mut source);
    let mut compared = 0;
    for record in &records {
        // Field 22, `starttime`: clock ticks after boot.
        let Some((_, fields)) = stat_fields(record.tgid) else { continue };
        let proc_ns = fields[22 - 3] * tick_ns;
        let difference = record.start_time_ns.abs_diff(proc_ns);
        assert!(
            difference < tick_ns,
            "pid {}: {} ns listed, /proc says {proc_ns} ns",
            record.tgid,
            record.start_time_ns
        );
        compared += 1;
    }
    assert!(compared > records.len() / 2, "only {compared} of {} records compared", records.len());
    assert!(records.iter().any(|r| r.tgid == 1), "pid 1 is listed (through /proc where the iterator skips it)");
}

#[test]
fn ebpf_process_iterator_lists_what_proc_lists() {
    let _serial = serial();
    let Some(mut source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    let sleeper = Proc(Command::new("sleep").arg("30").spawn().unwrap());
    settle_asleep(sleeper.pid());
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
    let Some(source) = load_or_skip(AttachKind::BtfTracePoint) else { return };
    assert_iterator_matches_the_kernel(source, "task iterator, one busy thread per CPU");
}

/// As on kernels before 5.19: the iterator leaves each process's per-CPU sum to
/// the agent (`CPU_NS_UNSUMMED`), which reads the entry.
#[test]
fn ebpf_process_iterator_summed_in_user_space_matches_the_kernel() {
    let _serial = serial();
    let Some(source) = loaded_or_skip(ebpf::load_summing_in_user_space()) else { return };
    assert_iterator_matches_the_kernel(source, "task iterator, sums in user space, one busy thread per CPU");
}

fn assert_iterator_matches_the_kernel(mut source: EbpfCpuTime, what: &str) {
    // One busy thread per CPU: the iterator must add up every CPU's copy.
    let busy = BusyThreads::start();
    let pid = busy.subject.proc.pid();
    // `listed` attaches `resync` as a client does: a thread whose switch-in the
    // tracepoint missed is counted from its repair.
    let read = || {
        let records = listed(&mut source);
        let record = records.iter().find(|r| r.tgid == pid).expect("the busy process is listed");
        record.cpu_ns as i64
    };
    let counted = Interval::measure(read, &|| busy.subject.clock.read());
    if !busy.ran_in_parallel(&counted) {
        return;
    }
    counted.assert_within(EBPF_BOUND_NS + counted.steal, what);
    assert_no_program_errors(&source);
}

#[test]
fn proc_source_busy_loop_matches_the_kernel_to_a_tick() {
    let _serial = serial();
    let mut source = ProcCpuTime::new(procfs::ticks_per_second());
    let busy = Subject::start("busy");
    let counted = interval(&mut source, busy.proc.pid(), &|| busy.clock.read());
    assert!(counted.truth() > 100_000_000, "the busy loop barely ran: {} ns", counted.truth());
    counted.assert_within(proc_bound_ns(), "/proc, busy loop");
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
        Ok("threads") => busy_threads(published_clocks()),
        _ => {}
    }
}

/// The parent's shared clock file, mapped: its first slot.
fn published_clock() -> SharedClockWriter {
    published_clocks().swap_remove(0)
}

/// Every slot of the parent's shared clock file, mapped.
fn published_clocks() -> Vec<SharedClockWriter> {
    let path = std::env::var_os("SOCKTOP_TEST_CLOCK").unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let slots = file.metadata().unwrap().len() as usize / 8;
    let base = map_shared(&file, slots);
    // SAFETY: each pointer stays inside the mapping, which is never unmapped.
    (0..slots).map(|slot| SharedClockWriter(unsafe { base.add(slot) })).collect()
}

struct SharedClockWriter(*mut i64);

// SAFETY: a pointer into a shared mapping that lives as long as the process; each
// writer is moved to the one thread that writes through it.
unsafe impl Send for SharedClockWriter {}

impl SharedClockWriter {
    /// Stores this process's CPU clock, exact because it is read by a thread of the
    /// process itself.
    fn publish(&self) {
        self.publish_clock(libc::CLOCK_PROCESS_CPUTIME_ID);
    }

    /// Stores the calling thread's CPU clock.
    fn publish_thread(&self) {
        self.publish_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    }

    fn publish_clock(&self, clock: libc::clockid_t) {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: out-parameter call; the slot is live and 8 bytes.
        unsafe {
            libc::clock_gettime(clock, &mut ts);
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

/// One busy thread per clock slot, forever, each publishing its own thread clock
/// (exact, being read by the thread itself; the process clock read by one thread
/// would leave out the others' time since their last tick).
fn busy_threads(clocks: Vec<SharedClockWriter>) {
    let threads: Vec<_> = clocks
        .into_iter()
        .map(|clock| {
            std::thread::spawn(move || {
                loop {
                    clock.publish_thread();
                }
            })
        })
        .collect();
    println!("ready {}", threads.len());
    for thread in threads {
        let _ = thread.join();
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
