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

use super::agent::{cpu_time_of, die_with_parent, free_port, rss_of};

/// A scrape as Prometheus sends it: it accepts gzip.
const SCRAPE_HEADERS: &str = "Accept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n";

/// One answer: its size on the wire, and its size as text.
pub struct Scraped {
    pub wire_bytes: usize,
}

/// `GET /metrics` of `port` on loopback, as Prometheus asks for it.
pub async fn scrape(port: u16, gzip: bool) -> anyhow::Result<Scraped> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let headers = if gzip { SCRAPE_HEADERS } else { "" };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await??;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header in the answer")?;
    let status = String::from_utf8_lossy(&raw[..split]).split_whitespace().nth(1).unwrap_or_default().to_owned();
    ensure!(status == "200", "scrape of port {port} answered {status}");
    Ok(Scraped { wire_bytes: raw.len() - split - 4 })
}

/// A Prometheus exporter from Debian's packages, killed when dropped.
pub struct Exporter {
    pub port: u16,
    child: Child,
}

impl Exporter {
    /// node_exporter with its default collectors.
    pub async fn node(logs: &Path) -> anyhow::Result<Exporter> {
        let port = free_port()?;
        let mut command = Command::new("prometheus-node-exporter");
        command.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        Self::start("node_exporter", command, port, logs).await
    }

    /// process-exporter with one group per command name, as our per-name series.
    pub async fn process(logs: &Path) -> anyhow::Result<Exporter> {
        let port = free_port()?;
        let config = logs.join("process-exporter.yml");
        std::fs::write(&config, "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n      - '.+'\n")?;
        let mut command = Command::new("prometheus-process-exporter");
        command.arg(format!("-web.listen-address=127.0.0.1:{port}")).arg(format!("-config.path={}", config.display()));
        Self::start("process-exporter", command, port, logs).await
    }

    async fn start(name: &'static str, mut command: Command, port: u16, logs: &Path) -> anyhow::Result<Exporter> {
        let log = File::create(logs.join(format!("{name}.log")))?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        die_with_parent(&mut command);
        let child = command.spawn().with_context(|| format!("starting {name} (Debian package prometheus-{name})"))?;
        let mut exporter = Exporter { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while scrape(port, false).await.is_err() {
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
