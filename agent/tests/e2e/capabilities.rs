//! The agent as the packaged unit runs it: an unprivileged user holding only the
//! capabilities the unit grants, and what it keeps of them once serving.

use std::time::Duration;

use e2e::{Agent, host, unit};
use testkit::skip::{all_required, needs_program, needs_root, skip};

use super::cpu::{assert_busy_and_idle_match_the_kernel, ebpf_needs};

// Bits of the kernel's capability masks, from include/uapi/linux/capability.h.
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

/// The capability masks and no_new_privs of every thread of `pid`, from the kernel.
fn thread_capabilities(pid: u32) -> Vec<(String, [u64; 4], bool)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task folder");
    tasks
        .map(|task| {
            let task = task.expect("task entry").path();
            let status = std::fs::read_to_string(task.join("status")).expect("task status");
            let field = |name: &str| {
                let line =
                    status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in status"));
                line.trim().to_owned()
            };
            let mask = |name: &str| u64::from_str_radix(&field(name), 16).expect("capability mask");
            let masks = [mask("CapPrm:"), mask("CapEff:"), mask("CapInh:"), mask("CapAmb:")];
            (field("Name:"), masks, field("NoNewPrivs:") == "1")
        })
        .collect()
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_runs_as_an_unprivileged_user_with_only_the_units_capabilities() {
    let test = "ebpf_runs_as_an_unprivileged_user_with_only_the_units_capabilities";
    if needs_root(test, "to start the agent as another user with capabilities").is_none()
        || needs_program(test, "setpriv", &["--version"], "util-linux").is_none()
    {
        return;
    }
    let granted = unit::values("AmbientCapabilities");
    assert_eq!(granted, unit::values("CapabilityBoundingSet"), "the unit bounds what it grants");
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    let (agent, _dir) = Agent::start_unprivileged_with(&granted, &["--processes-ttl-ms", "0"]).expect("agent starts");
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    if !source.contains("cpu source: ebpf") {
        return skip(test, &ebpf_needs(&source));
    }
    let kept =
        agent.wait_for_log("capabilities after start-up: ", Duration::from_secs(5)).expect("capabilities logged");

    // What the kernel says every thread holds now: CAP_PERFMON for the resync perf
    // events, and CAP_BPF only where bpf(2) still checks it on every call.
    let expected = if kernel_at_least(6, 5) { CAP_PERFMON } else { CAP_PERFMON | CAP_BPF };
    for (name, [permitted, effective, inheritable, ambient], no_new_privs) in thread_capabilities(agent.pid()) {
        assert_eq!((permitted, effective), (expected, expected), "thread {name}: {kept}");
        assert_eq!((inheritable, ambient), (0, 0), "thread {name} passes nothing on: {kept}");
        assert!(no_new_privs, "thread {name} has no_new_privs");
    }

    // With what it kept, connecting attaches the resync perf events and each scan
    // makes an iterator link and reads the maps: the figures must match the kernel.
    assert_busy_and_idle_match_the_kernel(&agent).await;
    let failures: Vec<String> =
        agent.log().into_iter().filter(|l| l.contains("WARN") || l.contains("failed")).collect();
    assert!(failures.is_empty(), "{failures:?}");
}

/// The value of `AT_SECURE` in the auxiliary vector the kernel gave `pid`.
fn secure_execution(pid: u32) -> bool {
    const AT_SECURE: u64 = 23;
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).expect("auxv");
    let words: Vec<u64> =
        auxv.chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().expect("8-byte words"))).collect();
    words.chunks_exact(2).any(|pair| pair[0] == AT_SECURE && pair[1] != 0)
}

/// With file capabilities the kernel runs the agent in secure-execution mode (glibc
/// then ignores allocator tunables and other variables): the agent starts once,
/// as given, and serves as usual. It once restarted itself to set an allocator
/// tunable, and looped without end here; it sets none now (its allocator settings
/// are made in the program, `host/heap.rs`), so its environment, which its
/// children (journalctl) inherit, is exactly the one it was started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_file_capabilities_the_agent_starts_once_and_serves() {
    let test = "with_file_capabilities_the_agent_starts_once_and_serves";
    if needs_root(test, "to set file capabilities").is_none()
        || needs_program(test, "setcap", &["-v", "cap_bpf+ep", "/bin/true"], "libcap2-bin").is_none()
        || needs_program(test, "setpriv", &["--version"], "util-linux").is_none()
    {
        return;
    }
    let (agent, _dir) = Agent::start_with_file_capabilities("cap_bpf,cap_perfmon+ep", &["--processes-ttl-ms", "0"])
        .expect("agent starts");
    assert!(secure_execution(agent.pid()), "the kernel did not run it in secure-execution mode");
    let environment = host::environment(agent.pid());
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        assert!(!environment.contains("GLIBC_TUNABLES"), "it set an allocator tunable:\n{environment}");
    }
    let source = agent.wait_for_log("cpu source: ", Duration::from_secs(5)).expect("source logged");
    if !source.contains("cpu source: ebpf") {
        assert!(!all_required(), "every test required, but eBPF did not load with file capabilities: {source}");
    }
    assert_busy_and_idle_match_the_kernel(&agent).await;
}
