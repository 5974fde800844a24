//! The checks run inside the guest (or on the host for `--kernel host`): the eBPF
//! precision and closure test executables with `SOCKTOP_REQUIRE_ALL=1`, and the
//! agent end to end ([`super::e2e`]), each as root and again as `nobody` holding
//! only CAP_BPF + CAP_PERFMON (setpriv, ambient capabilities, so they pass to the
//! agent and the tests' helpers). Every run's output goes to its own log in the
//! results folder, and one line per run to `summary.tsv`, which the host reads back:
//! vng's own exit status is not trusted to carry the guest's.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Where logs and summary.tsv go (shared read-write with the host).
    #[arg(long)]
    results: PathBuf,
    /// The `ebpf_cpu` integration-test executable of socktop_agent.
    #[arg(long)]
    ebpf_cpu: PathBuf,
    /// The `cpu_closure` integration-test executable of socktop_agent.
    #[arg(long)]
    cpu_closure: PathBuf,
    /// The agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// A run taking longer than this is killed and failed.
    #[arg(long, default_value_t = 600)]
    check_timeout_s: u64,
    /// The guest's CPUs are emulated (TCG): the tests get the settings measured for
    /// that (see `TCG_TEST_SETTINGS`).
    #[arg(long)]
    tcg: bool,
}

/// What the precision tests need under TCG, measured there (docs/EBPF.md, "Kernels in
/// VMs"): the host deschedules the emulated CPUs unseen by the guest (no steal time),
/// which moved 1 s eBPF readings by up to 3.2 ms on an idle host with the guest's TSC
/// trusted (boot.rs; the bound is 2 ms plus the steal seen), so 20 ms is added;
/// and the guest loses timer ticks meanwhile (a fork loop's machine busy time on
/// /proc/stat was 16 – 55% of the scheduler's own count), so the closure test takes
/// the scheduler's per-CPU run time as its truth instead.
const TCG_TEST_SETTINGS: [(&str, &str); 2] =
    [("SOCKTOP_TEST_EMULATED_CPU_SLACK_NS", "20000000"), ("SOCKTOP_TEST_BUSY_CLOCK", "schedstat")];

/// Tests of `ebpf_cpu` not run under TCG: the /proc source's precision is counted in
/// clock ticks, which an emulated guest loses (83 ms of a busy loop's 1.09 s missing
/// in one 6.1 run); it is no test of the kernel's eBPF support, and the host's run and
/// CI's own `cargo test` keep it.
const SKIPPED_UNDER_TCG: [&str; 1] = ["proc_source_busy_loop_matches_the_kernel_to_a_tick"];

/// The eBPF tests also run as the CAP_BPF + CAP_PERFMON user: one per program kind
/// (tp_btf switch with its repairs, its raw_tp twin, the task iterator, the exit
/// records), which is what the capabilities can change; root runs the whole file.
const EBPF_TESTS_WITH_CAPABILITIES: [&str; 4] = [
    "ebpf_busy_loop_started_before_loading_matches_the_kernel",
    "ebpf_raw_tracepoint_twin_matches_the_kernel",
    "ebpf_process_iterator_lists_what_proc_lists",
    "ebpf_entries_of_exited_processes_are_deleted_by_the_kernel",
];

/// Who runs a check.
#[derive(Clone, Copy)]
enum Identity {
    Root,
    /// `nobody` with CAP_BPF and CAP_PERFMON only, and RLIMIT_MEMLOCK lifted, as
    /// the packaged unit runs the agent (`LimitMEMLOCK=infinity`: before Linux 5.11
    /// BPF maps are charged to it, and 64 KiB holds none of ours).
    BpfPerfmon,
}

impl Identity {
    const ALL: [Identity; 2] = [Identity::Root, Identity::BpfPerfmon];

    fn name(self) -> &'static str {
        match self {
            Identity::Root => "root",
            Identity::BpfPerfmon => "bpf+perfmon",
        }
    }

    fn command(self, program: &Path) -> Command {
        match self {
            Identity::Root => Command::new(program),
            Identity::BpfPerfmon => {
                let mut command = Command::new("setpriv");
                command
                    .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
                    .args(["--inh-caps", "-all,+bpf,+perfmon", "--ambient-caps", "+bpf,+perfmon", "--bounding-set"])
                    .arg("-all,+bpf,+perfmon")
                    .arg(program);
                command
            }
        }
    }
}

