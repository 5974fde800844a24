//! Command-line flags and environment variables, turned into a validated
//! [`Config`]. The only place that reads the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

use crate::config::{ChildrenMode, Collection, Config, Limits, PrometheusLimits, Token, Ttls};

/// On-demand host-metrics agent for the socktop TUI.
///
/// Serves ws://HOST:PORT/ws (wss:// with --enableSSL). Per-process CPU time comes
/// from an eBPF program when it can be loaded (root or CAP_BPF+CAP_PERFMON), from
/// /proc otherwise.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Port to listen on [default: 3000, or 8443 with TLS].
    #[arg(short, long, env = "SOCKTOP_PORT")]
    pub port: Option<u16>,

    /// Address to listen on.
    #[arg(long, env = "SOCKTOP_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Serve wss:// with a self-signed certificate kept under
    /// $XDG_DATA_HOME/socktop_agent/tls.
    #[arg(long = "enableSSL", alias = "enable-ssl", env = "SOCKTOP_ENABLE_SSL", action = ArgAction::Set, value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub enable_ssl: bool,

    /// Folder of cert.pem and key.pem for TLS (created if missing).
    #[arg(long, env = "SOCKTOP_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Require ?token=VALUE on /ws.
    #[arg(long, env = "SOCKTOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Count per-process CPU time with eBPF when possible (off: always /proc).
    #[arg(long, env = "SOCKTOP_AGENT_EBPF", action = ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub ebpf: bool,

    /// Where the processes list shows the CPU time of processes that exited
    /// between two requests: `attribute` adds what they ran since the previous
    /// request to their nearest listed ancestor (the shell of a build shows the
    /// build's compilers), `own` shows each process's own time only.
    #[arg(long, env = "SOCKTOP_AGENT_CPU_CHILDREN", default_value = "attribute", value_parser = parse_children_mode)]
    pub cpu_children: ChildrenMode,

    /// Collect GPU metrics.
    #[arg(long, env = "SOCKTOP_AGENT_GPU", action = ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub gpu: bool,

    /// Collect CPU and disk temperatures.
    #[arg(long, env = "SOCKTOP_AGENT_TEMP", action = ArgAction::Set, value_parser = BoolishValueParser::new(), default_value = "true")]
    pub temp: bool,

    /// How long a metrics answer is reused, in ms (0: collect on every request).
    #[arg(long, env = "SOCKTOP_AGENT_METRICS_TTL_MS", default_value_t = 250)]
    pub metrics_ttl_ms: u64,

    /// How long a processes answer is reused, in ms.
    #[arg(long, env = "SOCKTOP_AGENT_PROCESSES_TTL_MS", default_value_t = 1000)]
    pub processes_ttl_ms: u64,

    /// How long a disks answer is reused, in ms.
    #[arg(long, env = "SOCKTOP_AGENT_DISKS_TTL_MS", default_value_t = 1000)]
    pub disks_ttl_ms: u64,

    /// Root of procfs to read (e.g. /host/proc in a container).
    #[arg(long, env = "SOCKTOP_PROC_ROOT", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Root of sysfs to read.
    #[arg(long, env = "SOCKTOP_SYS_ROOT", default_value = "/sys")]
    pub sys_root: PathBuf,

    /// Most clients served at once.
    #[arg(long, env = "SOCKTOP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Command names with Prometheus series of their own (/metrics); processes
    /// with other names are summed into comm="other".
    #[arg(long, env = "SOCKTOP_PROMETHEUS_COMM_NAMES", default_value_t = PrometheusLimits::default().max_comm_names)]
    pub prometheus_comm_names: usize,

    /// Processes using the most CPU exported to Prometheus with a pid label
    /// (0: none).
    #[arg(long, env = "SOCKTOP_PROMETHEUS_TOP_PROCESSES", default_value_t = PrometheusLimits::default().top_processes)]
    pub prometheus_top_processes: usize,

    /// Async worker threads [default: 0: the connections are served on one
    /// thread; collecting and rendering always run on a pool of threads that
    /// exit when unused].
    #[arg(long, env = "SOCKTOP_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl Cli {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.enable_ssl { 8443 } else { 3000 })
    }

    /// The TLS folder, when TLS is on.
    pub fn tls_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        if !self.enable_ssl {
            return Ok(None);
        }
        if let Some(dir) = &self.tls_dir {
            return Ok(Some(dir.clone()));
        }
        let env_path = |name| std::env::var_os(name).map(PathBuf::from);
        crate::tls::default_dir(env_path("XDG_DATA_HOME"), env_path("HOME"))
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("TLS is on but neither XDG_DATA_HOME nor HOME is set; pass --tls-dir"))
    }

    pub fn config(&self) -> Config {
        Config {
            ttls: Ttls {
                metrics: Duration::from_millis(self.metrics_ttl_ms),
                processes: Duration::from_millis(self.processes_ttl_ms),
                disks: Duration::from_millis(self.disks_ttl_ms),
            },
            collection: Collection {
                proc_root: self.proc_root.clone(),
                sys_root: self.sys_root.clone(),
                gpu: self.gpu,
                temperature: self.temp,
                cpu_children: self.cpu_children,
            },
            limits: Limits { max_connections: self.max_connections.max(1), ..Limits::default() },
            prometheus: PrometheusLimits {
                max_comm_names: self.prometheus_comm_names,
                top_processes: self.prometheus_top_processes,
            },
            token: self.token.clone().and_then(Token::new),
        }
    }
}

fn parse_children_mode(text: &str) -> Result<ChildrenMode, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_the_original_agent_are_accepted() {
        let cli = Cli::try_parse_from(["socktop_agent", "-p", "4000", "--enableSSL"]).unwrap();
        assert_eq!(cli.port(), 4000);
        assert!(cli.enable_ssl);
        let cli = Cli::try_parse_from(["socktop_agent", "--enableSSL"]).unwrap();
        assert_eq!(cli.port(), 8443);
        let cli = Cli::try_parse_from(["socktop_agent", "--gpu", "0", "--temp", "off", "--ebpf", "false"]).unwrap();
        assert!(!cli.gpu && !cli.temp && !cli.ebpf);
    }
}
