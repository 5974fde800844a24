//! Turns requests into answer frames: owns the collectors, their caches of
//! snapshots and the CPU-time source, and renders each snapshot with the
//! protocol's encoders, once per request form. One `Service` is shared by every
//! connection.

mod cache;
mod details;
mod prometheus;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::collect::disks::{DisksCollector, DisksSnapshot};
use crate::collect::metrics::{MetricsCollector, MetricsSnapshot};
use crate::collect::processes::{ProcessScanner, ProcessesSnapshot};
use crate::config::Config;
use crate::cputime::{CpuSourceKind, CpuTimeSource, SharedCpuSource};
use crate::host::HostFacts;
use crate::protocol::agent_info::AgentInfo;
use crate::protocol::answer::{ErrorAnswer, Metrics};
use crate::protocol::frame::Frame;
use crate::protocol::framing::{Framer, json_frame};
use crate::protocol::request::{Form, Incoming, Request};
use crate::sync::lock;
use cache::Cached;
use details::ProcessDetails;
use prometheus::{PrometheusEncoder, SCRAPE_MAX_AGE, ScrapeLease, Snapshots};

pub use cache::{Collected, Rendered};

pub struct Service {
    metrics: Cached<MetricsCollector>,
    disks: Cached<DisksCollector>,
    processes: Cached<ProcessScanner>,
    details: ProcessDetails,
    /// The encoders' buffers and gzip compressor, kept between answers.
    framer: Arc<Mutex<Framer>>,
    prometheus: Arc<PrometheusEncoder>,
    scrape_lease: Mutex<ScrapeLease<ClientGuard>>,
    cpu_source: SharedCpuSource,
    cpu_source_kind: CpuSourceKind,
    /// Watchers: connected WebSocket clients and a scraping Prometheus server (see
    /// [`ScrapeLease`]); when it drops to zero the agent goes idle ([`Service::go_idle`]).
    clients: AtomicUsize,
    /// The agent's description as of start-up.
    info: AgentInfo,
}

/// Held by a connection while it is open.
pub struct ClientGuard(Arc<Service>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            let service = Arc::clone(&self.0);
            // Detaching eBPF programs and waiting for a running collection block
            // briefly; keep them off the async workers.
            tokio::task::spawn_blocking(move || service.go_idle());
        }
    }
}

impl Service {
    /// `info` describes the agent (`get_agent_info`, `/healthz`).
    pub fn new(config: &Config, host: HostFacts, cpu_source: Box<dyn CpuTimeSource>, info: AgentInfo) -> Self {
        let collection = &config.collection;
        let cpu_source_kind = cpu_source.kind();
        let cpu_source: SharedCpuSource = Arc::new(Mutex::new(cpu_source));
        let scanner = ProcessScanner::new(
            collection.proc_root.clone(),
            host.clock,
            host.cpus,
            Arc::clone(&cpu_source),
            config.limits.kept_stat_files,
            collection.cpu_children,
        );
        let framer = Arc::new(Mutex::new(Framer::default()));
        let details = ProcessDetails::new(
            &collection.proc_root,
            host.clock,
            host.cpus,
            Arc::clone(&cpu_source),
            config.ttls.processes,
            Arc::clone(&framer),
        );
        let prometheus =
            PrometheusEncoder::new(config.prometheus, host, collection.proc_root.clone(), Arc::clone(&cpu_source));
        Self {
            metrics: Cached::new(MetricsCollector::new(collection), config.ttls.metrics),
            disks: Cached::new(DisksCollector::new(collection), config.ttls.disks),
            processes: Cached::new(scanner, config.ttls.processes),
            details,
            framer,
            prometheus: Arc::new(prometheus),
            scrape_lease: Mutex::new(ScrapeLease::default()),
            cpu_source,
            cpu_source_kind,
            clients: AtomicUsize::new(0),
            info,
        }
    }

    /// Counts a connected client until the guard is dropped.
    pub fn client_connected(self: &Arc<Self>) -> ClientGuard {
        if self.clients.fetch_add(1, Ordering::AcqRel) == 0 {
            let service = Arc::clone(self);
            // Attaching eBPF programs blocks briefly; keep it off the async workers.
            tokio::task::spawn_blocking(move || service.watched());
        }
        ClientGuard(Arc::clone(self))
    }

    /// The first watcher came: the CPU-time source attaches what it needs while
    /// read. This and [`Service::go_idle`] decide under the source's lock from the
    /// count of watchers as it is then, so whichever of an arriving and a leaving
    /// watcher's transitions runs last leaves the source as the count says.
    fn watched(&self) {
        let mut source = lock(&self.cpu_source);
        if self.clients.load(Ordering::Acquire) > 0 {
            source.active();
        }
    }

