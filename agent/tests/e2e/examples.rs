//! The client examples (examples/python, examples/node) run as published against a
//! live agent: what they print must match the host, and they must keep retrying
//! with growing delays until an agent is there, and come back after it restarts.
//!
//! They need their packages installed (CI does it): the Python one a python with
//! examples/python/requirements.txt, named by SOCKTOP_EXAMPLES_PYTHON; the Node one
//! `node` and examples/node/node_modules (`npm ci`). Without them the tests skip,
//! unless SOCKTOP_REQUIRE_ALL=1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Agent, host};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A running example, its output collected line by line; killed when dropped.
struct Example {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Example {
    fn start(mut command: Command, port: u16) -> Example {
        command.arg(format!("ws://127.0.0.1:{port}/ws")).args(["--duration", "60"]);
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starting the example");
        let stdout = child.stdout.take().expect("example stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines lock").push(line);
            }
        });
        Example { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits until `count` lines start with `prefix`.
    fn wait_for(&self, prefix: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.lines().iter().filter(|l| l.starts_with(prefix)).count() < count {
            assert!(Instant::now() < deadline, "no {count} '{prefix}' lines within 20 s: {:#?}", self.lines());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` of a printed line, parsed.
fn field<T: std::str::FromStr>(line: &str, key: &str) -> T {
    let value = line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='));
    value.and_then(|v| v.trim_end_matches('%').parse().ok()).unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn example_matches_the_host_and_reconnects(command: Command) {
    // The example is told the port before any agent listens there (it must retry
    // until one does), so the port is held for the agents meanwhile.
    let reserved = testkit::listen::ReservedPort::on_loopback().expect("a port reserved");
    let port = reserved.port();
    let example = Example::start(command, port);
    // No agent yet: it retries, each delay twice the one before.
    example.wait_for("reconnecting in 1.0s", 1);

    let agent = Agent::start_on(port, &[]).expect("agent starts");
    example.wait_for("processes ", 1);
    example.wait_for("metrics ", 5);
    example.wait_for("disks ", 1);
    agent.terminate(Duration::from_secs(10)).expect("agent stops");
    let agent = Agent::start_on(port, &[]).expect("agent restarts on the same port");
    example.wait_for("connected ", 2);
    example.wait_for("processes ", 2);
    drop(agent);
    drop(reserved);

    let lines = example.lines();
    let first = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap_or(usize::MAX);
    assert!(first("reconnecting in 0.5s") < first("reconnecting in 1.0s"), "{lines:#?}");
    assert!(first("reconnecting in 1.0s") < first("connected "), "{lines:#?}");

    for line in lines.iter().filter(|l| l.starts_with("metrics ")) {
        assert_eq!(field::<u64>(line, "mem_total"), host::mem_total(), "{line}");
        assert_eq!(field::<usize>(line, "cores"), host::cpus(), "{line}");
        assert!((0.0..=100.0).contains(&field::<f64>(line, "cpu")), "{line}");
    }
    for line in lines.iter().filter(|l| l.starts_with("processes ")) {
        let count: usize = field(line, "count");
        assert_eq!(count, field::<usize>(line, "rows"), "{line}");
        let listed_now = host::pids().len();
        assert!(count > 10 && count.abs_diff(listed_now) < listed_now / 2, "{line} vs {listed_now} in /proc");
    }
    assert!(lines.iter().any(|l| l.starts_with("disks count=") && field::<usize>(l, "count") >= 1), "{lines:#?}");
    // Polled every 500 ms and every 2 s: metrics answers outnumber processes ones.
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert!(count("metrics ") > count("processes "), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("error ")), "{lines:#?}");
}

#[test]
fn the_python_example_matches_the_host_and_reconnects() {
    let Ok(python) = std::env::var("SOCKTOP_EXAMPLES_PYTHON") else {
        let needs = "SOCKTOP_EXAMPLES_PYTHON naming a python with examples/python/requirements.txt installed";
        return testkit::skip::skip("the_python_example_matches_the_host_and_reconnects", needs);
    };
    let mut command = Command::new(python);
    command.arg("-u").arg(examples_dir().join("python/socktop_client.py"));
    example_matches_the_host_and_reconnects(command);
}

#[test]
fn the_node_example_matches_the_host_and_reconnects() {
    let dir = examples_dir().join("node");
    let has_node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_node || !dir.join("node_modules").exists() {
        let needs = "`node` (Debian package nodejs) and examples/node/node_modules (`npm ci` there)";
        return testkit::skip::skip("the_node_example_matches_the_host_and_reconnects", needs);
    }
    let mut command = Command::new("node");
    command.arg(dir.join("socktop_client.js"));
    example_matches_the_host_and_reconnects(command);
}
