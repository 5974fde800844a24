//! What the answers carry: every request decoded by the real client with values
//! true to the host (memory, CPUs, hostname, disks from `df`, the process list
//! from /proc), the README's JSON forms, per-process details against the kernel,
//! text and gzip framing by size, journal answers against `journalctl`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::prost::Message as _;
use e2e::socktop_connector::connect_to_socktop_agent;
use e2e::tokio_tungstenite::tungstenite::Message;
use e2e::ws::{Answer, ask, decode, next_frame};
use e2e::{Agent, Workload, client, host};
use futures_util::SinkExt;

use super::raw_client;

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
