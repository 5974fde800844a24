//! The agent's description of itself (`get_agent_info`, `{"type":"agent_info"}`,
//! `GET /healthz`): version, uptime, which CPU source counts and why not eBPF, the
//! accounting rule, the collectors that run, TLS and token on or off (never the
//! token), the limits. For operators and integrators; the socktop client never
//! asks for it.

use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::cputime::CpuSourceKind;
use crate::protocol::framing::GZIP_THRESHOLD;

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub agent: &'static str,
    pub version: &'static str,
    /// Whole seconds since the agent started.
    pub uptime_s: u64,
    /// `ebpf` or `proc`.
    pub cpu_source: &'static str,
    /// Why the CPU source is not eBPF; null when it is.
    pub cpu_source_reason: Option<String>,
    /// The eBPF features this kernel lacks, each `feature: why` (e.g. the task
    /// iterator, the tick repair); the eBPF source counts on without them. Empty
    /// when none is missing, and for the /proc source.
    pub cpu_source_degraded: Vec<String>,
    pub cpu_accounting: Accounting,
    pub collectors: Collectors,
    pub tls: bool,
    pub token: bool,
    pub limits: Limits,
    #[serde(skip)]
    started: Instant,
}

/// How `cpu_usage` is computed, in words, as the running source and
/// `--cpu-children` do it.
#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    pub scale: &'static str,
    pub cpu_time: &'static str,
    /// `attribute` or `own` (`--cpu-children`).
    pub children: &'static str,
    /// Where the time of processes that exited between two scans shows.
    pub children_rule: &'static str,
}

/// Which answers collect what. Metrics, disks and processes always run.
#[derive(Debug, Clone, Serialize)]
pub struct Collectors {
    pub metrics: bool,
    pub disks: bool,
    pub processes: bool,
    pub process_details: bool,
    pub journal: bool,
    pub gpu: bool,
    pub temperature: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub idle_timeout_s: u64,
    pub pipelined_requests: usize,
    /// JSON answers to plain commands above this size are gzipped; JSON-form ones never.
    pub gzip_threshold_bytes: usize,
    pub metrics_ttl_ms: u64,
    pub processes_ttl_ms: u64,
    pub disks_ttl_ms: u64,
}

impl AgentInfo {
    /// The description of an agent starting now with `config`, counting CPU time
    /// with `cpu_source` (`fallback` says why it is not eBPF).
    pub fn new(config: &Config, cpu_source: CpuSourceKind, fallback: Option<String>, tls: bool) -> Self {
        let cpu_time = match cpu_source {
            CpuSourceKind::Ebpf => {
                "nanoseconds on CPU from the scheduler (eBPF on sched_switch), the running slice included"
            }
            CpuSourceKind::Proc => "utime + stime of /proc/PID/stat, in clock ticks",
        };
        let (limits, ttls) = (config.limits, config.ttls);
        AgentInfo {
            agent: "socktop_agent",
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: 0,
            cpu_source: cpu_source.as_str(),
            cpu_source_reason: fallback,
            cpu_source_degraded: Vec::new(),
            cpu_accounting: Accounting {
                scale: "share of the whole machine in percent, 0..100: CPU time between two samples \
                        over wall-clock time times the number of CPUs",
                cpu_time,
                children: config.collection.cpu_children.as_str(),
                children_rule: config.collection.cpu_children.meaning(),
            },
            collectors: Collectors {
                metrics: true,
                disks: true,
                processes: true,
                process_details: true,
                journal: true,
                gpu: config.collection.gpu,
                temperature: config.collection.temperature,
            },
            tls,
            token: config.token.is_some(),
            limits: Limits {
                max_connections: limits.max_connections,
                max_message_bytes: limits.max_message_bytes,
                idle_timeout_s: limits.idle_timeout.as_secs(),
                pipelined_requests: limits.pipelined_requests,
                gzip_threshold_bytes: GZIP_THRESHOLD,
                metrics_ttl_ms: ttls.metrics.as_millis() as u64,
                processes_ttl_ms: ttls.processes.as_millis() as u64,
                disks_ttl_ms: ttls.disks.as_millis() as u64,
            },
            started: Instant::now(),
        }
    }

    /// This description with the eBPF features the kernel lacks.
    pub fn with_degraded(self, degraded: &[String]) -> Self {
        AgentInfo { cpu_source_degraded: degraded.to_vec(), ..self }
    }

    /// This description with the uptime of now.
    pub fn now(&self) -> AgentInfo {
        AgentInfo { uptime_s: self.started.elapsed().as_secs(), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_says_on_or_off_and_never_the_token() {
        let config = Config { token: crate::config::Token::new("s3cret-token"), ..Config::default() };
        let info = AgentInfo::new(&config, CpuSourceKind::Proc, Some("not permitted".into()), false);
        let json = serde_json::to_value(info.now()).unwrap();
        assert_eq!(json["token"], true);
        assert_eq!(json["tls"], false);
        assert_eq!(json["cpu_source"], "proc");
        assert_eq!(json["cpu_source_reason"], "not permitted");
        assert_eq!(json["cpu_source_degraded"], serde_json::json!([]));
        assert_eq!(json["limits"]["gzip_threshold_bytes"], 768);
        assert!(!json.to_string().contains("s3cret-token"), "{json}");
    }
}
