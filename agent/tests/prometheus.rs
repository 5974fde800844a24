//! `GET /metrics` end to end: the text passes Debian's `promtool check metrics`,
//! values match the kernel's own counters, the token and gzip are honoured, and a
//! real Prometheus server scraping three agents, each on a host of its own (a
//! network namespace with its own address), finds a busy loop and a fork loop on
//! the host that runs them, at the CPU time the kernel says they used.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::fleet::{Fleet, Prometheus, http_get, named_program};
use e2e::socktop_connector::connect_to_socktop_agent;
use e2e::{Agent, Workload, client, host, sysfs};

/// The scrape text and the parsed samples (`name{labels}` -> value).
fn scrape(agent: &Agent, path: &str, headers: &[(&str, &str)]) -> (String, BTreeMap<String, f64>) {
    let response = http_get(&agent.address(), path, headers).expect("scrape");
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let text = String::from_utf8(response.body).expect("UTF-8");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.parse().expect("a number")))
        .collect();
    (text, samples)
}

/// `promtool check metrics` of a scrape: its exit status (0 clean, 3 lint
/// findings, 1 unparsable) and the findings.
fn promtool_check(text: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    child.stdin.take().expect("promtool's stdin").write_all(text.as_bytes()).expect("writing to promtool");
    let output = child.wait_with_output().expect("promtool's verdict");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), said)
}

/// The memory series keep node_exporter's names, which promtool's lint flags for
/// their camelCase (it flags node_exporter 1.5's own output the same way).
const NODE_EXPORTER_CAMEL_CASE: [&str; 7] = [
    "node_memory_MemTotal_bytes",
    "node_memory_MemFree_bytes",
    "node_memory_MemAvailable_bytes",
    "node_memory_Buffers_bytes",
    "node_memory_Cached_bytes",
    "node_memory_SwapTotal_bytes",
    "node_memory_SwapFree_bytes",
];

/// `promtool check metrics` parses the scrape and flags nothing but node_exporter's
/// own camelCase names. Without promtool that part of `test` is skipped.
fn assert_promtool_finds_nothing_of_ours(test: &str, text: &str) {
    let what = format!("{test} (its promtool check)");
    if testkit::skip::needs_program(&what, "promtool", &["--version"], "prometheus").is_none() {
        return;
    }
    let (status, said) = promtool_check(text);
    assert!(matches!(status, Some(0 | 3)), "promtool could not parse the scrape ({status:?}): {said}\n{text}");
    for finding in said.lines() {
        let camel = finding.strip_suffix(" metric names should be written in 'snake_case' not 'camelCase'");
        assert!(
            camel.is_some_and(|name| NODE_EXPORTER_CAMEL_CASE.contains(&name)),
            "promtool check metrics: {finding}\n{text}"
        );
    }
}

/// The `cpuN` line of /proc/stat: (user ticks, idle ticks).
fn proc_stat_cpu0() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu0 ")).expect("a cpu0 line");
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().expect("ticks")).collect();
    (fields[0], fields[3])
}

