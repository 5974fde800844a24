//! Per-process answers: `get_process_metrics:PID` and `get_journal_entries:PID`.
//! Both are cached per pid in bounded caches, so a client walking through pids
//! cannot grow the agent's memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cache::Rendered;

use crate::collect::journal::journal_entries;
use crate::collect::pid_cache::BoundedPidCache;
use crate::collect::process_detail::{DetailError, read_process_detail};
use crate::cputime::rate::{CpuReading, RateRule};
use crate::cputime::{ScannedCpu, SharedCpuSource};
use crate::host::clock::{HostClock, unix_now};
use crate::host::stat::parse_stat;
use crate::protocol::answer::{ErrorAnswer, JournalResponse, ProcessDetail, ProcessMetricsResponse};
use crate::protocol::frame::Frame;
use crate::protocol::framing::Framer;
use crate::protocol::request::{Form, Request};
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
    /// Answers with their renderings, per pid.
    answers: Mutex<BoundedPidCache<Arc<Rendered<DetailAnswer>>>>,
    journals: Mutex<BoundedPidCache<Arc<Rendered<JournalResponse>>>>,
    framer: Arc<Mutex<Framer>>,
}

/// A process's detail, or why there is none.
type DetailAnswer = Result<ProcessMetricsResponse, ErrorAnswer>;

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
        framer: Arc<Mutex<Framer>>,
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
            framer,
        }
    }

    pub async fn process_metrics(&self, pid: u32, form: Form) -> Frame {
        let request = Request::ProcessMetrics { pid }.command();
        let cached = lock(&self.answers).get(pid).cloned();
        let answer = match cached {
            Some(answer) => answer,
            None => {
                let inner = Arc::clone(&self.inner);
                let error = |error: String| Err(ErrorAnswer::for_pid(error, request, pid));
                let answer = match tokio::task::spawn_blocking(move || inner.detail(pid)).await {
                    Ok(Ok(process)) => Ok(ProcessMetricsResponse { process, cached_at: unix_now().as_secs() }),
                    Ok(Err(DetailError::NotFound(_))) => error(format!("no process {pid}")),
                    Ok(Err(e)) => error(e.to_string()),
                    Err(e) => error(format!("collection failed: {e}")),
                };
                let answer = Arc::new(Rendered::new(answer));
                lock(&self.answers).insert(pid, Arc::clone(&answer));
                answer
            }
        };
        answer.frame(form, |answer| match answer {
            Ok(response) => lock(&self.framer).json(response, form, request),
            Err(error) => lock(&self.framer).json(error, form, request),
        })
    }

    /// Drops the rendered answers; the CPU readings stay, to measure the next
    /// interval of a process asked about again.
    pub fn release(&self) {
        lock(&self.answers).clear();
        lock(&self.journals).clear();
    }

    pub async fn journal(&self, pid: u32, form: Form) -> Frame {
        let cached = lock(&self.journals).get(pid).cloned();
        let journal = match cached {
            Some(journal) => journal,
            None => {
                let journal = Arc::new(Rendered::new(journal_entries(pid, JOURNAL_LIMIT).await));
                lock(&self.journals).insert(pid, Arc::clone(&journal));
                journal
            }
        };
        let request = Request::JournalEntries { pid }.command();
        journal.frame(form, |journal| lock(&self.framer).json(journal, form, request))
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
