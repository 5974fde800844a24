//! The agent's validated configuration. The binary builds it from flags and
//! environment (see `cli.rs`); the library only ever sees this struct.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How long a collected answer of each kind is served again before a new
/// collection. Zero means every request collects (concurrent requests still share
/// one collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub metrics: Duration,
    pub processes: Duration,
    pub disks: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Self {
            metrics: Duration::from_millis(250),
            processes: Duration::from_millis(1000),
            disks: Duration::from_millis(1000),
        }
    }
}

/// What the collectors read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Root of procfs; `/host/proc` when the agent watches its host from a container.
    pub proc_root: PathBuf,
    /// Root of sysfs.
    pub sys_root: PathBuf,
    /// Collect GPU metrics (NVML and DRM sysfs).
    pub gpu: bool,
    /// Collect CPU and disk temperatures.
    pub temperature: bool,
    /// Whether the processes list shows exited processes' time in their ancestors.
    pub cpu_children: ChildrenMode,
}

impl Default for Collection {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            gpu: true,
            temperature: true,
            cpu_children: ChildrenMode::Attribute,
        }
    }
}

/// How a processes scan shows the time of processes that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChildrenMode {
    /// Added to the nearest listed ancestor (`cputime::attribution`'s rule).
    #[default]
    Attribute,
    /// Not shown: each row is the process's own time.
    Own,
}

impl ChildrenMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildrenMode::Attribute => "attribute",
            ChildrenMode::Own => "own",
        }
    }

    /// What the mode means, for the start-up log.
    pub fn meaning(self) -> &'static str {
        match self {
            ChildrenMode::Attribute => {
                "the time of processes that exit between two scans shows in their nearest listed ancestor"
            }
            ChildrenMode::Own => "each process shows its own time only",
        }
    }
}

impl FromStr for ChildrenMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "attribute" => Ok(ChildrenMode::Attribute),
            "own" => Ok(ChildrenMode::Own),
            other => Err(format!("expected `attribute` or `own`, not `{other}`")),
        }
    }
}

/// Limits that keep one client from starving the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Largest WebSocket message a client may send; requests are a few dozen bytes.
    pub max_message_bytes: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for the TLS handshake and the HTTP upgrade request.
    pub handshake_timeout: Duration,
    /// A client that takes no part of an answer for this long (it stopped
    /// reading) is disconnected.
    pub send_timeout: Duration,
    /// Requests of one connection answered concurrently (answers still go in order).
    pub pipelined_requests: usize,
    /// Most `/proc/PID/stat` files the processes scan keeps open between scans
    /// (re-reading an open file skips the path walk; each costs the kernel about
    /// 4.5 KiB: the file and its seq_file page). Past it, files are opened per scan.
    pub kept_stat_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_message_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            pipelined_requests: 8,
            kept_stat_files: 4096,
        }
    }
}

/// Bounds on the Prometheus scrape's per-process series, so that a host with
/// thousands of processes cannot blow up a Prometheus server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrometheusLimits {
    /// Command names with series of their own; the rest are summed into
    /// `comm="other"`.
    pub max_comm_names: usize,
    /// Processes with a `pid` label (the top by CPU); 0 turns them off.
    pub top_processes: usize,
}

impl Default for PrometheusLimits {
    fn default() -> Self {
        Self { max_comm_names: 200, top_processes: 5 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub ttls: Ttls,
    pub collection: Collection,
    pub limits: Limits,
    pub prometheus: PrometheusLimits,
    /// When set, `/ws` requires `?token=` with this value.
    pub token: Option<Token>,
}

/// The shared secret clients present as `?token=`. Its `Debug` shows no part of
/// it, so logging a configuration can never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// `None` for an empty value: an empty token would protect nothing.
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let value = value.into();
        (!value.is_empty()).then_some(Self(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_their_names() {
        assert_eq!("attribute".parse(), Ok(ChildrenMode::Attribute));
        assert_eq!("own".parse(), Ok(ChildrenMode::Own));
        assert!("children".parse::<ChildrenMode>().is_err());
    }
}
