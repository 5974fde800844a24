//! Prometheus scrape cost, side by side on the same host and crowd: our agent's
//! `GET /metrics` against what a fleet would otherwise run for the same series,
//! node_exporter (default collectors) plus process-exporter (one group per
//! command name), both from Debian's packages. Each exporter's CPU time per scrape
//! is read from its own `/proc/PID/stat`, so the scraper's cost does not count.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::agent::{Agent, Binaries, Caches, Sensors, Which, cpu_time_of, die_with_parent, resident_parts_of, rss_of};
use super::client::Kind;
use super::cpu::cpu_per_request;
use super::crowd::Crowd;
use super::report::{Row, Section, Table};
use super::{MIB, Plan, SETTLE, machine, progress, thousands};

/// How long after its last scrape and client the agent is idle again.
const IDLE_AGAIN: Duration = Duration::from_secs(8);

/// Extra idle processes for the scrape comparison (the measured anchors).
const SCRAPE_CROWD: usize = 1_000;

/// CPU per Prometheus scrape of our agent against node_exporter plus
/// process-exporter on the same host and crowd, the bytes of one scrape, and our
/// idle RSS before and after the scrapes. The "original" column of this table
/// holds the two exporters together.
pub(super) async fn run(plan: &Plan, binaries: &Binaries) -> anyhow::Result<Table> {
    let mut table = Table { other: "node_exporter + process-exporter".to_owned(), ..Table::default() };
    progress(format_args!("starting {} idle processes", thousands(SCRAPE_CROWD)));
    let _crowd = Crowd::spawn(SCRAPE_CROWD)?;
    let ours = Agent::start(binaries, Which::Ours, Caches::Off, Sensors::Off).await?;
    let node = Exporter::node(&binaries.logs).await?;
    let process = Exporter::process(&binaries.logs).await?;
    tokio::time::sleep(SETTLE * 2).await;
    let rss_before = ours.rss_bytes()? as f64 / MIB;
    let parts_before = resident_parts_of(ours.pid())?;
    let processes = machine::process_count();
    let (mut ours_cpu, mut node_cpu, mut process_cpu, mut theirs_cpu, mut ours_processes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ours_bytes, mut theirs_bytes) = (Vec::new(), Vec::new());
    for repeat in 0..plan.repeats {
        progress(format_args!("CPU per scrape, {processes} processes, {}/{}", repeat + 1, plan.repeats));
        let budget = plan.cpu_budget;
        let mine = cpu_per_scrape(ours.pid(), ours.port, budget, plan.cpu_min_requests).await?;
        let n = cpu_per_scrape(node.pid(), node.port, budget, plan.cpu_min_requests).await?;
        // process-exporter takes about half a second a scrape here: a few suffice.
        let p = cpu_per_scrape(process.pid(), process.port, budget, 3).await?;
        let list = cpu_per_request(&ours, Kind::Processes, budget, plan.cpu_min_requests).await?;
        ours_cpu.push(mine.cpu_us / 1000.0);
        node_cpu.push(n.cpu_us / 1000.0);
        process_cpu.push(p.cpu_us / 1000.0);
        theirs_cpu.push((n.cpu_us + p.cpu_us) / 1000.0);
        ours_processes.push(list.cpu_us / 1000.0);
        ours_bytes.push(mine.wire_bytes as f64);
        theirs_bytes.push((n.wire_bytes + p.wire_bytes) as f64);
    }
    // A scrape keeps the agent watched for at least 5 s after it (its scrape
    // lease); the figure is of the agent idle again, as the one before.
    tokio::time::sleep(IDLE_AGAIN).await;
    let rss_after = ours.rss_bytes()? as f64 / MIB;
    let parts_after = resident_parts_of(ours.pid())?;
    let host = format!("{} processes (host + {} idle)", thousands(processes), thousands(SCRAPE_CROWD));
    let rows = [
        (format!("CPU per scrape, uncached, {host}"), "ms", &ours_cpu, &theirs_cpu),
        (format!("… node_exporter alone (default collectors), {host}"), "ms", &ours_cpu, &node_cpu),
        (format!("… process-exporter alone (a group per comm), {host}"), "ms", &ours_cpu, &process_cpu),
        (format!("… ours: CPU per uncached `get_processes`, {host}"), "ms", &ours_cpu, &ours_processes),
        (format!("one scrape on the wire (gzip accepted), {host}"), "bytes", &ours_bytes, &theirs_bytes),
    ];
    for (label, unit, mine, theirs) in rows {
        table.push(Row::single(Section::Cpu, label, unit, mine, theirs));
    }
    table.push(Row::single(
        Section::Memory,
        "RSS idle, before / after the scrapes",
        "MiB",
        &[rss_before],
        &[rss_after],
    ));
    let theirs_rss = (node.rss_bytes()? + process.rss_bytes()?) as f64 / MIB;
    let growth = |before: u64, after: u64| (after as f64 - before as f64) / MIB;
    table.notes.push(format!(
        "Ours: idle RSS {rss_before:.2} MiB before the scrapes, {rss_after:.2} MiB after, idle again (growth {:.2} MiB: \
         {:.2} anonymous, {:.2} file-backed; that row's second column is ours after, not an exporter). The two \
         exporters' RSS after: {theirs_rss:.1} MiB together. Our CPU source: {}.",
        rss_after - rss_before,
        growth(parts_before.anonymous, parts_after.anonymous),
        growth(parts_before.file, parts_after.file),
        ours.cpu_source().as_deref().unwrap_or("unknown")
    ));
    Ok(table)
}