/// What each check runs, with its arguments; `copies` are the binaries in a folder
/// every user can read.
struct Binaries {
    ebpf_cpu: PathBuf,
    cpu_closure: PathBuf,
    agent: PathBuf,
    xtask: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.results)?;
    // For the host, which names the functions in the registers it dumps should
    // the guest stall (boot.rs); addresses are fixed, the kernel booted nokaslr.
    if let Ok(symbols) = std::fs::read_to_string("/proc/kallsyms") {
        std::fs::write(args.results.join("kallsyms"), symbols)?;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    println!("vm-guest: kernel {kernel}, {} CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()));
    if args.tcg {
        println!("vm-guest: emulated CPUs: tests run with {TCG_TEST_SETTINGS:?}");
    }
    // The originals may sit under a folder only root can enter (a clone in root's home).
    let copies = tempfile_dir()?;
    let copy = |from: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let to = copies.join(name);
        std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        Ok(to)
    };
    let binaries = Binaries {
        ebpf_cpu: copy(&args.ebpf_cpu, "ebpf_cpu")?,
        cpu_closure: copy(&args.cpu_closure, "cpu_closure")?,
        agent: copy(&args.agent, "socktop_agent")?,
        xtask: copy(&std::env::current_exe()?, "xtask")?,
    };
    lift_memlock_limit();
    let kernel_log = KernelLog::open();
    let mut summary = File::create(args.results.join("summary.tsv"))?;
    writeln!(summary, "kernel\t{kernel}")?;
    let mut failures = 0;
    let test_harness = vec!["--test-threads", "1", "--nocapture"];
    let mut ebpf_as_root = test_harness.clone();
    if args.tcg {
        ebpf_as_root.extend(SKIPPED_UNDER_TCG.iter().flat_map(|test| ["--skip", test]));
    }
    let mut ebpf_with_capabilities = test_harness.clone();
    ebpf_with_capabilities.push("--exact");
    ebpf_with_capabilities.extend(EBPF_TESTS_WITH_CAPABILITIES);
    let e2e = vec!["vm-guest-e2e", "--agent", path_str(&binaries.agent)?];
    for identity in Identity::ALL {
        let checks: Vec<(&str, &Path, &Vec<&str>)> = match identity {
            Identity::Root => vec![
                ("ebpf_cpu", &binaries.ebpf_cpu, &ebpf_as_root),
                ("cpu_closure", &binaries.cpu_closure, &test_harness),
                ("e2e", &binaries.xtask, &e2e),
            ],
            Identity::BpfPerfmon => {
                vec![("ebpf_cpu", &binaries.ebpf_cpu, &ebpf_with_capabilities), ("e2e", &binaries.xtask, &e2e)]
            }
        };
        for (check, program, check_args) in checks {
            let log_path = args.results.join(format!("{check}-{}.log", identity.name().replace('+', "-")));
            let mut command = identity.command(program);
            command.args(check_args).env("SOCKTOP_REQUIRE_ALL", "1").current_dir(&copies);
            if args.tcg {
                command.envs(TCG_TEST_SETTINGS);
            }
            let started = Instant::now();
            let outcome = run_logged(command, &log_path, Duration::from_secs(args.check_timeout_s));
            let seconds = started.elapsed().as_secs_f64();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let verdict = match &outcome {
                Ok(true) => "PASS",
                Ok(false) => "FAIL",
                Err(_) => "ERROR",
            };
            if verdict != "PASS" {
                failures += 1;
            }
            let mut notes = notes_of(&log);
            if let Err(error) = outcome {
                notes.insert(0, format!("{error:#}"));
            }
            println!("vm-guest: {verdict} {check} as {} in {seconds:.1} s", identity.name());
            for note in &notes {
                println!("vm-guest:     {note}");
            }
            writeln!(summary, "{verdict}\t{check}\t{}\t{seconds:.1}\t{}", identity.name(), notes.join(" | "))?;
        }
    }
    // A check can pass while the kernel complained about the programs it loaded
    // (a WARN with a stack trace, a lockup or RCU stall report): that fails too.
    let complaints = match &kernel_log {
        Ok(log) => log.complaints(),
        Err(error) => vec![format!("the kernel log could not be read: {error}")],
    };
    let verdict = if complaints.is_empty() { "PASS" } else { "FAIL" };
    if !complaints.is_empty() {
        failures += 1;
    }
    println!("vm-guest: {verdict} kernel log ({} complaints)", complaints.len());
    for complaint in &complaints {
        println!("vm-guest:     {complaint}");
    }
    writeln!(summary, "{verdict}\tkernel log\troot\t0\t{}", complaints.join(" | "))?;
    writeln!(summary, "done\t{failures}")?;
    let _ = std::fs::remove_dir_all(&copies);
    anyhow::ensure!(failures == 0, "{failures} checks failed on {kernel}");
    Ok(())
}

/// Lifts RLIMIT_MEMLOCK for this process and so for every check, as the packaged
/// unit does for the agent (`LimitMEMLOCK=infinity`). Where even root may not (a
/// container without CAP_SYS_RESOURCE) the limit stays, which kernels from 5.11 on,
/// whose BPF maps are charged to memory cgroups instead, do not mind.
fn lift_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        println!("vm-guest: RLIMIT_MEMLOCK stays as it is: {}", std::io::Error::last_os_error());
    }
}

