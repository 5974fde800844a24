//! Turns requests into answer frames: owns the collectors, their caches and the
//! CPU-time source. One `Service` is shared by every connection.

mod cache;
mod details;
mod disks;
mod metrics;
mod processes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_tungstenite::tungstenite::Message;

use crate::collect::processes::ProcessScanner;
use crate::config::Config;
use crate::cputime::{CpuSourceKind, CpuTimeSource, SharedCpuSource};
use crate::host::HostFacts;
use crate::protocol::answer::ErrorAnswer;
use crate::protocol::framing::json_frame;
use crate::protocol::request::{Request, RequestError};
use cache::Cached;
use details::ProcessDetails;
use disks::DisksCollector;
use metrics::MetricsCollector;
use processes::ProcessesCollector;

pub use cache::Collect;

pub struct Service {
    metrics: Cached<MetricsCollector>,
    disks: Cached<DisksCollector>,
    processes: Cached<ProcessesCollector>,
    details: ProcessDetails,
    cpu_source: SharedCpuSource,
    cpu_source_kind: CpuSourceKind,
    /// Connected WebSocket clients; when it drops to zero the CPU-time source is
    /// told to go idle.
    clients: AtomicUsize,
}

/// Held by a connection while it is open.
pub struct ClientGuard(Arc<Service>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            let source = Arc::clone(&self.0.cpu_source);
            // Detaching eBPF programs blocks briefly; keep it off the async workers.
            tokio::task::spawn_blocking(move || crate::sync::lock(&source).idle());
        }
    }
}

impl Service {
    pub fn new(config: &Config, host: HostFacts, cpu_source: Box<dyn CpuTimeSource>) -> Self {
        let collection = &config.collection;
        let cpu_source_kind = cpu_source.kind();
        let cpu_source: SharedCpuSource = Arc::new(Mutex::new(cpu_source));
        let scanner = ProcessScanner::new(
            collection.proc_root.clone(),
            host.clock,
            host.cpus,
            Arc::clone(&cpu_source),
            config.limits.kept_stat_files,
        );
        let details = ProcessDetails::new(
            &collection.proc_root,
            host.clock,
            host.cpus,
            Arc::clone(&cpu_source),
            config.ttls.processes,
        );
        Self {
            metrics: Cached::new(MetricsCollector::new(collection), config.ttls.metrics),
            disks: Cached::new(DisksCollector::new(collection), config.ttls.disks),
            processes: Cached::new(ProcessesCollector::new(scanner), config.ttls.processes),
            details,
            cpu_source,
            cpu_source_kind,
            clients: AtomicUsize::new(0),
        }
    }

    /// Counts a connected client until the guard is dropped.
    pub fn client_connected(self: &Arc<Self>) -> ClientGuard {
        if self.clients.fetch_add(1, Ordering::AcqRel) == 0 {
            let source = Arc::clone(&self.cpu_source);
            // Attaching eBPF programs blocks briefly; keep it off the async workers.
            // Should this run before the `idle` of a client that just left, the
            // next reading attaches again, only later.
            tokio::task::spawn_blocking(move || crate::sync::lock(&source).active());
        }
        ClientGuard(Arc::clone(self))
    }

    pub fn cpu_source_kind(&self) -> CpuSourceKind {
        self.cpu_source_kind
    }

    /// The answer frame to one text frame.
    pub async fn answer_text(&self, text: &str) -> Message {
        match crate::protocol::request::parse(text) {
            Ok(request) => self.answer(request).await,
            Err(error) => request_error(&error, text),
        }
    }

    pub async fn answer(&self, request: Request) -> Message {
        match request {
            Request::Metrics => self.metrics.get().await,
            Request::Disks => self.disks.get().await,
            Request::Processes => self.processes.get().await,
            Request::ProcessMetrics { pid } => self.details.process_metrics(pid).await,
            Request::JournalEntries { pid } => self.details.journal(pid).await,
        }
    }
}

/// How much of a bad request is echoed back in the error answer.
const ECHO_LIMIT: usize = 128;

pub fn request_error(error: &RequestError, received: &str) -> Message {
    error_answer(error.to_string(), received)
}

/// The answer to a request whose handling panicked: the request ends with this
/// error, the connection and the agent go on.
pub fn internal_error(received: &str) -> Message {
    error_answer("internal error while answering (logged by the agent)".to_owned(), received)
}

fn error_answer(error: String, received: &str) -> Message {
    let mut echo: String = received.chars().take(ECHO_LIMIT).collect();
    if echo.len() < received.len() {
        echo.push('…');
    }
    json_frame(&ErrorAnswer { error, request: echo, pid: None })
}
