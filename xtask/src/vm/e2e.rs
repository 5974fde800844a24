//! The agent end to end, run inside the guest (as root, or as a user holding only
//! CAP_BPF + CAP_PERFMON): started on loopback, `/healthz` must say the eBPF source
//! counts; a `get_processes` answer must come from the kernel's task iterator; and a
//! busy loop's CPU seconds on `/metrics` must be within 5% of its own
//! `/proc/PID/schedstat`. Each finding is printed as a `note:` line, which the guest
//! runner copies into the kernel's summary.
//!
//! Which path served the processes list is judged twice, independently: by the
//! agent's log (a fallback to /proc is always logged, at start-up or on the failing
//! request), and by the agent's own read syscalls during the request
//! (`/proc/PID/io`, `syscr`): the /proc path reads every process's stat file, at
//! least one read per process, while the iterator is read in a few large reads.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::bench::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// The agent binary to start.
    #[arg(long)]
    agent: PathBuf,
}

/// The bar for a busy loop's CPU seconds against its schedstat.
const METRICS_TOLERANCE: f64 = 0.05;
/// How long the busy loop runs before it is stopped and compared.
const BUSY_FOR: Duration = Duration::from_secs(3);
/// Loading the programs parses the kernel's BTF: seconds under TCG.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// One finding about a running agent, in words, or why it failed.
type Check = fn(&RunningAgent) -> anyhow::Result<String>;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let agent = RunningAgent::start(&args.agent)?;
    let checks: [(&str, Check); 3] =
        [("healthz", healthz), ("processes", processes_from_iterator), ("metrics", busy_loop_on_metrics)];
    let mut failed = Vec::new();
    for (name, check) in checks {
        match check(&agent) {
            Ok(finding) => println!("note: {name}: {finding}"),
            Err(error) => {
                println!("note: {name}: FAILED: {error:#}");
                failed.push(name);
            }
        }
    }
    for line in agent.log().iter().filter(|line| line.contains("cpu source") || line.contains("listed from /proc")) {
        println!("note: log: {}", without_timestamp(line));
    }
    drop(agent);
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// `/healthz`'s `cpu_source` is `ebpf`.
fn healthz(agent: &RunningAgent) -> anyhow::Result<String> {
    let body = http_get(agent.port, "/healthz")?;
    let info: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("parsing /healthz: {body}"))?;
    let source = info["cpu_source"].as_str().unwrap_or("absent");
    let reason = info["cpu_source_reason"].as_str().unwrap_or("");
    ensure!(source == "ebpf", "cpu_source {source}, reason: {reason}");
    Ok("cpu_source ebpf".to_owned())
}

/// A `get_processes` answer served by the task iterator, by the log and by the
/// agent's read syscalls.
fn processes_from_iterator(agent: &RunningAgent) -> anyhow::Result<String> {
    let processes = proc_pids().len();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (rows, reads) = runtime.block_on(async {
        let mut client = Client::connect(agent.port).await?;
        // The first answer also sets up the scan; the second is the steady state.
        client.processes().await?;
        let before = read_syscalls(agent.pid())?;
        let rows = client.processes().await?;
        let reads = read_syscalls(agent.pid())? - before;
        client.close().await;
        anyhow::Ok((rows.len(), reads))
    })?;
    ensure!(rows > 0, "an empty processes list");
    let fallback: Vec<String> = agent
        .log()
        .into_iter()
        .filter(|line| line.contains("listed from /proc") || line.contains("scanning /proc"))
        .map(|line| without_timestamp(&line).to_owned())
        .collect();
    let evidence = format!("{rows} rows, {reads} read syscalls for {processes} processes in /proc");
    ensure!(fallback.is_empty(), "the log says /proc: {} ({evidence})", fallback.join("; "));
    ensure!(reads < processes as u64 / 2, "as many reads as a /proc scan ({evidence})");
    Ok(format!("from the task iterator ({evidence})"))
}

