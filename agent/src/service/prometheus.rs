//! The Prometheus scrape (`GET /metrics`): renders the same snapshots, from the
//! same caches, as the socktop answers (one processes scanner, one CPU-time
//! source), but never older than [`SCRAPE_MAX_AGE`]; keeps the per-command-name
//! counters between scrapes, and memoizes the text (and its gzip) per set of
//! snapshots, so concurrent scrapers share one rendering like every other answer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::cache::Collected;
use crate::collect::disks::DisksSnapshot;
use crate::collect::metrics::MetricsSnapshot;
use crate::collect::process_groups::{CommGroups, top_by_cpu};
use crate::collect::processes::ProcessesSnapshot;
use crate::config::PrometheusLimits;
use crate::cputime::SharedCpuSource;
use crate::cputime::rate::RateRule;
use crate::host::HostFacts;
use crate::host::schedstat::read_schedstat;
use crate::protocol::framing::Gzip;
use crate::protocol::prometheus::{AgentHealth, HostFigures, ProcessFigures, Scrape, encode};
use crate::sync::lock;

/// The oldest snapshot a scrape renders; an older one (kept for the socktop
/// answers' TTL, up to 1 s) is collected anew. Prometheus stamps each sample with
/// the time the scrape began, and `rate()` divides counter deltas by those stamps:
/// a value as old as the TTL read at one scrape and fresh at the next skews a
/// `rate()` over a few scrape intervals by up to a TTL's worth (with a 1 s interval
/// and the 1 s processes TTL, half the scrapes repeated the one before and a busy
/// loop's `rate(...[5s])` swung between 0.5 and 1 CPU). At this bound the skew is
/// at most 50 ms of a window's span (under 2% of a 5 s window at a 1 s interval),
/// while scrapers that come together (an HA pair, a client in between) still share
/// one collection and one rendering.
pub const SCRAPE_MAX_AGE: Duration = Duration::from_millis(50);

/// The three snapshots one scrape renders.
pub struct Snapshots {
    pub metrics: Collected<MetricsSnapshot>,
    pub disks: Collected<DisksSnapshot>,
    pub processes: Collected<Arc<ProcessesSnapshot>>,
}

impl Snapshots {
    fn same_as(&self, other: &Snapshots) -> bool {
        Arc::ptr_eq(&self.metrics, &other.metrics)
            && Arc::ptr_eq(&self.disks, &other.disks)
            && Arc::ptr_eq(&self.processes, &other.processes)
    }
}

/// One rendering, with its gzip made by the first scraper that asks for it.
struct Rendering {
    of: Snapshots,
    text: Bytes,
    gzip: OnceLock<Bytes>,
}

pub struct PrometheusEncoder {
    limits: PrometheusLimits,
    host: HostFacts,
    proc_root: PathBuf,
    cpu_source: SharedCpuSource,
    state: Mutex<State>,
}

struct State {
    groups: CommGroups,
    /// When the processes snapshot last added to `groups` was taken: each is added
    /// once, and an older one (a concurrent scrape's) not after a newer, so counters
    /// never go back.
    counted_at: Option<Instant>,
    last: Option<Arc<Rendering>>,
    schedstat_buffer: Vec<u8>,
    gzip: Gzip,
}

impl PrometheusEncoder {
    pub fn new(limits: PrometheusLimits, host: HostFacts, proc_root: PathBuf, cpu_source: SharedCpuSource) -> Self {
        let rate = RateRule::new(host.cpus, host.clock.ticks_per_second());
        let state = State {
            groups: CommGroups::new(limits.max_comm_names, rate),
            counted_at: None,
            last: None,
            schedstat_buffer: Vec::new(),
            gzip: Gzip::default(),
        };
        Self { limits, host, proc_root, cpu_source, state: Mutex::new(state) }
    }

    /// The text of `snapshots`, gzipped when `gzip`; `collection` is how long
    /// getting them took. Reads schedstat and hwmon files: run it off the async
    /// workers.
    pub fn render(&self, snapshots: Snapshots, collection: Duration, gzip: bool) -> Bytes {
        let rendering = self.rendering(snapshots, collection);
        if !gzip {
            return rendering.text.clone();
        }
        rendering.gzip.get_or_init(|| Bytes::from(lock(&self.state).gzip.compress(&rendering.text))).clone()
    }

    fn rendering(&self, snapshots: Snapshots, collection: Duration) -> Arc<Rendering> {
        let started = Instant::now();
        let mut state = lock(&self.state);
        if let Some(last) = state.last.as_ref().filter(|last| last.of.same_as(&snapshots)) {
            return Arc::clone(last);
        }
        let processes = snapshots.processes.value().as_ref().ok();
        let fresh = |processes: &&Arc<ProcessesSnapshot>| state.counted_at.is_none_or(|at| processes.at > at);
        if let Some(processes) = processes.filter(fresh) {
            let State { groups, schedstat_buffer, .. } = &mut *state;
            let proc_root = &self.proc_root;
            groups.update(&processes.processes, &processes.comm_cpu_ns, |pid| {
                read_schedstat(proc_root, pid, schedstat_buffer)
            });
            state.counted_at = Some(processes.at);
        }
        let listed = processes.map_or(&[][..], |p| &p.processes[..]);
        let top = top_by_cpu(listed, self.limits.top_processes);
        let comms: Vec<_> = state.groups.totals().cloned().collect();
        let metrics = snapshots.metrics.value().as_ref().ok();
        let disks = snapshots.disks.value().as_ref().ok();
        // Read here, once per metrics snapshot, so only scrapes pay for these files.
        let hwmon = metrics.map(|m| m.hwmon_temps.read()).unwrap_or_default();
        let mut agent = self.health(listed.len() as u64, state.groups.schedstat_reads as u64);
        agent.scrape_seconds = (collection + started.elapsed()).as_secs_f64();
        let text = encode(&Scrape {
            host: HostFigures {
                cpu: &metrics.map(|m| m.cpu_ticks.clone()).unwrap_or_default(),
                ticks_per_second: self.host.clock.ticks_per_second(),
                boot_time_unix: self.host.clock.boot_time_unix(),
                memory: &metrics.map(|m| m.memory).unwrap_or_default(),
                networks: metrics.map_or(&[][..], |m| &m.networks),
                filesystems: disks.map_or(&[][..], |d| &d.disks),
                gpus: metrics.and_then(|m| m.gpus.as_deref()).unwrap_or_default(),
                hwmon: &hwmon,
            },
            processes: ProcessFigures { comms: &comms, top: &top },
            agent: &agent,
        });
        let rendering = Arc::new(Rendering { of: snapshots, text: Bytes::from(text), gzip: OnceLock::new() });
        state.last = Some(Arc::clone(&rendering));
        rendering
    }

    /// Drops the last rendering, the compressor and the read buffer; the per-name
    /// counters stay (they must never go back).
    pub fn release(&self) {
        let mut state = lock(&self.state);
        state.last = None;
        state.schedstat_buffer = Vec::new();
        state.gzip = Gzip::default();
        state.groups.release();
    }

    fn health(&self, processes: u64, schedstat_reads: u64) -> AgentHealth {
        let source = lock(&self.cpu_source);
        AgentHealth {
            version: env!("CARGO_PKG_VERSION"),
            cpu_source: source.kind().as_str(),
            fallback_reason: source.fallback().map(ToString::to_string),
            ebpf_errors: source.error_counts(),
            scrape_seconds: 0.0,
            processes,
            schedstat_reads,
        }
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