/// The lines of a check's log worth a summary: the e2e check's `note:` lines, a
/// test's failures and their panic messages, and the test harness's result line.
fn notes_of(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut notes = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if let Some(note) = line.strip_prefix("note: ") {
            // The panic handler's own `note: run with RUST_BACKTRACE=1` is no finding.
            if !note.contains("RUST_BACKTRACE") {
                notes.push(note.to_owned());
            }
        } else if line.starts_with("test result:") {
            notes.push((*line).to_owned());
        } else if line.contains("panicked at") {
            let message = lines.get(at + 1).copied().unwrap_or("");
            notes.push(format!("{} {}", line.trim_start_matches("thread ").trim(), message.trim()));
        }
    }
    notes
}

/// Runs `command` with its output in `log_path`, killed (its whole process group)
/// after `timeout`, once what its processes were doing is in the log. Whether it
/// exited with 0.
fn run_logged(mut command: Command, log_path: &Path, timeout: Duration) -> anyhow::Result<bool> {
    let log = File::create(log_path)?;
    let mut report = log.try_clone()?;
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    let mut child = command.spawn().context("spawning")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.success());
        }
        if started.elapsed() > timeout {
            let group = child.id() as i32;
            let _ = writeln!(report, "\n--- killed after {timeout:?}; its processes:\n{}", describe_group(group));
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            anyhow::bail!("killed after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What each thread of process group `group` is doing: state, CPU ticks, where
/// it waits, and its kernel stack (readable as root), so a check that hung says
/// whether it spun or waited, and on what.
fn describe_group(group: i32) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for pid in entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the name: state, parent, process group, ...
        let after_name: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        if after_name.get(2).and_then(|pgrp| pgrp.parse::<i32>().ok()) != Some(group) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.filter_map(|entry| entry.ok()) {
            let dir = task.path();
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            let stat = read("stat");
            let (name, rest) = stat.split_once(" (").and_then(|(_, rest)| rest.rsplit_once(')')).unwrap_or(("?", ""));
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |at: usize| fields.get(at).copied().unwrap_or("?");
            // state, utime and stime (ticks), the CPU it last ran on.
            out.push_str(&format!(
                "pid {pid} tid {} ({name}) state {} utime {} stime {} cpu {} wchan {}\n{}",
                task.file_name().to_string_lossy(),
                field(0),
                field(11),
                field(12),
                field(36),
                read("wchan"),
                read("stack"),
            ));
        }
    }
    out
}

/// The kernel's log from the start of the checks on (`/dev/kmsg`, read without
/// waiting), where a WARN, BUG, lockup or stall report means the kernel objected to
/// what the programs did even where every check passed.
struct KernelLog(File);

impl KernelLog {
    fn open() -> std::io::Result<Self> {
        use std::io::{Seek as _, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut kmsg = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")?;
        // Only what is logged from here on.
        kmsg.seek(SeekFrom::End(0))?;
        Ok(Self(kmsg))
    }

    /// The messages logged since `open` that report a kernel problem.
    fn complaints(&self) -> Vec<String> {
        let mut complaints = Vec::new();
        let mut record = vec![0u8; 8192];
        loop {
            // One record per read; EAGAIN once none is left, EPIPE when older
            // records were overwritten (the next read goes on).
            match std::io::Read::read(&mut &self.0, &mut record) {
                Ok(0) => break,
                Ok(length) => {
                    let text = String::from_utf8_lossy(&record[..length]);
                    let message = text.split_once(';').map_or(&*text, |(_, message)| message).lines().next();
                    if let Some(message) = message.filter(|message| is_complaint(message)) {
                        complaints.push(message.trim().to_owned());
                    }
                }
                Err(error) if error.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        complaints
    }
}

/// A kernel message that reports a problem rather than an event.
fn is_complaint(message: &str) -> bool {
    const MARKS: [&str; 7] =
        ["WARNING:", "BUG:", "Oops", "soft lockup", "hard LOCKUP", "detected stall", "uses run-time allocation"];
    MARKS.iter().any(|mark| message.contains(mark))
}

/// A fresh folder every user can enter and read, for the binaries' copies.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("socktop-vm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_complaints_are_told_from_events() {
        // Lines of a 5.10 guest's log, the first three a warning about a program.
        for complaint in [
            "trace type BPF program uses run-time allocation",
            "WARNING: CPU: 0 PID: 108 at kernel/bpf/verifier.c:10519 bpf_check+0x2f8e/0x3470",
            "rcu: INFO: rcu_sched self-detected stall on CPU",
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [cpu_closure:212]",
        ] {
            assert!(is_complaint(complaint), "{complaint}");
        }
        for event in ["rcu: Hierarchical RCU implementation.", "virtme-ng-init: script exited with code 0"] {
            assert!(!is_complaint(event), "{event}");
        }
    }

    #[test]
    fn a_hung_group_is_described_thread_by_thread() {
        let mut sleeper = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let described = describe_group(sleeper.id() as i32);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let first = described.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("pid {} tid {} (sleep) state S", sleeper.id(), sleeper.id())),
            "{described}"
        );
    }
}
