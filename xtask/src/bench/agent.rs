//! The two agents under test: building ours, installing the original, starting
//! either on a loopback port with a given cache setting, and reading its CPU time
//! and resident memory from `/proc/PID/*` (proc(5)).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// The version of the original agent the bench compares against.
pub const ORIGINAL_VERSION: &str = "1.60.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Ours,
    Original,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::Original => "original",
        }
    }
}

/// Whether the agents reuse answers (their TTL caches) or collect on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caches {
    Off,
    On,
}

impl Caches {
    pub fn name(self) -> &'static str {
        match self {
            Caches::Off => "caches off",
            Caches::On => "caches on",
        }
    }

    /// metrics, processes, disks TTLs in ms. "On" uses the same figures for both
    /// agents (the original's 1.60.1 defaults differ only for processes: 1500 ms).
    fn ttls_ms(self) -> [(&'static str, &'static str); 3] {
        let (metrics, processes, disks) = match self {
            Caches::Off => ("0", "0", "0"),
            Caches::On => ("250", "1000", "1000"),
        };
        [
            ("SOCKTOP_AGENT_METRICS_TTL_MS", metrics),
            ("SOCKTOP_AGENT_PROCESSES_TTL_MS", processes),
            ("SOCKTOP_AGENT_DISKS_TTL_MS", disks),
        ]
    }
}

/// Which of the GPU and temperature collectors run. Most figures are taken with
/// both off; the defaults (both on) show what a host without GPUs or sensors pays
/// for collectors that find nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensors {
    /// `SOCKTOP_AGENT_GPU=0` and `SOCKTOP_AGENT_TEMP=0`.
    Off,
    /// `SOCKTOP_AGENT_GPU=0` only: temperatures on.
    GpuOff,
    /// Neither variable set: both collectors on, as the agents start by default.
    Defaults,
}

impl Sensors {
    pub fn name(self) -> &'static str {
        match self {
            Sensors::Off => "GPU and temperature off",
            Sensors::GpuOff => "GPU off, temperature on",
            Sensors::Defaults => "defaults: GPU and temperature on",
        }
    }

    fn log_suffix(self) -> &'static str {
        match self {
            Sensors::Off => "",
            Sensors::GpuOff => "-gpu-off",
            Sensors::Defaults => "-defaults",
        }
    }

    fn apply(self, command: &mut Command) {
        let (gpu, temperature) = match self {
            Sensors::Off => (false, false),
            Sensors::GpuOff => (false, true),
            Sensors::Defaults => (true, true),
        };
        for (var, on) in [("SOCKTOP_AGENT_GPU", gpu), ("SOCKTOP_AGENT_TEMP", temperature)] {
            if on {
                command.env_remove(var);
            } else {
                command.env(var, "0");
            }
        }
    }
}

/// Where the two binaries are and how ours is started.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub ours: PathBuf,
    pub original: PathBuf,
    /// Passed to our agent as `--ebpf`.
    pub ours_ebpf: bool,
    /// Agent logs go here, one file per start.
    pub logs: PathBuf,
    /// CPUs the agents run on, apart from the bench's own (see [`Pinning`]).
    pub pinning: Option<Pinning>,
}

/// The bench's client threads on CPU 0 and the agents on the other CPUs. A real
/// client polls from elsewhere, so the agent wakes from idle for each request;
/// left to the scheduler, client and agent sometimes share a CPU and skip that
/// wake-up, which made the same agent's CPU per request swing 15 to 40 µs
/// between runs. Pinning gives both agents the same, realistic case.
#[derive(Clone, Copy)]
pub struct Pinning {
    agents: libc::cpu_set_t,
}

impl std::fmt::Debug for Pinning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pinning")
    }
}

impl Pinning {
    /// Pins the calling thread (and the threads it starts later) to CPU 0 and
    /// returns the set for the agents; `None` on a single-CPU machine.
    pub fn client_on_first_cpu(cores: usize) -> anyhow::Result<Option<Pinning>> {
        if cores < 2 {
            return Ok(None);
        }
        let client = cpu_set([0]);
        // SAFETY: sched_setaffinity only reads the set passed.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &client) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the bench to CPU 0");
        }
        Ok(Some(Pinning { agents: cpu_set(1..cores) }))
    }

    fn apply(self, command: &mut Command) {
        run_on(command, self.agents);
    }
}