/// A busy loop's CPU seconds on `/metrics` against its schedstat, read after it was
/// stopped, so neither moves between the two readings.
fn busy_loop_on_metrics(agent: &RunningAgent) -> anyhow::Result<String> {
    let mut busy = KilledOnDrop(Command::new("sh").args(["-c", "while :; do :; done"]).spawn()?);
    let pid = busy.0.id();
    std::thread::sleep(BUSY_FOR);
    // SAFETY: kill(2) on our own child's pid.
    ensure!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) } == 0, "stopping the busy loop");
    std::thread::sleep(Duration::from_millis(200));
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let truth_s = schedstat.split_whitespace().next().context("empty schedstat")?.parse::<f64>()? / 1e9;
    let metrics = http_get(agent.port, "/metrics")?;
    let measured_s = top_process_cpu_seconds(&metrics, pid)
        .with_context(|| format!("no socktop_top_process_cpu_seconds_total for pid {pid} on /metrics"))?;
    busy.kill();
    let error = (measured_s - truth_s) / truth_s;
    let finding = format!(
        "busy loop {measured_s:.4} s on /metrics, {truth_s:.4} s in schedstat: {:+.2}% (bound ±{:.0}%)",
        error * 100.0,
        METRICS_TOLERANCE * 100.0
    );
    ensure!(error.abs() <= METRICS_TOLERANCE, "{finding}");
    Ok(finding)
}

/// The value of `socktop_top_process_cpu_seconds_total` for `pid` in a scrape.
pub fn top_process_cpu_seconds(scrape: &str, pid: u32) -> Option<f64> {
    let label = format!("pid=\"{pid}\"");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("socktop_top_process_cpu_seconds_total{"))
        .filter_map(|rest| rest.split_once('}'))
        .find(|(labels, _)| labels.split(',').any(|one| one == label))
        .and_then(|(_, value)| value.trim().parse().ok())
}

/// The `syscr` line of `/proc/PID/io`: read syscalls of every thread, exited ones included.
fn read_syscalls(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|line| line.strip_prefix("syscr:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no syscr in /proc/PID/io")
}

fn proc_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// A log line without tracing's timestamp and level, for the summary.
fn without_timestamp(line: &str) -> &str {
    line.find(" INFO ").map_or(line, |at| line[at + 6..].trim_start())
}

/// One HTTP/1.1 GET on loopback; the body of a 200 answer.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no end of headers")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    Ok(body.to_owned())
}

struct KilledOnDrop(Child);

impl KilledOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

struct RunningAgent {
    child: KilledOnDrop,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningAgent {
    /// Starts the agent on an ephemeral loopback port, caches off, its log kept
    /// (and echoed), and waits until it listens.
    fn start(binary: &std::path::Path) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .args(["--bind", "127.0.0.1", "--port", "0", "--metrics-ttl-ms", "0", "--processes-ttl-ms", "0"])
            // Every process on /metrics with its pid, not the top 5 by CPU: on a busy
            // host the stopped busy loop is not among them.
            .args(["--prometheus-top-processes", "100000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in ["SOCKTOP_TOKEN", "SOCKTOP_ENABLE_SSL", "SOCKTOP_PORT", "SOCKTOP_AGENT_EBPF"] {
            command.env_remove(var);
        }
        let mut child = KilledOnDrop(command.spawn().with_context(|| format!("starting {}", binary.display()))?);
        let stderr = child.0.stderr.take().context("agent stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                println!("agent: {line}");
                if let Some(port) = testkit::listen::parse_listening_port(&line) {
                    let _ = port_tx.send(port);
                }
                sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line);
            }
        });
        let started = Instant::now();
        let port = port_rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| anyhow::anyhow!("the agent did not listen within {:?}", started.elapsed()))?;
        Ok(Self { child, port, log })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_process_is_found_by_its_pid_label() {
        let scrape = "# TYPE socktop_top_process_cpu_seconds_total counter\n\
            socktop_top_process_cpu_seconds_total{pid=\"12\",comm=\"sh\"} 3.25\n\
            socktop_top_process_cpu_seconds_total{pid=\"123\",comm=\"sh\"} 1.5\n";
        assert_eq!(top_process_cpu_seconds(scrape, 123), Some(1.5));
        assert_eq!(top_process_cpu_seconds(scrape, 12), Some(3.25));
        assert_eq!(top_process_cpu_seconds(scrape, 1), None);
    }
}
