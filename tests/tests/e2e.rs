//! End-to-end tests: the real binary, the real socktop client library, and the
//! host's own figures as ground truth.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::ws::{self, Answer, Ws, ask, decode, next_frame};
use e2e::{Agent, Workload, client, host, sysfs};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use socktop_connector::{connect_to_socktop_agent, connect_to_socktop_agent_with_tls};
use tokio_tungstenite::tungstenite::Message;

// Parts of this one test binary kept in their own files.
#[path = "e2e/agent_info.rs"]
mod agent_info;
#[path = "e2e/capabilities.rs"]
mod capabilities;
#[path = "e2e/examples.rs"]
mod examples;

async fn raw_client(agent: &Agent) -> Ws {
    ws::connect(&agent.ws_url()).await
}

fn df_total_bytes(path: &str) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=size", path]).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df size")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_decodes_every_answer_and_values_match_the_host() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.expect("connector connects");

    let metrics = client::metrics(&mut client).await.expect("metrics decode");
    assert_eq!(metrics.mem_total, host::mem_total());
    assert!(metrics.mem_used > 0 && metrics.mem_used < metrics.mem_total);
    assert_eq!(metrics.cpu_per_core.len(), host::cpus());
    assert!((0.0..=100.0).contains(&metrics.cpu_total));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(metrics.hostname, hostname.trim());
    assert!(metrics.networks.iter().any(|n| n.name == "lo"), "{:?}", metrics.networks);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(now_ms.abs_diff(metrics.sampled_at_ms.expect("sampled_at_ms")) < 10_000);

    let disks = client::disks(&mut client).await.expect("disks decode");
    assert!(disks.iter().all(|d| d.available <= d.total));
    let root_total = df_total_bytes("/");
    assert!(disks.iter().any(|d| d.total == root_total), "no disk of / ({root_total} B) in {disks:?}");

    let processes = client::processes(&mut client).await.expect("processes decode");
    let pids = host::pids();
    assert!(processes.process_count.abs_diff(pids.len()) <= 10, "{} vs {}", processes.process_count, pids.len());
    assert_eq!(processes.process_count, processes.top_processes.len());
    let me = processes.top_processes.iter().find(|p| p.pid == std::process::id()).expect("test process listed");
    assert!(me.mem_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_json_requests_get_the_same_answers() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;

    let Answer::Json(metrics) = ask(&mut ws, r#"{"type":"metrics"}"#).await else { panic!("metrics is JSON") };
    for field in ["cpu_total", "cpu_per_core", "mem_total", "mem_used", "swap_total", "swap_used", "hostname"] {
        assert!(metrics.get(field).is_some(), "missing {field} in {metrics}");
    }
    assert_eq!(metrics["mem_total"].as_u64(), Some(host::mem_total()));
    assert!(metrics["disks"].is_array() && metrics["top_processes"].is_array());

    let Answer::Json(disks) = ask(&mut ws, r#"{"type":"disks"}"#).await else { panic!("disks is JSON") };
    assert!(!disks.as_array().expect("disks array").is_empty());

    let Answer::Processes(processes) = ask(&mut ws, r#"{"type":"processes"}"#).await else { panic!("protobuf") };
    assert!(processes.rows.iter().any(|p| p.pid == std::process::id()));
}

/// Whether this run must prove the eBPF path (CI sets it; it runs as root).
fn ebpf_required() -> bool {
    std::env::var("SOCKTOP_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// Starts the agent with the CPU source asked for (`on` or `off`) and checks the
/// processes list against the scheduler's run time of a busy loop and a sleeper.
async fn busy_and_idle_processes_match_the_kernel(ebpf: &str) {
    let agent = Agent::start(&["--ebpf", ebpf], &[("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).expect("agent starts");
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    if ebpf == "off" {
        assert!(source.contains("cpu source: proc"), "{source}");
    } else if !source.contains("cpu source: ebpf") {
        assert!(!ebpf_required(), "eBPF required but: {source}");
        eprintln!("skipping the eBPF half: {source}");
        return;
    }
    assert_busy_and_idle_match_the_kernel(&agent).await;
}

/// Checks an agent's processes list (collected on every request) against the
/// scheduler's run time of a busy loop and a sleeper started here.
async fn assert_busy_and_idle_match_the_kernel(agent: &Agent) {
    let (busy, idle) = (Workload::busy_loop(), Workload::idle());
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.expect("client connects");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ns_before = host::on_cpu_ns(busy.pid());
    let started = std::time::Instant::now();
    client::processes(&mut client).await.expect("processes answer");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let processes = client::processes(&mut client).await.expect("processes answer");
    let wall = started.elapsed();
    let busy_ns = host::on_cpu_ns(busy.pid()) - ns_before;

    // Ground truth: the scheduler's own run time over (about) the same window, as
    // a share of the whole machine.
    let truth = busy_ns as f64 / wall.as_nanos() as f64 / host::cpus() as f64 * 100.0;
    let usage = |pid| processes.top_processes.iter().find(|p| p.pid == pid).expect("listed").cpu_usage as f64;
    assert!((usage(busy.pid()) - truth).abs() < 5.0, "busy {} vs kernel {truth:.1}", usage(busy.pid()));
    assert!(usage(busy.pid()) > 20.0, "a busy loop must show: {}", usage(busy.pid()));
    assert!(usage(idle.pid()) < 0.5, "sleep shows {}", usage(idle.pid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero() {
    busy_and_idle_processes_match_the_kernel("off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero() {
    busy_and_idle_processes_match_the_kernel("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_agent_says_why_it_falls_back_to_proc_and_serves() {
    let (agent, _dir) = Agent::start_unprivileged(&[]).unwrap();
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    assert!(source.contains("cpu source: proc (not permitted"), "{source}");
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    assert_eq!(client::metrics(&mut client).await.unwrap().mem_total, host::mem_total());
    assert!(client::processes(&mut client).await.unwrap().process_count > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_answers_and_the_connection_stays_usable() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;

    for bad in ["{\"type\":", "hello", r#"{"type":"pie"}"#, "get_process_metrics:abc"] {
        let Answer::Json(error) = ask(&mut ws, bad).await else { panic!("error answers are JSON") };
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{error}");
        assert_eq!(error["request"].as_str(), Some(bad));
    }
    ws.send(Message::binary(vec![0u8, 159, 146, 150])).await.unwrap();
    let Answer::Json(error) = decode(next_frame(&mut ws).await) else { panic!() };
    assert!(error["error"].as_str().unwrap().contains("binary"), "{error}");

    let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!() };
    assert!(metrics.get("cpu_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_its_own_connection() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut bystander = raw_client(&agent).await;
    let mut attacker = raw_client(&agent).await;
    let _ = attacker.send(Message::text("x".repeat(16 * 1024 * 1024))).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match attacker.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "oversized frame did not close the connection");
    let Answer::Json(metrics) = ask(&mut bystander, "get_metrics").await else { panic!() };
    assert!(metrics.get("cpu_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let agent =
        Agent::start(&[], &[("SOCKTOP_AGENT_METRICS_TTL_MS", "0"), ("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).unwrap();
    let mut ws = raw_client(&agent).await;
    let kinds = ["get_processes", "get_metrics", "get_disks", "nonsense"];
    let requests: Vec<&str> = kinds.iter().cycle().take(40).copied().collect();
    for request in &requests {
        ws.send(Message::text(*request)).await.unwrap();
    }
    for request in requests {
        let answer = decode(next_frame(&mut ws).await);
        let ok = match (request, &answer) {
            ("get_processes", Answer::Processes(p)) => !p.rows.is_empty(),
            ("get_metrics", Answer::Json(j)) => j.get("cpu_total").is_some(),
            ("get_disks", Answer::Json(j)) => j.is_array(),
            ("nonsense", Answer::Json(j)) => j.get("error").is_some(),
            _ => false,
        };
        assert!(ok, "{request} got {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_speaks_first_and_answers_pings() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;
    let unsolicited = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await;
    assert!(unsolicited.is_err(), "server sent {unsolicited:?}");
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_block_other_clients() {
    let agent = Agent::start(&[], &[]).unwrap();
    let address = format!("127.0.0.1:{}", agent.port);
    let _silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    client::metrics(&mut client).await.expect("served while others hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let agent = Agent::start(&[], &[("SOCKTOP_TOKEN", "s3cret")]).unwrap();
    let wrong = connect_to_socktop_agent(format!("{}?token=nope", agent.ws_url())).await;
    assert!(wrong.is_err(), "wrong token accepted");
    let missing = connect_to_socktop_agent(agent.ws_url()).await;
    assert!(missing.is_err(), "missing token accepted");
    let mut right = connect_to_socktop_agent(format!("{}?token=s3cret", agent.ws_url())).await.unwrap();
    client::metrics(&mut right).await.unwrap();
    let rejections = agent.log().iter().filter(|l| l.contains("wrong or missing token")).count();
    assert_eq!(rejections, 1, "the rejection is logged once at info level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_uses_one_pinned_certificate_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let env = [("SOCKTOP_ENABLE_SSL", "1"), ("XDG_DATA_HOME", data.path().to_str().unwrap())];
    let cert = data.path().join("socktop_agent/tls/cert.pem");
    let fingerprint = |agent: &Agent| {
        let line = agent.wait_for_log("SHA-256", Duration::from_secs(5)).expect("fingerprint logged");
        line.rsplit("SHA-256 ").next().unwrap().trim_end_matches(')').to_owned()
    };

    let first = Agent::start(&[], &env).unwrap();
    let first_print = fingerprint(&first);
    let key_mode = std::fs::metadata(data.path().join("socktop_agent/tls/key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let url = format!("wss://localhost:{}/ws", first.port);
    let mut client = connect_to_socktop_agent_with_tls(&url, cert.to_str().unwrap(), true).await.unwrap();
    assert_eq!(client::metrics(&mut client).await.unwrap().mem_total, host::mem_total());
    drop(first);

    let second = Agent::start(&[], &env).unwrap();
    assert_eq!(fingerprint(&second), first_print);
    let url = format!("wss://127.0.0.1:{}/ws", second.port);
    let mut client = connect_to_socktop_agent_with_tls(&url, cert.to_str().unwrap(), false).await.unwrap();
    client::disks(&mut client).await.unwrap();
    let plain = connect_to_socktop_agent(format!("ws://127.0.0.1:{}/ws", second.port)).await;
    assert!(plain.is_err(), "plain ws must not work on a TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_with_a_client_connected() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    client::metrics(&mut client).await.unwrap();
    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_idle_agent_uses_no_cpu() {
    let agent = Agent::start(&[], &[]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = host::cpu_ticks(agent.pid());
    std::thread::sleep(Duration::from_secs(5));
    let after = host::cpu_ticks(agent.pid());
    assert_eq!(after - before, 0, "idle agent used {} ticks in 5 s", after - before);
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_last_client_leaves_the_per_process_files_are_closed() {
    // The /proc source keeps each process's stat file open between scans.
    let agent = Agent::start(&["--ebpf", "off"], &[("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).unwrap();
    let sleepers: Vec<_> = (0..100).map(|_| Workload::idle()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_descriptors(agent.pid());
    let mut client = raw_client(&agent).await;
    for _ in 0..2 {
        assert!(matches!(ask(&mut client, "get_processes").await, Answer::Processes(_)));
    }
    let watched = open_descriptors(agent.pid());
    assert!(watched >= before + sleepers.len(), "kept files while watched: {before} -> {watched}");
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut after = open_descriptors(agent.pid());
    while after > before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = open_descriptors(agent.pid());
    }
    assert!(after <= before, "descriptors: {before} before the client, {watched} while watched, {after} after");
}

#[test]
fn help_and_version_print_and_exit() {
    let help = std::process::Command::new(e2e::agent_binary()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--port", "--bind", "--enableSSL", "--token", "--ebpf"] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    let version = std::process::Command::new(e2e::agent_binary()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_details_of_a_busy_child_match_the_kernel() {
    let agent = Agent::start(&["--ebpf", "off"], &[("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).unwrap();
    let busy = Workload::busy_loop();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    e2e::per_pid::process_metrics(&mut client, busy.pid()).await.unwrap();
    let ticks_before = host::cpu_ticks(busy.pid());
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = e2e::per_pid::process_metrics(&mut client, busy.pid()).await.unwrap();
    let truth = (host::cpu_ticks(busy.pid()) - ticks_before) as f64
        / 100.0
        / started.elapsed().as_secs_f64()
        / host::cpus() as f64
        * 100.0;

    let detail = answer.process;
    assert_eq!(detail.pid, busy.pid());
    assert_eq!(detail.parent_pid, Some(std::process::id()));
    assert_eq!(detail.name, "sh");
    assert!(detail.command.contains("while :; do :; done"), "{}", detail.command);
    assert_eq!(detail.thread_count, 1);
    assert_eq!(detail.threads.len(), 1);
    assert!((detail.cpu_usage as f64 - truth).abs() < 6.0, "detail {} vs kernel {truth:.1}", detail.cpu_usage);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now - detail.start_time < 60, "start_time {} is not recent unix seconds", detail.start_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_pid_requests_for_a_missing_process_get_an_error_naming_the_pid() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;
    let missing = u32::MAX - 1;
    let Answer::Json(error) = ask(&mut ws, &format!("get_process_metrics:{missing}")).await else { panic!() };
    assert_eq!(error["pid"].as_u64(), Some(missing as u64));
    assert_eq!(error["request"].as_str(), Some("get_process_metrics"));
    let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!() };
    assert!(metrics.get("cpu_total").is_some());
}

/// A shell whose command line is `bytes` long, so its detail answer is large.
struct LongCommandLine(std::process::Child);

impl LongCommandLine {
    fn start(bytes: usize) -> Self {
        let filler = "x".repeat(bytes);
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do sleep 1; done", &filler])
            .spawn()
            .expect("spawning sh");
        Self(child)
    }
}

impl Drop for LongCommandLine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_answers_are_text_whatever_their_size_while_commands_keep_gzip() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;
    let shell = LongCommandLine::start(2000);
    let pid = shell.0.id();
    // Let the shell exec, so its command line is the long one.
    tokio::time::sleep(Duration::from_millis(200)).await;

    ws.send(Message::text(format!("get_process_metrics:{pid}"))).await.unwrap();
    let Message::Binary(gzipped) = next_frame(&mut ws).await else { panic!("a command's large answer is binary") };
    assert!(gzipped.starts_with(&[0x1f, 0x8b]), "a command's large answer is gzipped");
    let Answer::Json(from_command) = decode(Message::Binary(gzipped)) else { panic!("gzipped JSON") };

    ws.send(Message::text(format!(r#"{{"type":"process_metrics","pid":{pid}}}"#))).await.unwrap();
    let Message::Text(text) = next_frame(&mut ws).await else { panic!("a JSON-form answer is a text frame") };
    assert!(text.len() > 768, "the answer is large: {} bytes", text.len());
    let from_json: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(from_json, from_command, "both forms carry the same (cached) answer");
    assert_eq!(from_json["process"]["pid"].as_u64(), Some(u64::from(pid)));

    for request in ["get_processes", r#"{"type":"processes"}"#] {
        ws.send(Message::text(request)).await.unwrap();
        let Message::Binary(bytes) = next_frame(&mut ws).await else { panic!("{request}: protobuf is binary") };
        let Answer::Processes(list) = decode(Message::Binary(bytes.clone())) else { panic!("{request}: protobuf") };
        assert_eq!(bytes.starts_with(&[0x1f, 0x8b]), list.encoded_len() > 768, "{request}: gzip above 768 bytes");
        assert!(list.rows.iter().any(|p| p.pid == pid), "{request}: the shell is listed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_answers_decode_in_the_real_client() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    let pid = std::process::id();
    let journal = e2e::per_pid::journal(&mut client, pid).await.unwrap();
    assert_eq!(journal.total_count as usize, journal.entries.len());
    // Ground truth: journalctl itself. Where it is missing or fails, the answer
    // must say why instead of failing.
    let direct = std::process::Command::new("journalctl")
        .args([&format!("_PID={pid}"), "--output=json", "--lines=100", "--no-pager"])
        .output();
    match direct {
        Ok(out) if out.status.success() => {
            let lines = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')).count();
            assert_eq!(journal.entries.len(), lines, "{journal:?}");
        }
        _ => assert!(journal.notice.is_some(), "no journal and no notice: {journal:?}"),
    }
}

/// Paths only the GPU and temperature collectors read.
const SENSOR_PATHS: [&str; 5] = ["/sys/class/hwmon", "/sys/class/thermal", "/sys/class/drm", "libnvidia-ml", "/hwmon"];

/// Runs the agent under strace, asks for metrics and disks, and returns the sensor
/// paths it touched.
async fn sensor_paths_touched(envs: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace");
    let agent = Agent::start_traced(&trace, &[], envs).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    ask(&mut ws, "get_metrics").await;
    ask(&mut ws, "get_disks").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ask(&mut ws, "get_metrics").await;
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    trace.lines().filter(|l| SENSOR_PATHS.iter().any(|p| l.contains(p))).map(str::to_owned).collect()
}

/// Whether strace runs here; CI installs it, elsewhere the tests that need it skip.
fn strace_available() -> bool {
    let available = std::process::Command::new("strace").arg("-V").output().is_ok();
    if !available {
        assert!(!ebpf_required(), "CI installs strace");
        eprintln!("skipping: no strace");
    }
    available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_and_temperature_toggles_stop_all_sensor_access() {
    if !strace_available() {
        return;
    }
    let on = sensor_paths_touched(&[]).await;
    assert!(!on.is_empty(), "with collection on the agent looks for sensors (the test can see it)");
    let off = sensor_paths_touched(&[("SOCKTOP_AGENT_GPU", "0"), ("SOCKTOP_AGENT_TEMP", "0")]).await;
    assert!(off.is_empty(), "toggled off, yet: {off:?}");
}

/// The hwmon inputs other than the CPU package sensor are for Prometheus: a
/// socktop client's metrics requests (every 500 ms) never read them, a scrape does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hwmon_temperatures_are_read_by_scrapes_not_by_metrics_requests() {
    if !strace_available() {
        return;
    }
    let sys = tempfile::tempdir().expect("tempdir");
    let coretemp = [("name", "coretemp\n"), ("temp1_input", "61000\n"), ("temp1_label", "Package id 0\n")];
    sysfs::fake_hwmon(sys.path(), "devices/platform/coretemp.0", "hwmon0", &coretemp);
    let nvme = [("name", "nvme\n"), ("temp1_input", "38850\n"), ("temp2_input", "41850\n")];
    sysfs::fake_hwmon(sys.path(), "devices/pci0000:00/0000:00:01.3/0000:01:00.0/nvme/nvme0", "hwmon1", &nvme);
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("trace");
    let sys_root = sys.path().to_str().expect("UTF-8 temp path");
    let agent = Agent::start_traced(&trace, &["--sys-root", sys_root], &[]).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    for _ in 0..5 {
        ask(&mut ws, "get_metrics").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A request that opens a file of its own marks the trace: the scrape follows it.
    let marker = "/proc/4194000/stat";
    ask(&mut ws, "get_process_metrics:4194000").await;
    let address = agent.address();
    let scraped = tokio::task::spawn_blocking(move || e2e::fleet::http_get(&address, "/metrics", &[])).await;
    assert_eq!(scraped.unwrap().expect("scrape").status, 200);
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    let (requests, scrape) = trace.split_once(marker).expect("the marker request is in the trace");
    let reads = |part: &str, input: &str| part.lines().filter(|l| l.contains(input) && l.contains("open")).count();
    assert!(reads(requests, "hwmon0/temp1_input") >= 5, "the CPU sensor is read per request (the test can see it)");
    for input in ["hwmon1/temp1_input", "hwmon1/temp2_input"] {
        assert_eq!(reads(requests, input), 0, "{input} read by metrics requests");
        assert_eq!(reads(scrape, input), 1, "{input} read once by the scrape");
    }
}

/// With GPU and temperature collection on (the defaults) and a sysfs without GPUs or
/// sensors, the agent searches once and then not per request: between two searches
/// (a minute apart) a request touches no sensor file and does not load NVML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_sensors_are_not_searched_on_every_request() {
    if !strace_available() {
        return;
    }
    let sys = tempfile::tempdir().expect("tempdir");
    for class in ["class/hwmon", "class/thermal", "class/drm", "class/block", "block"] {
        std::fs::create_dir_all(sys.path().join(class)).expect("fake sysfs");
    }
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("trace");
    let sys_root = sys.path().to_str().expect("UTF-8 temp path");
    let agent = Agent::start_traced(&trace, &["--sys-root", sys_root], &[]).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    ask(&mut ws, "get_metrics").await;
    ask(&mut ws, "get_disks").await;
    // A request that opens a file of its own, to mark the trace: what follows it
    // comes from the requests after the first ones.
    let marker = "/proc/4194000/stat";
    ask(&mut ws, "get_process_metrics:4194000").await;
    for _ in 0..20 {
        ask(&mut ws, "get_metrics").await;
        ask(&mut ws, "get_disks").await;
    }
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    let searched =
        ["class/hwmon", "class/thermal", "class/drm", "class/nvme", "block/"].map(|p| format!("{sys_root}/{p}"));
    let is_search = |line: &&str| line.contains("libnvidia-ml") || searched.iter().any(|p| line.contains(p.as_str()));
    let (before, after) = trace.split_once(marker).expect("the marker request is in the trace");
    assert!(before.lines().any(|l| is_search(&l)), "the first requests search (the test can see it)");
    let repeated: Vec<&str> = after.lines().filter(is_search).collect();
    assert!(repeated.is_empty(), "searched again within the bound: {repeated:?}");
}
