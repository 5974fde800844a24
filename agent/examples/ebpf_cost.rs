//! What the CPU-time programs cost: enables the kernel's BPF run-time statistics
//! (`kernel.bpf_stats_enabled`, through BPF_ENABLE_STATS), attaches the programs,
//! drives context switches by ping-ponging a byte between two threads, then between
//! two processes, then process exits with a shell loop running `/bin/true`, and
//! prints the programs' average run time and the switch rate. Under the exits the
//! ring of exit records is drained as the agent drains it, so every exit pays for a
//! written record, not for a full ring's refusal; the records read and lost are
//! printed.
//!
//! Usage: `cargo xtask ebpf-cost [--seconds N]` (root).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use socktop_agent::cputime::ebpf;
use socktop_agent::host::clock::HostClock;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some(ECHO_ARG) {
        return echo(std::io::stdin().lock(), std::io::stdout().lock()).map_err(Into::into);
    }
    let seconds: u64 = first.map(|s| s.parse()).transpose()?.unwrap_or(5);
    // Statistics stay on while this descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time stats")?;
    let proc_root = std::path::Path::new("/proc");
    let clock = HostClock::from_proc(proc_root).context("reading the host's clock")?;
    let mut source = ebpf::load(proc_root, clock).context("loading the eBPF programs")?;
    // Measure the state while a client reads: `resync` attached too.
    source.resume_resync().context("attaching resync")?;
    println!("attached: {:?}", source.attach_kind());
    let duration = Duration::from_secs(seconds);
    measure(&mut source, "two threads of one process", |_| ping_pong_threads(duration, None))?;
    // Pinned apart, every switch is to or from the idle task: the dearest kind.
    let allowed = allowed_cpus()?;
    if let [first, second, ..] = allowed[..] {
        let load = |_: &mut _| ping_pong_threads(duration, Some((first, second)));
        measure(&mut source, "two threads of one process, one on each of two CPUs", load)?;
        set_affinity(&allowed)?;
    }
    measure(&mut source, "two processes", |_| ping_pong_processes(duration))?;
    let mut exits = ExitRecords::default();
    measure(&mut source, "process exits", |source| fork_loop(source, duration, &mut exits))?;
    println!("  exit records: {} read, {} lost (ring full)", exits.read, exits.lost);
    Ok(())
}

/// How often the fork loop's exit records are drained: well before the ring fills
/// (it holds some 9,000 records; the loop ends a few thousand processes a second).
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// A shell running `/bin/true` back to back for `duration`: a process exit each
/// time, for the `sched_process_free` program's cost per exit, with exit records on
/// as while a client reads, and drained meanwhile into `exits`. Returns the number
/// of processes run.
fn fork_loop(source: &mut ebpf::EbpfCpuTime, duration: Duration, exits: &mut ExitRecords) -> anyhow::Result<u64> {
    let script = format!("n=0; while [ $SECONDS -lt {} ]; do /bin/true; n=$((n+1)); done; echo $n", duration.as_secs());
    let lost_before = source.error_counts()?.exit_lost;
    let mut shell =
        Command::new("bash").args(["-c", &script]).stdout(Stdio::piped()).spawn().context("starting the fork loop")?;
    while shell.try_wait()?.is_none() {
        std::thread::sleep(DRAIN_EVERY);
        source.take_exit_records(|_| exits.read += 1);
    }
    // The last exits reach the ring an RCU grace period after their reaping.
    std::thread::sleep(DRAIN_EVERY);
    source.take_exit_records(|_| exits.read += 1);
    exits.lost = source.error_counts()?.exit_lost - lost_before;
    let mut count = String::new();
    shell.stdout.take().context("the fork loop's stdout")?.read_to_string(&mut count)?;
    count.trim().parse().context("reading the fork loop's count")
}

/// Exit records the fork loop's processes produced.
#[derive(Default)]
struct ExitRecords {
    read: u64,
    /// Refused by a full ring (`ERR_EXIT_LOST`).
    lost: u64,
}

/// Runs `load` and prints the switch rate and the programs' cost while it ran.
fn measure(
    source: &mut ebpf::EbpfCpuTime,
    label: &str,
    load: impl FnOnce(&mut ebpf::EbpfCpuTime) -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let before = source.program_stats()?;
    let switches_before = context_switches()?;
    let started = Instant::now();
    let round_trips = load(source)?;
    let elapsed = started.elapsed().as_secs_f64();
    let switches = context_switches()? - switches_before;
    let after = source.program_stats()?;
    println!("load ({label}): {round_trips} round trips (or processes) in {elapsed:.2} s");
    println!("  context switches: {switches} ({:.0}/s, all CPUs)", switches as f64 / elapsed);
    for ((name, b), (_, a)) in before.iter().zip(after.iter()) {
        let runs = a.run_count - b.run_count;
        let ns = (a.run_time - b.run_time).as_nanos() as f64;
        println!("  {name}: {runs} runs, {:.1} ns per run", ns / runs.max(1) as f64);
    }
    Ok(())
}

/// Argument that makes this program the echoing side of `ping_pong_processes`.
const ECHO_ARG: &str = "--echo";

/// Sends back every byte it reads until end of input.
fn echo(mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let mut byte = [0u8];
    while input.read(&mut byte)? == 1 {
        output.write_all(&byte)?;
        output.flush()?;
    }
    Ok(())
}

/// This program and a child copy of it (`--echo`) bouncing one byte over pipes:
/// every switch leaves one process for another (or for idle).
fn ping_pong_processes(duration: Duration) -> anyhow::Result<u64> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(ECHO_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the echo process")?;
    let mut to_child = child.stdin.take().context("child stdin")?;
    let mut from_child = child.stdout.take().context("child stdout")?;
    let mut trips = 0u64;
    let deadline = Instant::now() + duration;
    let mut byte = [0u8];
    while Instant::now() < deadline {
        to_child.write_all(&byte)?;
        from_child.read_exact(&mut byte)?;
        trips += 1;
    }
    drop(to_child);
    child.wait()?;
    Ok(trips)
}

/// Two threads bouncing one byte over a socket pair until `duration` is up; each
/// hop blocks the sender and wakes the receiver, so a switch on each side. With
/// `pinned`, the calling thread runs on the first CPU and the echoing one on the
/// second (the caller restores its own affinity).
fn ping_pong_threads(duration: Duration, pinned: Option<(usize, usize)>) -> anyhow::Result<u64> {
    let (mut left, mut right) = UnixStream::pair()?;
    let stop = AtomicBool::new(false);
    if let Some((mine, _)) = pinned {
        set_affinity(&[mine])?;
    }
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| -> std::io::Result<()> {
            if let Some((_, echo_cpu)) = pinned {
                set_affinity(&[echo_cpu])?;
            }
            let mut byte = [0u8];
            while right.read(&mut byte)? == 1 {
                right.write_all(&byte)?;
            }
            Ok(())
        });
        let mut trips = 0u64;
        let deadline = Instant::now() + duration;
        let mut byte = [0u8];
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            left.write_all(&byte)?;
            left.read_exact(&mut byte)?;
            trips += 1;
        }
        left.shutdown(std::net::Shutdown::Both)?;
        stop.store(true, Ordering::Relaxed);
        echo.join().map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        Ok(trips)
    })
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Lets the calling thread run on `cpus` only.
fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET ignores indices past
    // CPU_SETSIZE; sched_setaffinity only reads it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `ctxt` line of /proc/stat (proc(5)): context switches since boot, all CPUs.
fn context_switches() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find_map(|l| l.strip_prefix("ctxt ")).context("no ctxt in /proc/stat")?;
    Ok(line.trim().parse()?)
}