    /// The last watcher left: the CPU-time source detaches what it attached for
    /// watchers, and everything kept only to make the next answer cheaper (cached
    /// snapshots and their renderings, scan buffers, kept files, compressors) is
    /// let go and handed back to the system, so an agent nobody watches holds
    /// about what it held before its first client. What answers need to be right
    /// stays: the previous readings of every process and the per-name counters.
    fn go_idle(&self) {
        {
            let mut source = lock(&self.cpu_source);
            // A watcher that came meanwhile keeps the source attached and the
            // caches warm.
            if self.clients.load(Ordering::Acquire) > 0 {
                return;
            }
            source.idle();
        }
        self.metrics.release();
        self.disks.release();
        self.processes.release();
        self.details.release();
        lock(&self.framer).release();
        self.prometheus.release();
        crate::host::heap::return_free_pages();
    }

    pub fn cpu_source_kind(&self) -> CpuSourceKind {
        self.cpu_source_kind
    }

    /// The agent's description, uptime as of now.
    pub fn agent_info(&self) -> AgentInfo {
        self.info.now()
    }

    /// The answer frame to one text frame.
    pub async fn answer_text(&self, text: &str) -> Frame {
        match crate::protocol::request::parse(text) {
            Ok(incoming) => self.answer(incoming).await,
            Err(error) => {
                let answer = ErrorAnswer::unrecognised(error.to_string(), text);
                lock(&self.framer).json(&answer, Form::of(text), &answer.request)
            }
        }
    }

    /// The current processes snapshot (collected, or cached within the TTL like the
    /// list's answers), for encoders other than the socktop frames.
    pub async fn processes(&self) -> Collected<Arc<ProcessesSnapshot>> {
        self.processes.get().await
    }

    /// The current metrics snapshot, shared with the metrics answers.
    pub async fn metrics(&self) -> Collected<MetricsSnapshot> {
        self.metrics.get().await
    }

    /// The current disks snapshot, shared with the disks answers.
    pub async fn disks(&self) -> Collected<DisksSnapshot> {
        self.disks.get().await
    }

    /// One Prometheus scrape of snapshots at most [`SCRAPE_MAX_AGE`] old (shared
    /// with the socktop answers through the caches): the text exposition, gzipped
    /// when `gzip`. A scrape counts as a connected client until about two scrape
    /// intervals later (see [`ScrapeLease`]). None when rendering failed (logged).
    pub async fn prometheus(self: &Arc<Self>, gzip: bool) -> Option<Bytes> {
        let client = self.client_connected();
        lock(&self.scrape_lease).renew(client);
        let started = std::time::Instant::now();
        let (metrics, disks, processes) = tokio::join!(
            self.metrics.get_fresh(SCRAPE_MAX_AGE),
            self.disks.get_fresh(SCRAPE_MAX_AGE),
            self.processes.get_fresh(SCRAPE_MAX_AGE)
        );
        let snapshots = Snapshots { metrics, disks, processes };
        let collection = started.elapsed();
        let encoder = Arc::clone(&self.prometheus);
        // The per-name counters read schedstat files of the processes that ran.
        let rendered = tokio::task::spawn_blocking(move || encoder.render(snapshots, collection, gzip)).await;
        rendered.inspect_err(|e| tracing::error!(error = %e, "rendering a Prometheus scrape panicked")).ok()
    }

    pub async fn answer(&self, incoming: Incoming) -> Frame {
        let Incoming { request, form } = incoming;
        match request {
            Request::Metrics => {
                let collected = self.metrics().await;
                self.render(&collected, request, form, |framer, snapshot| {
                    framer.json(&Metrics::from(snapshot), form, request.command())
                })
            }
            Request::Disks => {
                let collected = self.disks().await;
                self.render(&collected, request, form, |framer, snapshot| {
                    framer.json(&snapshot.disks, form, request.command())
                })
            }
            // Protobuf in both forms (PROTOCOL.md): one rendering serves both.
            Request::Processes => {
                let collected = self.processes().await;
                self.render(&collected, request, Form::Command, |framer, snapshot| framer.processes(snapshot))
            }
            Request::ProcessMetrics { pid } => self.details.process_metrics(pid, form).await,
            Request::JournalEntries { pid } => self.details.journal(pid, form).await,
            Request::AgentInfo => lock(&self.framer).json(&self.agent_info(), form, request.command()),
        }
    }

    /// The frame of a collection for `form`, rendered by the first request that
    /// needs it: `encode` for a snapshot, an error answer for a failed collection.
    fn render<S>(
        &self,
        collected: &Collected<S>,
        request: Request,
        form: Form,
        encode: impl FnOnce(&mut Framer, &S) -> Frame,
    ) -> Frame {
        collected.frame(form, |result| {
            let mut framer = lock(&self.framer);
            match result {
                Ok(snapshot) => encode(&mut framer, snapshot),
                Err(error) => {
                    framer.json(&ErrorAnswer::new(error.to_string(), request.command()), form, request.command())
                }
            }
        })
    }
}

/// The answer to a request whose handling panicked: the request ends with this
/// error, the connection and the agent go on.
pub fn internal_error(received: &str) -> Frame {
    let answer = ErrorAnswer::unrecognised("internal error while answering (logged by the agent)", received);
    json_frame(&answer, Form::of(received), &answer.request)
}
