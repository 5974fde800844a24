//! Hardening tests: secrets kept out of logs and handled like a CA's, the
//! refusal at the connection cap, and faults injected into what the agent reads
//! and runs. The real binary where a binary can show it; the library where the
//! fault has to be planted in code.

mod cap;
mod faults;
mod secrets;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the agent binary with `args` and `envs` to its exit, which must come
/// within `timeout` (a start that fails); kills it and fails the test otherwise.
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut child = Command::new(e2e::agent_binary())
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting socktop_agent");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("waiting for the agent").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("agent output");
            panic!("the agent still runs after {timeout:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("agent output")
}
