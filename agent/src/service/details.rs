//! Per-process answers: `get_process_metrics:PID` and `get_journal_entries:PID`.
//! Both are cached per pid in bounded caches, so a client walking through pids
//! cannot grow the agent's memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_tungstenite::tungstenite::Message;

use crate::collect::journal::journal_entries;
use crate::collect::pid_cache::BoundedPidCache;
use crate::collect::process_detail::{DetailError, read_process_detail};
use crate::cputime::rate::{CpuReading, RateRule};
use crate::cputime::{ScannedCpu, SharedCpuSource};
use crate::host::clock::{HostClock, unix_now};
use crate::host::stat::parse_stat;
use crate::protocol::answer::{ErrorAnswer, ProcessDetail, ProcessMetricsResponse};
use crate::protocol::framing::json_frame;
use crate::sync::lock;

/// Most pids whose answers and CPU readings are kept.
const CACHED_PIDS: usize = 64;
/// A CPU reading older than this is not used as the start of an interval.
const READING_MAX_AGE: Duration = Duration::from_secs(60);
/// With no earlier reading of a pid, the first answer measures over this long.
const FIRST_INTERVAL: Duration = Duration::from_millis(200);
/// Journal entries per answer, and how long a journal answer is reused (the
/// client asks every 5 s; journalctl costs tens of milliseconds).
const JOURNAL_LIMIT: usize = 100;
const JOURNAL_TTL: Duration = Duration::from_secs(5);

pub struct ProcessDetails {
    inner: Arc<Inner>,
    answers: Mutex<BoundedPidCache<Message>>,
    journals: Mutex<BoundedPidCache<Message>>,
}

struct Inner {
    proc_root: std::path::PathBuf,
    clock: HostClock,
    rate: RateRule,
    cpu_source: SharedCpuSource,
    /// The last CPU reading of each pid asked about, to measure the next interval.
    readings: Mutex<BoundedPidCache<CpuReading>>,
}

impl ProcessDetails {
    pub fn new(
        proc_root: &std::path::Path,
        clock: HostClock,
        cpus: usize,
        cpu_source: SharedCpuSource,
        ttl: Duration,
    ) -> Self {
        let inner = Inner {
            proc_root: proc_root.to_path_buf(),
            clock,
            rate: RateRule::new(cpus, clock.ticks_per_second()),
            cpu_source,
            readings: Mutex::new(BoundedPidCache::new(CACHED_PIDS, READING_MAX_AGE)),
        };
        Self {
            inner: Arc::new(inner),
            answers: Mutex::new(BoundedPidCache::new(CACHED_PIDS, ttl)),
            journals: Mutex::new(BoundedPidCache::new(CACHED_PIDS, JOURNAL_TTL)),
        }
    }

    pub async fn process_metrics(&self, pid: u32) -> Message {
        if let Some(frame) = lock(&self.answers).get(pid) {
            return frame.clone();
        }
        let inner = Arc::clone(&self.inner);
        let frame = match tokio::task::spawn_blocking(move || inner.detail(pid)).await {
            Ok(Ok(detail)) => json_frame(&ProcessMetricsResponse { process: detail, cached_at: unix_now().as_secs() }),
            Ok(Err(DetailError::NotFound(_))) => pid_error("get_process_metrics", pid, format!("no process {pid}")),
            Ok(Err(e)) => pid_error("get_process_metrics", pid, e.to_string()),
            Err(e) => pid_error("get_process_metrics", pid, format!("collection failed: {e}")),
        };
        lock(&self.answers).insert(pid, frame.clone());
        frame
    }

    pub async fn journal(&self, pid: u32) -> Message {
        if let Some(frame) = lock(&self.journals).get(pid) {
            return frame.clone();
        }
        let frame = json_frame(&journal_entries(pid, JOURNAL_LIMIT).await);
        lock(&self.journals).insert(pid, frame.clone());
        frame
    }
}

impl Inner {
    /// Reads the detail and fills in its CPU share since the previous reading of the
    /// same process (same pid and start time).
    fn detail(&self, pid: u32) -> Result<ProcessDetail, DetailError> {
        let previous = lock(&self.readings).get(pid).copied();
        let before = match previous {
            Some(reading) => reading,
            None => {
                let first = self.read_cpu(pid)?;
                std::thread::sleep(FIRST_INTERVAL);
                first
            }
        };
        let mut detail = read_process_detail(&self.proc_root, pid, &self.clock)?;
        let now = self.read_cpu(pid)?;
        if let Some(share) = self.rate.share(&before, &now) {
            detail.cpu_usage = share;
        }
        lock(&self.readings).insert(pid, now);
        Ok(detail)
    }

    /// The process's cumulative CPU time from the agent's CPU-time source.
    fn read_cpu(&self, pid: u32) -> Result<CpuReading, DetailError> {
        let bytes =
            std::fs::read(self.proc_root.join(pid.to_string()).join("stat")).map_err(|_| DetailError::NotFound(pid))?;
        let stat = parse_stat(&bytes).map_err(|source| DetailError::Stat { pid, source })?;
        let mut out = Vec::with_capacity(1);
        let scanned = [ScannedCpu { pid, ticks: stat.utime + stat.stime }];
        if let Err(e) = lock(&self.cpu_source).cumulative_ns(&scanned, &mut out) {
            tracing::debug!(pid, error = %e, "reading the CPU time of one process failed");
        }
        let start_time_ns = self.clock.ticks_to_ns(stat.start_time);
        Ok(CpuReading { start_time_ns, cpu_ns: out.first().copied().unwrap_or(0), at: Instant::now() })
    }
}

fn pid_error(request: &str, pid: u32, error: String) -> Message {
    json_frame(&ErrorAnswer { error, request: request.to_owned(), pid: Some(pid) })
}
