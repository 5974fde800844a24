//! The Prometheus scrape (`GET /metrics`): reads the host through the same
//! collectors as the socktop answers (one processes scanner, one CPU-time source,
//! the same kept procfs files), keeps the per-command-name counters between
//! scrapes, and renders the text once per collection, shared by concurrent
//! scrapes like every other answer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Keeps the agent counted as watched between the scrapes of a Prometheus server,
/// as a connected socktop client keeps it: the CPU-time source keeps its periodic
/// repair attached and (with the eBPF source) records exits only while someone
/// watches, and a server that scrapes every 15 s is watching. Each scrape holds a
/// client guard until twice the time since the scrape before has passed (at least
/// [`LEASE_MIN`], at most [`LEASE_MAX`]; [`LEASE_FIRST`] after a first scrape);
/// the next scrape takes over. Once scrapes stop, the lease ends and the agent goes
/// idle: the one timer exists only while someone scrapes.
pub struct ScrapeLease<G: Send + 'static> {
    last_scrape: Option<tokio::time::Instant>,
    holder: Option<tokio::task::JoinHandle<()>>,
    _guard: std::marker::PhantomData<fn(G)>,
}

pub const LEASE_MIN: Duration = Duration::from_secs(5);
pub const LEASE_MAX: Duration = Duration::from_secs(600);
pub const LEASE_FIRST: Duration = Duration::from_secs(60);

impl<G: Send + 'static> Default for ScrapeLease<G> {
    fn default() -> Self {
        Self { last_scrape: None, holder: None, _guard: std::marker::PhantomData }
    }
}

impl<G: Send + 'static> ScrapeLease<G> {
    /// Holds `guard` for the lease of a scrape now; the previous scrape's guard is
    /// released (after `guard` is taken, so the count of watchers never drops to
    /// zero in between).
    pub fn renew(&mut self, guard: G) {
        let now = tokio::time::Instant::now();
        let lease = match self.last_scrape {
            Some(previous) => (now.duration_since(previous) * 2).clamp(LEASE_MIN, LEASE_MAX),
            None => LEASE_FIRST,
        };
        self.last_scrape = Some(now);
        if let Some(previous) = self.holder.take() {
            previous.abort();
        }
        self.holder = Some(tokio::spawn(async move {
            tokio::time::sleep_until(now + lease).await;
            drop(guard);
        }));
    }
}

impl<G: Send + 'static> Drop for ScrapeLease<G> {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the guards alive.
    struct Watcher(Arc<AtomicUsize>);

    impl Watcher {
        fn new(count: &Arc<AtomicUsize>) -> Self {
            count.fetch_add(1, Ordering::SeqCst);
            Watcher(Arc::clone(count))
        }
    }

    impl Drop for Watcher {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_keeps_the_agent_watched_for_twice_the_scrape_interval() {
        let watchers = Arc::new(AtomicUsize::new(0));
        let mut lease = ScrapeLease::default();
        lease.renew(Watcher::new(&watchers));
        tokio::time::advance(Duration::from_secs(15)).await;
        lease.renew(Watcher::new(&watchers));
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 1, "the new scrape took over from the first");
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 1, "still within 2 x 15 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 0, "scrapes stopped: the agent is idle again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_scrape_holds_for_a_minute_and_the_lease_is_bounded() {
        let watchers = Arc::new(AtomicUsize::new(0));
        let mut lease = ScrapeLease::default();
        lease.renew(Watcher::new(&watchers));
        tokio::time::advance(LEASE_FIRST - Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 0);
        // Two scrapes an hour apart: the lease is at most LEASE_MAX.
        lease.renew(Watcher::new(&watchers));
        tokio::time::advance(Duration::from_secs(3600)).await;
        lease.renew(Watcher::new(&watchers));
        tokio::time::advance(LEASE_MAX + Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(watchers.load(Ordering::SeqCst), 0);
    }
}
