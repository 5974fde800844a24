//! A small fleet on one machine for the Prometheus tests: hosts that each have
//! their own network namespace and address (a veth pair per host, made here and
//! removed on drop, panics included), a real Prometheus server on loopback that
//! scrapes them, and a plain HTTP/1.0 GET for its query API and `/metrics`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// Prefix of every namespace and interface this harness makes, followed by the
/// test process's pid, so a run can find what a killed run left behind.
const PREFIX: &str = "stpm";

/// Where one host of the fleet lives.
pub struct FleetHost {
    /// The namespace, or `None` for a host on loopback.
    pub namespace: Option<String>,
    /// The address its agent listens on, reachable from the test's namespace.
    pub address: IpAddr,
}

impl FleetHost {
    /// The command prefix that runs a program on this host.
    pub fn launcher(&self) -> Vec<String> {
        match &self.namespace {
            Some(name) => ["ip", "netns", "exec", name].map(String::from).to_vec(),
            None => Vec::new(),
        }
    }
}

/// Hosts in network namespaces, removed when dropped.
pub struct Fleet {
    pub hosts: Vec<FleetHost>,
    /// The host-side ends of the veth pairs.
    links: Vec<String>,
}

impl Fleet {
    /// `count` hosts, each in a namespace of its own with a veth pair to the
    /// test's namespace (10.213.X.4i+2 inside, .4i+1 outside). When namespaces
    /// cannot be made (not root, no `ip`), `count` hosts on loopback, and the
    /// reason.
    pub fn new(count: usize) -> (Fleet, Option<String>) {
        remove_leftovers();
        let mut fleet = Fleet { hosts: Vec::new(), links: Vec::new() };
        for index in 0..count {
            if let Err(e) = fleet.add_namespace(index) {
                drop(fleet);
                let hosts = (0..count).map(|_| FleetHost { namespace: None, address: Ipv4Addr::LOCALHOST.into() });
                return (Fleet { hosts: hosts.collect(), links: Vec::new() }, Some(format!("{e:#}")));
            }
        }
        (fleet, None)
    }

    fn add_namespace(&mut self, index: usize) -> anyhow::Result<()> {
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}n{index}");
        let outside = format!("{PREFIX}{pid}v{index}");
        let inside = format!("{PREFIX}{pid}p{index}");
        let subnet = pid % 250;
        let base = 4 * index as u32;
        let address = Ipv4Addr::new(10, 213, subnet as u8, (base + 2) as u8);
        run(&["ip", "netns", "add", &name])?;
        self.hosts.push(FleetHost { namespace: Some(name.clone()), address: address.into() });
        run(&["ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
        self.links.push(outside.clone());
        run(&["ip", "link", "set", &inside, "netns", &name])?;
        run(&["ip", "addr", "add", &format!("10.213.{subnet}.{}/30", base + 1), "dev", &outside])?;
        run(&["ip", "link", "set", &outside, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &name];
            all.extend_from_slice(args);
            run(&all)
        };
        in_ns(&["ip", "addr", "add", &format!("{address}/30"), "dev", &inside])?;
        in_ns(&["ip", "link", "set", &inside, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = quiet(&["ip", "link", "del", link]);
        }
        for name in self.hosts.iter().filter_map(|h| h.namespace.as_deref()) {
            let _ = quiet(&["ip", "netns", "del", name]);
        }
    }
}

/// Removes the namespaces and links of earlier runs that were killed before they
/// could clean up (their pid is gone).
fn remove_leftovers() {
    let listed = |args: &[&str]| -> String {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else { return false };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !Path::new("/proc").join(&pid).exists()
    };
    for line in listed(&["ip", "-o", "link", "show"]).lines() {
        let name = line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or_default().to_owned());
        if let Some(name) = name.filter(|n| stale(n)) {
            let _ = quiet(&["ip", "link", "del", &name]);
        }
    }
    for line in listed(&["ip", "netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if stale(name) {
            let _ = quiet(&["ip", "netns", "del", name]);
        }
    }
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    ensure!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    Ok(())
}

fn quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status()
}