/// A scrape as Prometheus sends it: it accepts gzip.
pub(crate) const SCRAPE_HEADERS: &[(&str, &str)] =
    &[("Accept", "text/plain;version=0.0.4"), ("Accept-Encoding", "gzip")];

/// One answer: its size on the wire, and its size as text.
pub struct Scraped {
    pub wire_bytes: usize,
}

/// `GET /metrics` of `port` on loopback, as Prometheus asks for it.
pub async fn scrape(port: u16, gzip: bool) -> anyhow::Result<Scraped> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let headers: &[(&str, &str)] = if gzip { SCRAPE_HEADERS } else { &[] };
    let request = testkit::http::request(&format!("127.0.0.1:{port}"), "/metrics", headers);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await??;
    let answer = testkit::http::parse_response(&raw).context("not an HTTP answer")?;
    ensure!(answer.status == 200, "scrape of port {port} answered {}", answer.status);
    Ok(Scraped { wire_bytes: answer.wire_bytes })
}

/// A Prometheus exporter from Debian's packages, killed when dropped.
pub struct Exporter {
    pub port: u16,
    child: Child,
}

impl Exporter {
    /// node_exporter with its default collectors.
    pub async fn node(logs: &Path) -> anyhow::Result<Exporter> {
        let mut command = Command::new("prometheus-node-exporter");
        command.arg("--web.listen-address=127.0.0.1:0");
        Self::start("node_exporter", command, logs).await
    }

    /// process-exporter with one group per command name, as our per-name series.
    pub async fn process(logs: &Path) -> anyhow::Result<Exporter> {
        let config = logs.join("process-exporter.yml");
        std::fs::write(&config, "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n      - '.+'\n")?;
        let mut command = Command::new("prometheus-process-exporter");
        command.arg("-web.listen-address=127.0.0.1:0").arg(format!("-config.path={}", config.display()));
        Self::start("process-exporter", command, logs).await
    }

    /// Starts an exporter told to listen on port 0 and waits until it answers on
    /// the port the kernel gave it, asking the kernel which one that is.
    async fn start(name: &'static str, mut command: Command, logs: &Path) -> anyhow::Result<Exporter> {
        let log = File::create(logs.join(format!("{name}.log")))?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().with_context(|| format!("starting {name} (Debian package prometheus-{name})"))?;
        let mut exporter = Exporter { port: 0, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while exporter.port == 0 || scrape(exporter.port, false).await.is_err() {
            if exporter.port == 0 {
                exporter.port = testkit::listen::only_port(exporter.pid())?.unwrap_or(0);
            }
            if let Some(status) = exporter.child.try_wait()? {
                bail!("{name} exited with {status}; see .bench/logs/{name}.log");
            }
            ensure!(Instant::now() < deadline, "{name} did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(exporter)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_of(self.pid())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What scraping one server cost it.
pub struct PerScrape {
    /// Its CPU time per scrape, in µs.
    pub cpu_us: f64,
    /// Bytes of the last answer on the wire (gzipped when the server does).
    pub wire_bytes: usize,
}

/// Scrapes `port` one scrape after another for at least `budget` and
/// `min_scrapes` (never past 4× the budget), after two unmeasured ones, and
/// divides the CPU time of process `pid` over them.
pub async fn cpu_per_scrape(pid: u32, port: u16, budget: Duration, min_scrapes: usize) -> anyhow::Result<PerScrape> {
    for _ in 0..2 {
        scrape(port, true).await?;
    }
    let cpu_before = cpu_time_of(pid)?;
    let started = Instant::now();
    let (mut count, mut wire_bytes) = (0usize, 0);
    while (started.elapsed() < budget || count < min_scrapes) && started.elapsed() < budget * 4 {
        wire_bytes = scrape(port, true).await?.wire_bytes;
        count += 1;
    }
    let cpu = cpu_time_of(pid)?.saturating_sub(cpu_before);
    Ok(PerScrape { cpu_us: cpu.as_secs_f64() * 1e6 / count.max(1) as f64, wire_bytes })
}
