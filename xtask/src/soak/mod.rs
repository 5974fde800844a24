//! `cargo xtask soak`: many well-behaved clients polling at the real socktop
//! client's intervals (metrics every 500 ms, processes every 2 s, disks every
//! 5 s) for a fixed time, beside a stream of hostile clients (see [`hostile`]).
//! Loopback only, bounded in clients, time and hostile connections at once; it
//! stops by itself and its agent dies with it. Reports requests served,
//! well-behaved errors, latency percentiles, and the agent's RSS, open files and
//! CPU at start, peak and end; `--check` fails the run on any well-behaved error
//! or on descriptors or memory that did not come back near their start.

mod hostile;
mod polite;
mod watch;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::bench::agent::{build_ours, die_with_parent};
use watch::{Sample, Watch};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Well-behaved clients, all connected for the whole run.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Length of the run, in seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Hostile connections started per second.
    #[arg(long, default_value_t = 20)]
    hostile_per_second: u32,
    /// Hostile connections open at once, at most.
    #[arg(long, default_value_t = 100)]
    hostile_at_once: usize,
    /// The agent binary to soak [default: built here, in release].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Fail unless every well-behaved request was answered and the agent's open
    /// files and memory came back near where they started.
    #[arg(long)]
    check: bool,
}

/// The token the soak's agent wants; the hostile clients send others or none.
const TOKEN: &str = "soak-token";

/// How much the agent's resident memory may end above its start under `--check`.
/// An agent nobody watches drops its caches and hands free memory back; what
/// stays is what it knows of each process and the allocator's fragments
/// (measured: see docs/HARDENING.md).
const RSS_GROWTH_BOUND: u64 = 4 * 1024 * 1024;
/// Descriptors the agent may end with above its start: the few files the metrics
/// and disks collectors keep open once asked (stat, meminfo, net/dev, mountinfo).
const FD_GROWTH_BOUND: usize = 8;
/// How long after the run the agent may take to close every connection left
/// (the send timeout of a client that never reads is 30 s).
const CLOSE_WAIT: Duration = Duration::from_secs(60);

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    raise_open_files_limit(args.clients + args.hostile_at_once + 256)?;
    let binary = match &args.agent {
        Some(path) => path.clone(),
        None => build_ours(&crate::workspace_root())?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut agent = start_agent(&binary, &args)?;
    let report = runtime.block_on(soak(&args, agent.port, agent.child.id()));
    agent.stop();
    let report = report?;
    println!("{}", report.markdown(&args));
    if args.check {
        report.check()?;
    }
    Ok(())
}

struct SoakAgent {
    child: Child,
    port: u16,
}

