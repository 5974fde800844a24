//! The agent as a process: clean shutdown on SIGTERM, no CPU while idle, files
//! closed when the last client leaves, glibc's thread caches off, `--help` and
//! `--version`.

use std::time::Duration;

use e2e::socktop_connector::connect_to_socktop_agent;
use e2e::ws::{Answer, ask};
use e2e::{Agent, Workload, client, host};

use super::raw_client;

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

/// The agent runs as it was started: it does not re-execute itself nor set
/// `GLIBC_TUNABLES` (which would leak into the programs it runs, journalctl), and
/// a user's own tunables reach it untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_as_started_with_the_environment_it_was_given() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut client = raw_client(&agent).await;
    assert!(matches!(ask(&mut client, "get_metrics").await, Answer::Json(m) if m.get("cpu_total").is_some()));
    let environment = host::environment(agent.pid());
    assert!(!environment.contains("GLIBC_TUNABLES"), "{environment}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", agent.pid())).unwrap();
    assert_eq!(comm.trim(), "socktop_agent");

    let sized = [("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")];
    let agent = Agent::start(&[], &sized).unwrap();
    // glibc splits the variable in place as it parses it: look for the setting itself.
    let environment = host::environment(agent.pid());
    assert!(environment.contains("GLIBC_TUNABLES=glibc.malloc.arena_max=2\n"), "{environment}");
    assert!(!environment.contains("tcache_count"), "{environment}");
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
