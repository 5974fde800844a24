//! The processes list's CPU against the scheduler's own run time of a busy loop
//! and a sleeper, from each CPU source (eBPF, /proc), and the fallback an
//! unprivileged agent explains.

use std::time::Duration;

use e2e::socktop_connector::connect_to_socktop_agent;
use e2e::{Agent, Workload, client, host};

/// What loading the eBPF program takes, for a skip: the agent's own reason after it.
pub(crate) fn ebpf_needs(source_line: &str) -> String {
    let reason = source_line.split("cpu source: ").nth(1).unwrap_or(source_line);
    format!("the eBPF program loaded: root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF; the agent: {reason}")
}

/// Starts the agent with the CPU source asked for (`on` or `off`) and checks the
/// processes list against the scheduler's run time of a busy loop and a sleeper.
async fn busy_and_idle_processes_match_the_kernel(test: &str, ebpf: &str) {
    let agent = Agent::start(&["--ebpf", ebpf], &[("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).expect("agent starts");
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    if ebpf == "off" {
        assert!(source.contains("cpu source: proc"), "{source}");
    } else if !source.contains("cpu source: ebpf") {
        return testkit::skip::skip(test, &ebpf_needs(&source));
    }
    assert_busy_and_idle_match_the_kernel(&agent).await;
}

/// Checks an agent's processes list (collected on every request) against the
/// scheduler's run time of a busy loop and a sleeper started here.
pub(crate) async fn assert_busy_and_idle_match_the_kernel(agent: &Agent) {
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
    // On a host too busy for the loop to run, the comparison above proves little.
    let share_needed = 20.0_f64.min(90.0 / host::cpus() as f64);
    if truth < share_needed {
        let needs = format!(
            "a host with CPU to spare: the busy loop got {truth:.1}% of the machine by the kernel's count, \
             {share_needed:.0}% needed"
        );
        return testkit::skip::skip(&testkit::skip::current_test(), &needs);
    }
    assert!(usage(idle.pid()) < 0.5, "sleep shows {}", usage(idle.pid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero() {
    busy_and_idle_processes_match_the_kernel("proc_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero", "off")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero() {
    busy_and_idle_processes_match_the_kernel("ebpf_mode_a_busy_loop_reads_one_cpu_and_a_sleeper_reads_zero", "on")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_agent_says_why_it_falls_back_to_proc_and_serves() {
    // As root the agent is started as `nobody` through setpriv.
    let test = "an_unprivileged_agent_says_why_it_falls_back_to_proc_and_serves";
    if e2e::running_as_root() && testkit::skip::needs_program(test, "setpriv", &["--version"], "util-linux").is_none() {
        return;
    }
    let (agent, _dir) = Agent::start_unprivileged(&[]).unwrap();
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    assert!(source.contains("cpu source: proc (not permitted"), "{source}");
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    assert_eq!(client::metrics(&mut client).await.unwrap().mem_total, host::mem_total());
    assert!(client::processes(&mut client).await.unwrap().process_count > 1);
}