impl SoakAgent {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(binary: &std::path::Path, args: &SoakArgs) -> anyhow::Result<SoakAgent> {
    // Room for every client and every hostile connection, so the hostile ones
    // reach the code they aim at rather than the 503 at the cap.
    let cap = args.clients + args.hostile_at_once + 64;
    let mut command = Command::new(binary);
    command
        .args(["--bind", "127.0.0.1", "--port", "0", "--max-connections", &cap.to_string()])
        .env("SOCKTOP_TOKEN", TOKEN)
        .envs([("SOCKTOP_AGENT_GPU", "0"), ("SOCKTOP_AGENT_TEMP", "0"), ("RUST_LOG", "warn")])
        .env_remove("SOCKTOP_ENABLE_SSL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    die_with_parent(&mut command);
    let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let mut agent = SoakAgent { child, port: 0 };
    // Logging at warn, the agent does not say which port the kernel gave it: the
    // kernel does.
    match testkit::listen::wait_for_listening_port(&mut agent.child, Duration::from_secs(30)) {
        Ok(port) => agent.port = port,
        Err(error) => {
            agent.stop();
            return Err(error).context("the agent did not listen");
        }
    }
    Ok(agent)
}

async fn soak(args: &SoakArgs, port: u16, pid: u32) -> anyhow::Result<Report> {
    let watch = Arc::new(Watch::new(pid));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = watch.sample()?;
    // The listener (and any socket the agent holds without clients).
    let idle_sockets = watch.sockets()?;
    let sampler = tokio::spawn(Arc::clone(&watch).run_every(Duration::from_millis(500)));
    let run_for = Duration::from_secs(args.seconds);
    let url = format!("ws://127.0.0.1:{port}/ws?token={TOKEN}");
    eprintln!("soak: {} well-behaved clients for {run_for:?}, {} hostile/s", args.clients, args.hostile_per_second);
    let started = Instant::now();
    let polite = tokio::spawn(polite::run(url, args.clients, run_for));
    let hostile = tokio::spawn(hostile::run(port, TOKEN, args.hostile_per_second, args.hostile_at_once, run_for));
    let polite = polite.await?;
    let hostile = hostile.await?;
    let elapsed = started.elapsed();
    // The agent closes what the clients left (a client that never reads, after its
    // send timeout); once it holds no connection it goes idle, and should be back
    // near where it started.
    let closing = Instant::now();
    while watch.sockets()? > idle_sockets && closing.elapsed() < CLOSE_WAIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed_after = closing.elapsed();
    sampler.abort();
    let end = watch.sample()?;
    Ok(Report { polite, hostile, start, peak: watch.peak(), end, elapsed, closed_after })
}

/// Raises this process's soft limit on open files to at least `wanted` (each
/// client holds a socket).
fn raise_open_files_limit(wanted: usize) -> anyhow::Result<()> {
    let limit = testkit::limits::raise_open_files_limit().context("raising the open-files limit")?;
    ensure!(limit >= wanted as u64, "the hard limit on open files ({limit}) is below {wanted}");
    Ok(())
}

struct Report {
    polite: polite::Outcome,
    hostile: hostile::Outcome,
    start: Sample,
    peak: Sample,
    end: Sample,
    elapsed: Duration,
    /// How long after the run the agent held its last client connection (plus 2 s).
    closed_after: Duration,
}

impl Report {
    fn markdown(&self, args: &SoakArgs) -> String {
        let p = &self.polite;
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let cpu = self.end.cpu.saturating_sub(self.start.cpu);
        let mut out = format!(
            "## Soak: {} well-behaved clients for {:.0} s, {} hostile connections/s\n\n",
            args.clients,
            self.elapsed.as_secs_f64(),
            args.hostile_per_second
        );
        out += "| well-behaved | value |\n|---|---|\n";
        out += &format!("| requests answered | {} |\n", p.answered);
        out += &format!("| errors | {} |\n", p.errors.len());
        for (name, latencies) in p.latencies() {
            out += &format!(
                "| {name} p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |\n",
                latencies.0 * 1e3,
                latencies.1 * 1e3,
                latencies.2 * 1e3
            );
        }
        out += "\n| agent | start | peak | end |\n|---|---|---|---|\n";
        out += &format!(
            "| RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            mib(self.start.rss),
            mib(self.peak.rss),
            mib(self.end.rss)
        );
        out += &format!("| open files | {} | {} | {} |\n", self.start.fds, self.peak.fds, self.end.fds);
        out += &format!(
            "\nEnd: {:.1} s after the run, once the agent held no client connection (at most {} s).\n",
            self.closed_after.as_secs_f64(),
            CLOSE_WAIT.as_secs()
        );
        out += &format!(
            "\nAgent CPU: {:.1} s over {:.0} s ({:.1}% of one core).\n\n",
            cpu.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            cpu.as_secs_f64() / self.elapsed.as_secs_f64() * 100.0
        );
        out += &self.hostile.markdown();
        for error in p.errors.iter().take(10) {
            out += &format!("\nwell-behaved error: {error}");
        }
        out
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.polite.errors.is_empty(), "{} well-behaved requests failed", self.polite.errors.len());
        ensure!(self.polite.answered > 0, "no request was answered");
        ensure!(
            self.end.fds <= self.start.fds + FD_GROWTH_BOUND,
            "open files went from {} to {} (bound +{FD_GROWTH_BOUND})",
            self.start.fds,
            self.end.fds
        );
        ensure!(
            self.end.rss <= self.start.rss + RSS_GROWTH_BOUND,
            "RSS went from {} to {} bytes (bound +{RSS_GROWTH_BOUND})",
            self.start.rss,
            self.end.rss
        );
        Ok(())
    }
}