/// The set of `cpus` (those past `CPU_SETSIZE` left out).
pub fn cpu_set(cpus: impl IntoIterator<Item = usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit set, valid when zeroed; CPU_SET only
    // touches the set passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus.into_iter().filter(|&cpu| cpu < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// Makes the process `command` starts run on `cpus` only.
pub fn run_on(command: &mut Command, cpus: libc::cpu_set_t) {
    // SAFETY: runs between fork and exec and only calls sched_setaffinity, which
    // is async-signal-safe; the set was built before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running agent, killed when dropped (and by the kernel if the bench dies).
pub struct Agent {
    pub which: Which,
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts one agent and waits until it accepts connections.
    pub async fn start(binaries: &Binaries, which: Which, caches: Caches, sensors: Sensors) -> anyhow::Result<Agent> {
        // Both bind a port the kernel chooses: ours logs it, the original's is read
        // from the kernel (wait_listening).
        let port = 0;
        let setting = format!("{}{}", caches.name().replace(' ', "-"), sensors.log_suffix());
        let log = binaries.logs.join(format!("{}-{setting}.log", which.name()));
        let mut command = match which {
            Which::Ours => {
                let mut c = Command::new(&binaries.ours);
                let ebpf = if binaries.ours_ebpf { "on" } else { "off" };
                c.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--ebpf", ebpf]);
                c
            }
            // The original has no bind flag: it listens on 0.0.0.0; the bench only
            // ever connects to 127.0.0.1.
            Which::Original => {
                let mut c = Command::new(&binaries.original);
                c.args(["--port", &port.to_string()]);
                c
            }
        };
        for var in ["SOCKTOP_TOKEN", "SOCKTOP_ENABLE_SSL", "SOCKTOP_PORT", "SOCKTOP_BIND", "SOCKTOP_AGENT_EBPF"] {
            command.env_remove(var);
        }
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        sensors.apply(&mut command);
        command
            .envs(caches.ttls_ms())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        die_with_parent(&mut command);
        if let Some(pinning) = binaries.pinning {
            pinning.apply(&mut command);
        }
        let child = command.spawn().with_context(|| format!("starting the {} agent", which.name()))?;
        let mut agent = Agent { which, port, child, log };
        agent.wait_listening().await?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent accepts connections on the port the kernel gave it:
    /// ours logs it; the original does not, so the kernel is asked where it listens.
    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.port == 0 {
                self.port = match self.which {
                    Which::Ours => {
                        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                        log.lines().find_map(testkit::listen::parse_listening_port)
                    }
                    Which::Original => testkit::listen::only_port(self.pid())?,
                }
                .unwrap_or(0);
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            if self.port != 0 && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the {} agent exited with {status}: {}", self.which.name(), self.log_tail());
            }
            ensure!(Instant::now() < deadline, "the {} agent did not listen within 60 s", self.which.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cumulative user + system CPU time of the whole process, exited threads included.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.pid())
    }

    /// Resident set size (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_of(self.pid())
    }

    /// What our agent says about its per-process CPU source ("proc" or "ebpf").
    pub fn cpu_source(&self) -> Option<String> {
        self.logged("cpu source: ")
    }

    /// Where our agent shows exited processes' time ("attribute" or "own").
    pub fn cpu_children(&self) -> Option<String> {
        self.logged("cpu children: ")
    }

    /// The word after the first `key` in the agent's log.
    fn logged(&self, key: &str) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let at = log.find(key)? + key.len();
        Some(log[at..].split_whitespace().next()?.to_owned())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the kernel to SIGKILL the child when the bench's main thread ends, so a
/// crashed or killed bench leaves nothing behind (prctl(2), PR_SET_PDEATHSIG).
/// Every child is spawned from the main thread, which lives as long as the bench.
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only prctl, getppid
    // and _exit, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Cumulative user + system CPU time of process `pid`, exited threads included.
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    testkit::kernel::cpu_time(pid).with_context(|| format!("reading /proc/{pid}/stat"))
}

/// Resident set size (VmRSS) of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    testkit::kernel::rss_bytes(pid).with_context(|| format!("reading /proc/{pid}/status"))
}

/// Resident memory in its two kinds: anonymous (the heap, stacks: what the
/// process allocated) and file-backed (mostly the executable's and libraries'
/// pages that ran: clean, shared, reclaimable).
#[derive(Debug, Clone, Copy)]
pub struct ResidentParts {
    pub anonymous: u64,
    pub file: u64,
}

pub fn resident_parts_of(pid: u32) -> anyhow::Result<ResidentParts> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name| {
        testkit::kernel::parse_status_bytes(&status, name).with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(ResidentParts { anonymous: field("RssAnon:")?, file: field("RssFile:")? })
}

/// Builds our agent in release and returns its path.
pub fn build_ours(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = crate::cargo();
    eprintln!("bench: building socktop_agent (release)");
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "socktop_agent", "--bin", "socktop_agent"])
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building socktop_agent failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release/socktop_agent"))
}

/// The original agent: the given binary, or the one installed under
/// `.bench/orig`, installing it with `cargo install` when missing.
pub fn original(root: &Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        ensure!(path.is_file(), "--original {} is not a file", path.display());
        return Ok(path);
    }
    let install_root = root.join(".bench/orig");
    let binary = install_root.join("bin/socktop_agent");
    if binary.is_file() {
        return Ok(binary);
    }
    let cargo = crate::cargo();
    eprintln!("bench: installing socktop_agent {ORIGINAL_VERSION} into {}", install_root.display());
    let status = Command::new(cargo)
        .args(["install", "--locked", "--version", ORIGINAL_VERSION, "socktop_agent", "--root"])
        .arg(&install_root)
        .status()
        .context("running cargo install")?;
    ensure!(status.success(), "installing the original socktop_agent failed (it needs the libdrm-dev package)");
    Ok(binary)
}
