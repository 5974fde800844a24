//! What the CPU-time programs cost: enables the kernel's BPF run-time statistics
//! (`kernel.bpf_stats_enabled`, through BPF_ENABLE_STATS), attaches the programs,
//! drives context switches with two threads ping-ponging a byte through pipes, and
//! prints the programs' average run time and the switch rate.
//!
//! Usage: `cargo xtask ebpf-cost [--seconds N]` (root).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use socktop_agent::cputime::ebpf;

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    // Statistics stay on while this descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time stats")?;
    let mut source = ebpf::load().context("loading the eBPF programs")?;
    // Measure the state while a client reads: `resync` attached too.
    source.resume_resync().context("attaching resync")?;
    let before = source.program_stats()?;
    let switches_before = context_switches()?;
    let started = Instant::now();
    let round_trips = ping_pong(Duration::from_secs(seconds))?;
    let elapsed = started.elapsed().as_secs_f64();
    let switches = context_switches()? - switches_before;
    let after = source.program_stats()?;
    println!("attached: {:?}", source.attach_kind());
    println!("load: {round_trips} ping-pong round trips in {elapsed:.2} s");
    println!("context switches: {switches} ({:.0}/s, all CPUs)", switches as f64 / elapsed);
    for ((name, b), (_, a)) in before.iter().zip(after.iter()) {
        let runs = a.run_count - b.run_count;
        let ns = (a.run_time - b.run_time).as_nanos() as f64;
        println!("{name}: {runs} runs, {:.1} ns per run", ns / runs.max(1) as f64);
    }
    Ok(())
}

/// Two threads bouncing one byte over a socket pair until `duration` is up; each
/// hop blocks the sender and wakes the receiver, so a switch on each side.
fn ping_pong(duration: Duration) -> anyhow::Result<u64> {
    let (mut left, mut right) = UnixStream::pair()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let echo = scope.spawn(|| -> std::io::Result<()> {
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

/// The `ctxt` line of /proc/stat (proc(5)): context switches since boot, all CPUs.
fn context_switches() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find_map(|l| l.strip_prefix("ctxt ")).context("no ctxt in /proc/stat")?;
    Ok(line.trim().parse()?)
}