#[test]
fn the_scrape_passes_promtool_and_matches_the_kernel() {
    let agent = Agent::start(&[], &[]).unwrap();
    let before = proc_stat_cpu0();
    let (text, samples) = scrape(&agent, "/metrics", &[]);
    let after = proc_stat_cpu0();

    assert_promtool_finds_nothing_of_ours("the_scrape_passes_promtool_and_matches_the_kernel", &text);

    assert_eq!(samples["node_memory_MemTotal_bytes"], host::mem_total() as f64);
    let user = samples[r#"node_cpu_seconds_total{cpu="0",mode="user"}"#];
    assert!((before.0 as f64 / 100.0..=after.0 as f64 / 100.0).contains(&user), "{user} vs {before:?}..{after:?}");
    let idle = samples[r#"node_cpu_seconds_total{cpu="0",mode="idle"}"#];
    assert!((before.1 as f64 / 100.0..=after.1 as f64 / 100.0).contains(&idle), "{idle} vs {before:?}..{after:?}");
    let cpus = samples.keys().filter(|k| k.starts_with("node_cpu_seconds_total{") && k.contains("mode=\"idle\""));
    assert_eq!(cpus.count(), host::cpus());
    assert!(samples.contains_key(r#"node_network_receive_bytes_total{device="lo"}"#), "{text}");
    assert!(samples.keys().any(|k| k.starts_with("node_filesystem_size_bytes{") && k.contains("mountpoint=\"/\"")));
    // This test process is alive under its own name, with at least its own memory.
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    let processes = samples[&format!("socktop_comm_processes{{comm=\"{}\"}}", me.trim())];
    assert!(processes >= 1.0, "{processes}");
    let source = samples.keys().find(|k| k.starts_with("socktop_agent_cpu_source{")).expect("cpu source series");
    assert!(source.contains("source=\"ebpf\"") || source.contains("source=\"proc\""), "{source}");
}

/// This machine may have no hwmon device at all (a VM), so the sensors are a
/// fixture sysfs tree; the labels expected are node_exporter 1.5's for these paths.
#[test]
fn hwmon_temperatures_keep_node_exporters_chip_and_sensor_labels() {
    let sys = tempfile::tempdir().unwrap();
    let coretemp = [("name", "coretemp\n"), ("temp1_input", "61000\n"), ("temp1_label", "Package id 0\n")];
    sysfs::fake_hwmon(sys.path(), "devices/platform/coretemp.0", "hwmon3", &coretemp);
    let nvme =
        [("name", "nvme\n"), ("temp1_input", "38850\n"), ("temp1_label", "Composite\n"), ("temp2_input", "41850\n")];
    sysfs::fake_hwmon(sys.path(), "devices/pci0000:00/0000:00:01.3/0000:01:00.0/nvme/nvme0", "hwmon1", &nvme);
    let agent = Agent::start(&["--sys-root", sys.path().to_str().unwrap()], &[]).unwrap();
    let (text, samples) = scrape(&agent, "/metrics", &[]);
    assert_promtool_finds_nothing_of_ours("hwmon_temperatures_keep_node_exporters_chip_and_sensor_labels", &text);
    let hwmon: BTreeMap<&str, f64> =
        samples.iter().filter(|(k, _)| k.starts_with("node_hwmon_")).map(|(k, v)| (k.as_str(), *v)).collect();
    let expected = [
        (r#"node_hwmon_chip_names{chip="nvme_nvme0",chip_name="nvme"}"#, 1.0),
        (r#"node_hwmon_chip_names{chip="platform_coretemp_0",chip_name="coretemp"}"#, 1.0),
        (r#"node_hwmon_sensor_label{chip="nvme_nvme0",sensor="temp1",label="Composite"}"#, 1.0),
        (r#"node_hwmon_sensor_label{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"}"#, 1.0),
        (r#"node_hwmon_temp_celsius{chip="nvme_nvme0",sensor="temp1"}"#, 38.85),
        (r#"node_hwmon_temp_celsius{chip="nvme_nvme0",sensor="temp2"}"#, 41.85),
        (r#"node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"}"#, 61.0),
    ];
    assert_eq!(hwmon, BTreeMap::from(expected), "{text}");
    // Read by the scrape itself: a new value shows once the metrics TTL has passed.
    std::fs::write(sys.path().join("class/hwmon/hwmon3/temp1_input"), "63500\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let (_, samples) = scrape(&agent, "/metrics", &[]);
    assert_eq!(samples[r#"node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"}"#], 63.5);
}

#[test]
fn the_token_is_required_as_a_query_or_a_bearer_header() {
    let agent = Agent::start(&[], &[("SOCKTOP_TOKEN", "s3 cret")]).unwrap();
    let status = |path: &str, headers: &[(&str, &str)]| http_get(&agent.address(), path, headers).unwrap().status;
    assert_eq!(status("/metrics", &[]), 401);
    assert_eq!(status("/metrics?token=wrong", &[]), 401);
    assert_eq!(status("/metrics", &[("Authorization", "Bearer wrong")]), 401);
    assert_eq!(status("/metrics?token=s3%20cret", &[]), 200);
    assert_eq!(status("/metrics", &[("Authorization", "Bearer s3 cret")]), 200);
    // The scheme's name is case-insensitive.
    assert_eq!(status("/metrics", &[("Authorization", "bearer s3 cret")]), 200);
    // A Bearer header is what is checked when one is sent.
    assert_eq!(status("/metrics?token=s3%20cret", &[("Authorization", "Bearer wrong")]), 401);
}

#[test]
fn the_scrape_is_gzipped_for_scrapers_that_accept_it() {
    let agent = Agent::start(&[], &[]).unwrap();
    let response = http_get(&agent.address(), "/metrics", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(response.headers.get("content-encoding").map(String::as_str), Some("gzip"));
    assert!(response.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&response.body[..]).read_to_string(&mut text).expect("gzip");
    assert!(text.contains("\nnode_memory_MemTotal_bytes "), "{text}");
    let plain = http_get(&agent.address(), "/metrics", &[]).unwrap();
    assert!(!plain.headers.contains_key("content-encoding"));
    assert!(response.body.len() * 2 < plain.body.len(), "{} vs {}", response.body.len(), plain.body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_leave_the_websocket_protocol_as_it_was() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.expect("connects");
    client::processes(&mut client).await.expect("processes before a scrape");
    let address = agent.address();
    for _ in 0..3 {
        let address = address.clone();
        let scraped = tokio::task::spawn_blocking(move || http_get(&address, "/metrics", &[])).await.unwrap();
        assert_eq!(scraped.unwrap().status, 200);
        let metrics = client::metrics(&mut client).await.expect("metrics decode");
        assert_eq!(metrics.mem_total, host::mem_total());
        let processes = client::processes(&mut client).await.expect("processes decode");
        assert!(processes.top_processes.iter().any(|p| p.pid == std::process::id()));
    }
    let status = tokio::task::spawn_blocking(move || http_get(&address, "/nope", &[]).unwrap().status).await;
    assert_eq!(status.unwrap(), 404);
}

/// utime + stime of the children a process has waited for, in clock ticks.
fn reaped_children_ticks(pid: u32) -> u64 {
    testkit::kernel::stat_times(pid).expect("cutime and cstime").reaped_children
}

/// The command prefix that gives a host a pid namespace (and /proc) of its own:
/// `unshare` as root, or inside a user namespace of its own where the kernel lets
/// an ordinary user make one; `None` where neither works here.
fn pid_namespace_launcher() -> Option<Vec<&'static str>> {
    let isolated = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let candidates: [&[&str]; 2] = [&[], &["--user", "--map-root-user"]];
    candidates.into_iter().find_map(|extra| {
        let mut launcher = isolated.to_vec();
        launcher.splice(1..1, extra.iter().copied());
        let works = Command::new(launcher[0])
            .args(&launcher[1..])
            .arg("true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        works.then_some(launcher)
    })
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// The kernel's CPU seconds of one process, read every 100 ms with the time.
struct Truth(Vec<(f64, f64)>);

impl Truth {
    /// Linear interpolation at `t` (Unix seconds).
    fn at(&self, t: f64) -> f64 {
        let after = self.0.iter().position(|&(at, _)| at >= t).unwrap_or(self.0.len() - 1).max(1);
        let ((t0, v0), (t1, v1)) = (self.0[after - 1], self.0[after]);
        v0 + (v1 - v0) * ((t - t0) / (t1 - t0)).clamp(0.0, 1.0)
    }
}

#[test]
fn a_real_prometheus_finds_each_hosts_own_processes() {
    const TEST: &str = "a_real_prometheus_finds_each_hosts_own_processes";
    if testkit::skip::needs_program(TEST, "prometheus", &["--version"], "prometheus").is_none() {
        return;
    }
    let (fleet, fallback) = Fleet::new(3);
    if let Some(reason) = &fallback {
        let what = format!("{TEST} (hosts in network namespaces of their own; it ran on loopback)");
        testkit::skip::skip(&what, &format!("root and `ip` (Debian package iproute2): {reason}"));
    }
    let pid_namespace = pid_namespace_launcher();
    if pid_namespace.is_none() {
        let what = format!("{TEST} (hosts 0 and 2 in pid namespaces of their own)");
        testkit::skip::skip(&what, "root or unprivileged user namespaces (`unshare`, Debian package util-linux)");
    }
    let names = tempfile::tempdir().unwrap();
    let busy_program = named_program(names.path(), "stpbusy", "/bin/sh").unwrap();
    let child_program = named_program(names.path(), "stpchild", "/bin/sh").unwrap();

    // Hosts 0 and 2 get a pid namespace of their own too, so their agents (on the
    // /proc source, which reads the namespace's own /proc) see only their own
    // processes; host 1 runs in the test's pid namespace and sees the workloads.
    let mut agents = Vec::new();
    for (index, host) in fleet.hosts.iter().enumerate() {
        let mut launcher = host.launcher();
        // Each scrape scans afresh, so a sample's time is its scan's time (with the
        // default TTL a scrape may render a scan up to 1 s old).
        let mut args = vec!["--processes-ttl-ms", "0"];
        if index != 1 {
            launcher.extend(pid_namespace.iter().flatten().map(|word| word.to_string()));
            args.extend(["--ebpf", "off"]);
        }
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        let port = if host.namespace.is_some() { 9100 } else { 0 };
        agents.push(Agent::start_via(&launcher, host.address, port, &args, &[]).expect("agent starts"));
    }
    let instances: Vec<String> = agents.iter().map(Agent::address).collect();
    let prometheus = Prometheus::start(&instances, Duration::from_secs(1), &[]).expect("prometheus starts");
    // The eBPF source records exits only while someone watches: from the first
    // scrape on. Counters start there anyway.
    let waiting = Instant::now();
    let all_up = || prometheus.targets().is_ok_and(|t| t.len() == 3 && t.iter().all(|(_, health, _)| health == "up"));
    while !all_up() && waiting.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Niced up so that it gets most of a CPU on a host busy with other work.
    let busy =
        Workload::run(Command::new("nice").args(["-n", "-10"]).arg(&busy_program).args(["-c", "while :; do :; done"]));
    // The fork loop: 20 short-lived children, each busy for some 20 ms on an
    // idle host, most of them born and gone between two scrapes.
    let fork_loop = format!(
        "for i in $(seq 20); do {} -c 'i=0; while [ $i -lt 10000 ]; do i=$((i+1)); done'; done; exec sleep 600",
        child_program.display()
    );
    let forker = Workload::run(Command::new("sh").args(["-c", &fork_loop]));

    let mut truth = Truth(Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        truth.0.push((unix_now(), host::cpu_ticks(busy.pid()) as f64 / 100.0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let forker_done = || std::fs::read_to_string(format!("/proc/{}/comm", forker.pid())).unwrap().trim() == "sleep";
    while !forker_done() && started.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let children_seconds = reaped_children_ticks(forker.pid()) as f64 / 100.0;
    // Two more scrapes after the last child.
    std::thread::sleep(Duration::from_millis(2500));

    let targets = prometheus.targets().unwrap();
    assert!(targets.iter().all(|(_, health, _)| health == "up"), "{targets:?}\n{}", prometheus.log());

    // The busy loop: only host 1 has it, at the CPU time the kernel counted.
    // Evaluated at the last kernel reading, so the window lies within them.
    let end = truth.0.last().unwrap().0;
    // Without pid namespaces every host sees the workloads: only host 1's series count.
    let on_host_1_unless_shared =
        |series: &e2e::fleet::Sample| pid_namespace.is_some() || series.labels.get("instance") == Some(&instances[1]);
    let range = prometheus.query_at("socktop_comm_cpu_seconds_total{comm=\"stpbusy\"}[10s]", Some(end)).unwrap();
    let range: Vec<_> = range.into_iter().filter(on_host_1_unless_shared).collect();
    assert_eq!(range.len(), 1, "one instance has the busy loop: {range:?}");
    assert_eq!(range[0].labels["instance"], instances[1]);
    let points = &range[0].points;
    let ((t0, v0), (t1, v1)) = (points[0], points[points.len() - 1]);
    let measured = (v1 - v0) / (t1 - t0);
    let kernel = (truth.at(t1) - truth.at(t0)) / (t1 - t0);
    let source = prometheus.query(&format!("socktop_agent_cpu_source{{instance=\"{}\"}}", instances[1])).unwrap();
    let source = source.first().map(|s| s.labels["source"].clone()).unwrap_or_default();
    eprintln!(
        "busy loop: {measured:.3} CPU through Prometheus ({source} source), {kernel:.3} CPU by the kernel's count"
    );
    assert!(kernel > 0.05, "the busy loop hardly ran ({kernel:.2} CPU): the host is overloaded");
    assert!((measured - kernel).abs() < 0.05, "Prometheus {measured:.3} CPU vs kernel {kernel:.3} CPU");
    let rate = prometheus.query_at("rate(socktop_comm_cpu_seconds_total{comm=\"stpbusy\"}[5s])", Some(end)).unwrap();
    let rate: Vec<_> = rate.into_iter().filter(on_host_1_unless_shared).collect();
    assert_eq!(rate.len(), 1);
    assert!((rate[0].value - kernel).abs() < 0.2, "rate() {} vs kernel {kernel:.3}", rate[0].value);
    for other in [0, 2].into_iter().filter(|_| pid_namespace.is_some()) {
        let own = format!("socktop_comm_processes{{instance=\"{}\"}}", instances[other]);
        let own = prometheus.query(&own).unwrap();
        assert!(!own.is_empty() && own.len() < 10, "host {other} sees only its own processes: {own:?}");
    }
    let busy_cpu = "sum by (instance) (rate(node_cpu_seconds_total{mode=\"user\"}[5s]))";
    let busy_cpu = prometheus.query_at(busy_cpu, Some(end)).unwrap();
    assert_eq!(busy_cpu.len(), 3, "{busy_cpu:?}");
    assert!(busy_cpu.iter().all(|s| s.value >= kernel / 2.0), "the busy loop shows in every host's CPU: {busy_cpu:?}");

    // The fork loop's children, summed under their name on host 1.
    assert!(forker_done(), "the fork loop did not finish in 40 s");
    let children = prometheus.query("socktop_comm_cpu_seconds_total{comm=\"stpchild\"}").unwrap();
    let children: Vec<_> = children.into_iter().filter(on_host_1_unless_shared).collect();
    let seen = children.iter().find(|s| s.labels["instance"] == instances[1]).map_or(0.0, |s| s.value);
    assert!(children.iter().all(|s| s.labels["instance"] == instances[1]), "{children:?}");
    eprintln!("fork loop: children used {children_seconds:.2} s of CPU (kernel); the agent counted {seen:.2} s");
    // Both figures are sums of clock-tick samples: 0.1 s allows for their rounding.
    assert!(seen <= children_seconds + 0.1, "counted more than the kernel: {seen} vs {children_seconds}");
    // With the eBPF source, every child's final time comes from its exit record,
    // also for children born and gone between two scrapes. With the /proc source
    // (an agent that could not load the program) only listed children count.
    if source != "ebpf" {
        let what = format!("{TEST} (the exit records of the eBPF source)");
        testkit::skip::skip(&what, &format!("root and a kernel with BTF (host 1 ran on the {source} source)"));
    }
    if source == "ebpf" {
        assert!(
            seen >= 0.8 * children_seconds - 0.1,
            "the exit records were not counted: {seen:.2} s of {children_seconds:.2} s"
        );
    }
}

/// The range of the `rate()` checked, in seconds.
const WINDOW: f64 = 5.0;

/// Prometheus 2's `rate()` of the counter samples `points` (time, value) of the
/// window `start..=end`: their increase over the span they cover, extrapolated
/// to the window's edges where the samples come close enough to them (within 1.1
/// average intervals; else by half an interval), and not before the counter's
/// zero, per second of the window. Scrape intervals vary on a loaded host, and
/// the extrapolation with them, so the expected rate follows the same rule.
fn extrapolated_rate(points: &[(f64, f64)], start: f64, end: f64) -> f64 {
    let ((first_t, first_v), (last_t, last_v)) = (points[0], points[points.len() - 1]);
    let increase = last_v - first_v;
    let sampled = last_t - first_t;
    let average = sampled / (points.len() - 1) as f64;
    let mut to_start = first_t - start;
    let mut to_end = end - last_t;
    if increase > 0.0 && first_v >= 0.0 {
        to_start = to_start.min(sampled * first_v / increase);
    }
    if to_start >= average * 1.1 {
        to_start = average / 2.0;
    }
    if to_end >= average * 1.1 {
        to_end = average / 2.0;
    }
    increase * (sampled + to_start + to_end) / sampled / (end - start)
}

/// With the default TTLs (a processes snapshot is reused for up to 1 s) and a 1 s
/// scrape interval, every scrape renders values as of itself: a busy loop's
/// `rate(...[5s])` agrees within 5% with the rate of the kernel's own counts at
/// the same sample stamps, at every evaluation, one a second over the last 20 s.
/// Rendering the cached snapshot instead made every other sample repeat the one
/// before, and that rate swing by up to half.
#[test]
fn rate_over_a_few_scrape_intervals_is_right_at_every_evaluation() {
    let agent = Agent::start(&[], &[]).unwrap();
    let prometheus = Prometheus::start(&[agent.address()], Duration::from_secs(1), &[]).expect("prometheus starts");
    let names = tempfile::tempdir().unwrap();
    let busy_program = named_program(names.path(), "stprate", "/bin/sh").unwrap();
    // Niced up so that it gets most of a CPU on a host busy with other work.
    let busy =
        Workload::run(Command::new("nice").args(["-n", "-10"]).arg(&busy_program).args(["-c", "while :; do :; done"]));
    // The kernel's count in ns (schedstat: the loop is one thread), every 50 ms.
    let mut truth = Truth(Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(28) {
        truth.0.push((unix_now(), host::on_cpu_ns(busy.pid()) as f64 / 1e9));
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = truth.0.last().unwrap().0;

    let series = "socktop_comm_cpu_seconds_total{comm=\"stprate\"}";
    let raw = prometheus.query_at(&format!("{series}[27s]"), Some(end)).unwrap();
    assert_eq!(raw.len(), 1, "{raw:?}\n{}", prometheus.log());
    let samples = &raw[0].points;
    // A subquery: the rate as a rule or a dashboard evaluates it, every second.
    let rates = prometheus.query_at(&format!("rate({series}[{WINDOW}s])[20s:1s]"), Some(end)).unwrap();
    assert_eq!(rates.len(), 1, "{rates:?}");
    let evaluations = &rates[0].points;
    assert!(evaluations.len() >= 19, "{evaluations:?}");
    let mut errors = Vec::new();
    for &(at, rate) in evaluations {
        // What rate() gives when every sample in the window is the kernel's count at
        // the sample's own stamp: any difference is the agent's values lagging
        // their stamps.
        let in_window: Vec<(f64, f64)> =
            samples.iter().filter(|(t, _)| *t >= at - WINDOW && *t <= at).map(|&(t, _)| (t, truth.at(t))).collect();
        // Two at least: on a loaded host a scrape may time out and leave a gap.
        assert!(in_window.len() >= 2, "at {at}: {in_window:?}\n{}", prometheus.log());
        let kernel = extrapolated_rate(&in_window, at - WINDOW, at);
        assert!(kernel > 0.05, "the busy loop hardly ran ({kernel:.2} CPU): the host is overloaded");
        errors.push((at, rate, kernel, (rate - kernel).abs() / kernel));
    }
    let shown: Vec<String> = errors
        .iter()
        .map(|(at, rate, kernel, e)| format!("{at}: {rate:.3} vs {kernel:.3} ({:.1}%)", e * 100.0))
        .collect();
    eprintln!("rate() over 5 s at a 1 s interval, against the kernel:\n{}", shown.join("\n"));
    let worst = errors.iter().map(|e| e.3).fold(0.0, f64::max);
    assert!(worst <= 0.05, "worst {:.1}% off the kernel's rate\n{samples:?}", worst * 100.0);
}
