//! Harness for the end-to-end tests in `agent/tests`: starts the real
//! `socktop_agent` binary, which Cargo builds for them, on a loopback port, and
//! offers ground-truth readings of the host to compare its answers with.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod fleet;
pub mod ws;

// The real client's crate and the versions of its protobuf and WebSocket
// libraries that its types are made with, for the tests to name.
pub use {prost, socktop_connector, tokio_tungstenite};

/// A running agent, killed when dropped.
pub struct Agent {
    child: Child,
    /// The address it listens on, and its port.
    pub host: String,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

/// The agent binary these tests start: the one Cargo built for the agent's
/// integration tests (agent/tests), in the same build as the tests themselves, so
/// with the same profile and features. Cargo names it in
/// `CARGO_BIN_EXE_socktop_agent` while it runs them.
pub fn agent_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = std::env::var_os("CARGO_BIN_EXE_socktop_agent").unwrap_or_else(|| {
            panic!("CARGO_BIN_EXE_socktop_agent is not set: run these tests with `cargo test -p socktop_agent`")
        });
        PathBuf::from(binary)
    })
}

impl Agent {
    /// Starts the agent on an ephemeral loopback port with `args` and `envs` added,
    /// and waits until it listens.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Agent> {
        Self::spawn(Command::new(agent_binary()), args, envs)
    }

    /// Starts the agent as user `nobody` (when the tests run as root), from a copy
    /// of the binary in a folder that user can reach.
    pub fn start_unprivileged(args: &[&str]) -> anyhow::Result<(Agent, tempfile::TempDir)> {
        Self::start_unprivileged_with(&[], args)
    }

    /// Starts the agent as user `nobody` holding only the capabilities `caps`
    /// (names as systemd writes them, `CAP_BPF`), ambient as a unit grants them and
    /// with the bounding set cut to them. Not root: plainly, as the current user.
    pub fn start_unprivileged_with(caps: &[&str], args: &[&str]) -> anyhow::Result<(Agent, tempfile::TempDir)> {
        if !running_as_root() {
            return Ok((Self::start(args, &[])?, tempfile::tempdir()?));
        }
        let (dir, binary) = binary_copy_for_nobody()?;
        let set: String = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|cap| format!("+{}", setpriv_name(cap))))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(format!("--inh-caps={set}")).arg(format!("--bounding-set={set}"));
        if !caps.is_empty() {
            command.arg(format!("--ambient-caps={set}"));
        }
        command.arg(&binary);
        Ok((Self::spawn(command, args, &[])?, dir))
    }

    /// Starts the agent as user `nobody` from a copy of the binary given the file
    /// capabilities `caps` (`setcap` syntax, `cap_bpf,cap_perfmon+ep`): the kernel
    /// runs it in secure-execution mode. Needs root.
    pub fn start_with_file_capabilities(caps: &str, args: &[&str]) -> anyhow::Result<(Agent, tempfile::TempDir)> {
        let (dir, binary) = binary_copy_for_nobody()?;
        let status = Command::new("setcap").arg(caps).arg(&binary).status().context("running setcap")?;
        anyhow::ensure!(status.success(), "setcap {caps} failed: {status}");
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&binary);
        Ok((Self::spawn(command, args, &[])?, dir))
    }

    /// Starts the agent under `strace`, recording every file-related system call of
    /// every thread into `trace`.
    pub fn start_traced(trace: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Agent> {
        let mut command = Command::new("strace");
        command.args(["-f", "-qq", "-e", "trace=%file", "-o"]).arg(trace).arg(agent_binary());
        Self::spawn(command, args, envs)
    }

    /// Starts the agent on loopback port `port` (the port clients were told).
    pub fn start_on(port: u16, args: &[&str]) -> anyhow::Result<Agent> {
        Self::spawn_at(Command::new(agent_binary()), "127.0.0.1", port, args, &[])
    }

    /// Starts the agent through `launcher` (a command that ends by running the
    /// program named after it, such as `ip netns exec NAME`; none for the agent
    /// itself), listening on `bind:port`.
    pub fn start_via(
        launcher: &[&str],
        bind: std::net::IpAddr,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let command = match launcher.split_first() {
            Some((program, launcher_args)) => {
                let mut command = Command::new(program);
                command.args(launcher_args).arg(agent_binary());
                command
            }
            None => Command::new(agent_binary()),
        };
        Self::spawn_at(command, &bind.to_string(), port, args, envs)
    }

    fn spawn(command: Command, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Agent> {
        Self::spawn_at(command, "127.0.0.1", 0, args, envs)
    }

    fn spawn_at(
        mut command: Command,
        bind: &str,
        port: u16,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        // The tests of one binary run at once, each with agents and connections: an
        // ordinary user's soft limit (often 1024 open files) runs out.
        testkit::limits::raise_open_files_limit().context("raising the open-files limit")?;
        command.args(["--bind", bind, "--port", &port.to_string()]).args(args);
        command.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for var in ["SOCKTOP_TOKEN", "SOCKTOP_ENABLE_SSL", "SOCKTOP_PORT", "SOCKTOP_AGENT_EBPF"] {
            command.env_remove(var);
        }
        command.envs(envs.iter().copied());
        let mut child = command.spawn().context("starting socktop_agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = testkit::listen::parse_listening_port(&line) {
                    let _ = port_tx.send(port);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => Ok(Agent { child, host: bind.to_owned(), port, log }),
            Err(_) => {
                let _ = child.kill();
                bail!("agent did not start: {:?}", log.lock().expect("log lock"))
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.address())
    }

    /// `host:port`, as a Prometheus target names it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("agent did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Under strace the agent is strace's child, and killing strace leaves it
        // running detached: kill the children first.
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        for pid in std::fs::read_to_string(children).unwrap_or_default().split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CAP_BPF` as setpriv(1) spells it: `bpf`.
fn setpriv_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_ascii_lowercase()
}

/// A copy of the agent's binary in a new folder that user `nobody` can reach (the
/// build folder may not be), for starting it as that user.
fn binary_copy_for_nobody() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let binary = dir.path().join("socktop_agent");
    std::fs::copy(agent_binary(), &binary)?;
    Ok((dir, binary))
}

pub use testkit::skip::running_as_root;

/// A child process kept busy or idle on purpose, killed when dropped.
pub struct Workload(Child);

impl Workload {
    /// A shell loop that keeps one CPU busy.
    pub fn busy_loop() -> Workload {
        Workload(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("spawning a busy loop"))
    }

    /// Any command, killed when dropped.
    pub fn run(command: &mut Command) -> Workload {
        Workload(command.spawn().expect("spawning a workload"))
    }

    /// A process that sleeps.
    pub fn idle() -> Workload {
        Workload(Command::new("sleep").arg("600").spawn().expect("spawning sleep"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fake sysfs trees for `--sys-root`.
pub mod sysfs {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A hwmon device laid out as the kernel does: in its parent device's directory
    /// under `devices/`, linked from `class/hwmon/`, its `device` link to the parent.
    pub fn fake_hwmon(sys: &Path, parent: &str, hwmon: &str, files: &[(&str, &str)]) {
        let dir = sys.join(parent).join("hwmon").join(hwmon);
        std::fs::create_dir_all(&dir).expect("fake hwmon directory");
        std::fs::create_dir_all(sys.join("class/hwmon")).expect("fake hwmon class");
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("fake hwmon attribute");
        }
        symlink("../..", dir.join("device")).expect("device link");
        symlink(format!("../../{parent}/hwmon/{hwmon}"), sys.join("class/hwmon").join(hwmon)).expect("class link");
    }
}

/// Ground truth read straight from the kernel.
pub mod host {
    /// Number of logical CPUs online.
    pub fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// MemTotal in bytes.
    pub fn mem_total() -> u64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:")).expect("MemTotal");
        line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).expect("MemTotal value") * 1024
    }

    /// The environment `pid` was started (or last exec'd) with, a variable a line:
    /// the kernel's copy in /proc/PID/environ, whatever the process made of it since.
    pub fn environment(pid: u32) -> String {
        let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        String::from_utf8_lossy(&bytes).replace('\0', "\n")
    }

    /// Pids currently in /proc.
    pub fn pids() -> Vec<u32> {
        std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
    }

    /// Nanoseconds a task has run on a CPU, from the scheduler
    /// (`/proc/PID/schedstat`, first field; the main thread of a process).
    pub fn on_cpu_ns(pid: u32) -> u64 {
        testkit::kernel::on_cpu_ns(pid).expect("schedstat run time")
    }

    /// utime + stime of a process, in clock ticks.
    pub fn cpu_ticks(pid: u32) -> u64 {
        testkit::kernel::cpu_ticks(pid).expect("utime and stime")
    }
}

/// Typed requests through the real client library (its `get_*` helpers exist only
/// in its WASM build; the native build has `request`).
pub mod client {
    use socktop_connector::{AgentRequest, AgentResponse, SocktopConnector};

    pub async fn metrics(c: &mut SocktopConnector) -> anyhow::Result<socktop_connector::Metrics> {
        match c.request(AgentRequest::Metrics).await? {
            AgentResponse::Metrics(m) => Ok(m),
            other => anyhow::bail!("metrics request got {other:?}"),
        }
    }

    pub async fn disks(c: &mut SocktopConnector) -> anyhow::Result<Vec<socktop_connector::DiskInfo>> {
        match c.request(AgentRequest::Disks).await? {
            AgentResponse::Disks(d) => Ok(d),
            other => anyhow::bail!("disks request got {other:?}"),
        }
    }

    pub async fn processes(c: &mut SocktopConnector) -> anyhow::Result<socktop_connector::ProcessesPayload> {
        match c.request(AgentRequest::Processes).await? {
            AgentResponse::Processes(p) => Ok(p),
            other => anyhow::bail!("processes request got {other:?}"),
        }
    }
}

pub mod per_pid {
    use socktop_connector::{AgentRequest, AgentResponse, JournalResponse, ProcessMetricsResponse, SocktopConnector};

    pub async fn process_metrics(c: &mut SocktopConnector, pid: u32) -> anyhow::Result<ProcessMetricsResponse> {
        match c.request(AgentRequest::ProcessMetrics { pid }).await? {
            AgentResponse::ProcessMetrics(m) => Ok(m),
            other => anyhow::bail!("process metrics request got {other:?}"),
        }
    }

    pub async fn journal(c: &mut SocktopConnector, pid: u32) -> anyhow::Result<JournalResponse> {
        match c.request(AgentRequest::JournalEntries { pid }).await? {
            AgentResponse::JournalEntries(j) => Ok(j),
            other => anyhow::bail!("journal request got {other:?}"),
        }
    }
}

/// The systemd unit the package ships (`deploy/socktop-agent.service`), so tests
/// run the agent with exactly what it grants.
pub mod unit {
    use std::path::PathBuf;

    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/socktop-agent.service")
    }

    /// The space-separated values of every `key=` line, in order.
    pub fn values(key: &str) -> Vec<String> {
        let text = std::fs::read_to_string(path()).expect("the unit file");
        let prefix = format!("{key}=");
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
            .flat_map(|values| values.split_whitespace().map(str::to_owned))
            .collect()
    }
}