/// A Prometheus server on loopback with its own temporary storage, killed when
/// dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    storage: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Debian's `prometheus` scraping `targets` (host:port) at `/metrics`
    /// every `interval`, with `params` added to each scrape's query (the token),
    /// and waits until it is ready.
    pub fn start(targets: &[String], interval: Duration, params: &[(&str, &str)]) -> anyhow::Result<Prometheus> {
        let storage = tempfile::tempdir()?;
        let config = storage.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets, interval, params))?;
        let log = std::fs::File::create(storage.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.path().join("data").display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (Debian package `prometheus`)")?;
        let mut server = Prometheus { child, port: 0, storage };
        let port = testkit::listen::wait_for_listening_port(&mut server.child, Duration::from_secs(30));
        server.port = port.with_context(|| format!("prometheus did not listen: {}", server.log()))?;
        let port = server.port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(&format!("127.0.0.1:{port}"), "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("prometheus did not become ready in 30 s: {}", server.log())
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.storage.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query through the HTTP API, evaluated now: each series'
    /// labels and value.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        self.query_at(promql, None)
    }

    /// The same, evaluated at `time` (Unix seconds) when given.
    pub fn query_at(&self, promql: &str, time: Option<f64>) -> anyhow::Result<Vec<Sample>> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(promql));
        if let Some(time) = time {
            path.push_str(&format!("&time={time:.3}"));
        }
        let response = http_get(&format!("127.0.0.1:{}", self.port), &path, &[])?;
        let json: serde_json::Value = serde_json::from_slice(&response.body).context("query answer is JSON")?;
        ensure!(json["status"] == "success", "query {promql:?} failed: {json}");
        let results = json["data"]["result"].as_array().context("a vector result")?;
        results
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .context("labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let number = |pair: &serde_json::Value| -> anyhow::Result<(f64, f64)> {
                    let at = pair[0].as_f64().context("a time")?;
                    Ok((at, pair[1].as_str().context("a value")?.parse().context("a number")?))
                };
                let points = match series["values"].as_array() {
                    Some(values) => values.iter().map(number).collect::<anyhow::Result<Vec<_>>>()?,
                    None => vec![number(&series["value"])?],
                };
                let value = points.last().context("a value")?.1;
                Ok(Sample { labels, value, points })
            })
            .collect()
    }

    /// The health of each scrape target: (instance, "up" / "down", last error).
    pub fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let response = http_get(&format!("127.0.0.1:{}", self.port), "/api/v1/targets", &[])?;
        let json: serde_json::Value = serde_json::from_slice(&response.body)?;
        let active = json["data"]["activeTargets"].as_array().context("active targets")?;
        Ok(active
            .iter()
            .map(|t| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (text(&t["labels"]["instance"]), text(&t["health"]), text(&t["lastError"]))
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series of a query result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    /// The value (of an instant vector), or the last one (of a range vector).
    pub value: f64,
    /// (Unix seconds, value): one for an instant vector, every sample in the range
    /// of a range vector.
    pub points: Vec<(f64, f64)>,
}

fn scrape_config(targets: &[String], interval: Duration, params: &[(&str, &str)]) -> String {
    let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let params: String = params.iter().map(|(k, v)| format!("      {k}: [\"{v}\"]\n")).collect();
    let seconds = interval.as_secs_f64();
    format!(
        "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n  evaluation_interval: {seconds}s\n\
         scrape_configs:\n  - job_name: socktop\n{}    static_configs:\n      - targets: [{}]\n",
        if params.is_empty() { String::new() } else { format!("    params:\n{params}") },
        quoted.join(", ")
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub use testkit::http::Response as HttpResponse;

/// `GET path` on `address` (host:port) over HTTP/1.0, with `headers` added.
pub fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    testkit::http::get(address, path, headers).with_context(|| format!("GET {path} from {address}"))
}

/// A program under a name of our choosing: the kernel names a process (its
/// `comm`) after the file it executes, so a symbolic link named `name` to
/// `target` gives a process that PromQL can find by `comm`.
pub fn named_program(dir: &Path, name: &str, target: &str) -> std::io::Result<PathBuf> {
    let link = dir.join(name);
    std::os::unix::fs::symlink(target, &link)?;
    Ok(link)
}
