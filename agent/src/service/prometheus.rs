//! The Prometheus scrape (`GET /metrics`): reads the host through the same
//! collectors as the socktop answers (one processes scanner, one CPU-time source,
//! the same kept procfs files), keeps the per-command-name counters between
//! scrapes, and renders the text once per collection, shared by concurrent
//! scrapes like every other answer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use super::disks::DisksCollector;
use super::metrics::MetricsCollector;
use super::processes::ProcessesCollector;
use crate::collect::process_groups::{CommGroups, ProcessSample, top_by_cpu};
use crate::config::PrometheusLimits;
use crate::cputime::SharedCpuSource;
use crate::cputime::rate::RateRule;
use crate::host::HostFacts;
use crate::host::clock::HostClock;
use crate::host::schedstat::read_schedstat;
use crate::protocol::prometheus::{AgentHealth, HostFigures, ProcessFigures, Scrape, encode};
use crate::sync::lock;

pub struct PrometheusCollector {
    metrics: Arc<Mutex<MetricsCollector>>,
    disks: Arc<Mutex<DisksCollector>>,
    processes: Arc<Mutex<ProcessesCollector>>,
    cpu_source: SharedCpuSource,
    clock: HostClock,
    proc_root: PathBuf,
    limits: PrometheusLimits,
    groups: CommGroups,
    schedstat_buffer: Vec<u8>,
}

impl PrometheusCollector {
    pub fn new(
        metrics: Arc<Mutex<MetricsCollector>>,
        disks: Arc<Mutex<DisksCollector>>,
        processes: Arc<Mutex<ProcessesCollector>>,
        cpu_source: SharedCpuSource,
        host: HostFacts,
        proc_root: PathBuf,
        limits: PrometheusLimits,
    ) -> Self {
        Self {
            metrics,
            disks,
            processes,
            cpu_source,
            clock: host.clock,
            proc_root,
            limits,
            groups: CommGroups::new(limits.max_comm_names, RateRule::new(host.cpus, host.clock.ticks_per_second())),
            schedstat_buffer: Vec::new(),
        }
    }

    /// Collects and renders one scrape.
    pub fn scrape(&mut self) -> String {
        let started = Instant::now();
        let host = lock(&self.metrics).counters();
        let filesystems = lock(&self.disks).filesystems();
        let (top, processes) = self.sample_processes();
        let comms: Vec<_> = self.groups.totals().cloned().collect();
        let agent = self.health(started, processes);
        let scrape = Scrape {
            host: HostFigures {
                cpu: &host.cpu,
                ticks_per_second: self.clock.ticks_per_second(),
                boot_time_unix: self.clock.boot_time_unix(),
                memory: &host.memory,
                networks: &host.networks,
                filesystems: &filesystems,
                gpus: &host.gpus,
            },
            processes: ProcessFigures { comms: &comms, top: &top },
            agent: &agent,
        };
        encode(&scrape)
    }

    /// Scans the processes through the shared scanner, adds the scan to the
    /// per-name counters and returns the top list and how many were listed.
    fn sample_processes(&mut self) -> (Vec<crate::collect::process_groups::TopProcess>, u64) {
        let mut collector = lock(&self.processes);
        let Some(scanner) = collector.scan_for_samples() else { return (Vec::new(), 0) };
        let samples: Vec<ProcessSample<'_>> = scanner.samples().collect();
        let (proc_root, buffer) = (&self.proc_root, &mut self.schedstat_buffer);
        self.groups.update(&samples, |pid| read_schedstat(proc_root, pid, buffer));
        (top_by_cpu(&samples, self.limits.top_processes), samples.len() as u64)
    }

    fn health(&self, started: Instant, processes: u64) -> AgentHealth {
        let source = lock(&self.cpu_source);
        AgentHealth {
            version: env!("CARGO_PKG_VERSION"),
            cpu_source: source.kind().as_str(),
            fallback_reason: source.fallback_reason().map(str::to_owned),
            ebpf_errors: source.error_counts(),
            scrape_seconds: started.elapsed().as_secs_f64(),
            processes,
            schedstat_reads: self.groups.schedstat_reads as u64,
        }
    }
}

impl Collect for PrometheusCollector {
    /// The text, in a binary frame for the cache; the HTTP route sends its bytes.
    fn collect(&mut self) -> Message {
        Message::binary(self.scrape().into_bytes())
    }
}
