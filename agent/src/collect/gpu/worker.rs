//! Runs a blocking GPU backend (NVML) on a thread of its own and waits for it with a
//! time bound, so a stuck driver delays at most one collection and never stalls the
//! ones after it.
//!
//! One query is in flight at a time. When it outlives the wait, the collection gets
//! the last readings (while they are recent) and later collections only look for the
//! late answer without waiting. When the backend says it is unavailable (no library,
//! no device), it is not asked again before `reprobe_after`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use super::{Counters, GpuReading};

/// Why a backend reports no GPU now: the library is absent, or there is no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub String);

/// A blocking source of GPU readings, owned by the worker thread.
pub(crate) trait GpuBackend: Send + 'static {
    /// Every GPU the backend sees now, loading its library first if needed.
    fn read(&mut self) -> Result<Vec<GpuReading>, Unavailable>;
}

/// The time bounds of the worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long a collection waits for a fresh answer.
    pub wait: Duration,
    /// How long after an "unavailable" answer the backend is asked again.
    pub reprobe_after: Duration,
    /// How long the last readings stand in for an answer that is late.
    pub stale_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            // NVML queries take milliseconds; its first initialisation can take about a
            // second on a GPU without persistence mode. A late answer is picked up by
            // the next collection, so this only bounds the stall.
            wait: Duration::from_millis(1000),
            // Less often than a sysfs listing: an attempt is a dlopen search, and
            // where the library is installed without a device, the driver's
            // initialisation (up to about a second).
            reprobe_after: Duration::from_secs(300),
            stale_after: Duration::from_secs(10),
        }
    }
}

type Reply = Result<Vec<GpuReading>, Unavailable>;

/// The worker thread is gone (the backend panicked); its GPUs are not reported again.
#[derive(Debug)]
pub(crate) struct WorkerGone;

/// The collector's end of the worker thread.
pub(crate) struct BackendWorker {
    requests: Sender<()>,
    replies: Receiver<Reply>,
    in_flight: bool,
    skip_until: Option<Instant>,
    last: Option<(Instant, Vec<GpuReading>)>,
    timing: Timing,
    counters: Arc<Counters>,
    reported_unavailable: bool,
}

/// The worker thread: one backend read per request, until the collector is dropped.
fn serve(mut backend: Box<dyn GpuBackend>, requests: Receiver<()>, replies: Sender<Reply>) {
    while requests.recv().is_ok() {
        if replies.send(backend.read()).is_err() {
            break;
        }
    }
}

impl BackendWorker {
    /// Starts the thread; the backend is first used on the first [`poll`](Self::poll).
    pub(crate) fn spawn(backend: Box<dyn GpuBackend>, timing: Timing, counters: Arc<Counters>) -> Option<Self> {
        let (requests, request_rx) = mpsc::channel();
        let (reply_tx, replies) = mpsc::channel();
        let spawned =
            thread::Builder::new().name("gpu-nvml".into()).spawn(move || serve(backend, request_rx, reply_tx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the NVML thread; NVIDIA GPUs will not be reported");
            return None;
        }
        Some(Self {
            requests,
            replies,
            in_flight: false,
            skip_until: None,
            last: None,
            timing,
            counters,
            reported_unavailable: false,
        })
    }

    /// True when [`poll`](Self::poll) at `now` asks the backend nothing: it said it
    /// is unavailable and the next attempt is not due.
    pub(crate) fn is_idle_at(&self, now: Instant) -> bool {
        !self.in_flight && self.skip_until.is_some_and(|until| now < until)
    }

    /// The backend's GPUs now, or the last known ones when it is late.
    pub(crate) fn poll(&mut self, now: Instant) -> Result<Vec<GpuReading>, WorkerGone> {
        if self.skip_until.is_some_and(|until| now < until) {
            return Ok(Vec::new());
        }
        // After a timeout the old query is still running: look for its answer, do not
        // wait again, so a stuck driver costs one bounded stall, not one per request.
        let wait = if self.in_flight { Duration::ZERO } else { self.timing.wait };
        if !self.in_flight {
            self.requests.send(()).map_err(|_| WorkerGone)?;
            self.in_flight = true;
        }
        match self.replies.recv_timeout(wait) {
            Ok(reply) => {
                self.in_flight = false;
                Ok(self.accept(reply))
            }
            Err(RecvTimeoutError::Timeout) => {
                if !wait.is_zero() {
                    self.counters.nvml_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        waited_ms = wait.as_millis(),
                        "NVML did not answer in time; using the last readings"
                    );
                }
                Ok(self.last_known(now))
            }
            Err(RecvTimeoutError::Disconnected) => Err(WorkerGone),
        }
    }

    fn accept(&mut self, reply: Reply) -> Vec<GpuReading> {
        match reply {
            Ok(gpus) => {
                self.last = Some((Instant::now(), gpus.clone()));
                gpus
            }
            Err(why) => {
                self.last = None;
                self.skip_until = Some(Instant::now() + self.timing.reprobe_after);
                self.report_unavailable(&why);
                Vec::new()
            }
        }
    }

    fn report_unavailable(&mut self, why: &Unavailable) {
        let retry_s = self.timing.reprobe_after.as_secs();
        if self.reported_unavailable {
            tracing::trace!(%why, "NVML still unavailable");
        } else {
            tracing::debug!(%why, retry_s, "NVML unavailable; NVIDIA GPUs are not reported");
            self.reported_unavailable = true;
        }
    }

    fn last_known(&self, now: Instant) -> Vec<GpuReading> {
        match &self.last {
            Some((at, gpus)) if now.duration_since(*at) <= self.timing.stale_after => gpus.clone(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A backend whose answers the test scripts, counting the reads, and that can be
    /// held up (a stuck driver) until the test releases it.
    pub(crate) struct FakeBackend {
        pub reads: Arc<AtomicU64>,
        pub answers: Arc<Mutex<Vec<Reply>>>,
        pub gate: Option<Receiver<()>>,
    }

    impl GpuBackend for FakeBackend {
        fn read(&mut self) -> Result<Vec<GpuReading>, Unavailable> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() }
        }
    }

    pub(crate) fn gpu(name: &str) -> GpuReading {
        GpuReading { name: name.into(), ..GpuReading::default() }
    }

    fn timing(wait_ms: u64, reprobe: Duration) -> Timing {
        Timing { wait: Duration::from_millis(wait_ms), reprobe_after: reprobe, stale_after: Duration::from_secs(60) }
    }

    fn fake(answers: Vec<Reply>, gate: Option<Receiver<()>>) -> (FakeBackend, Arc<AtomicU64>) {
        let reads = Arc::new(AtomicU64::new(0));
        let backend = FakeBackend { reads: reads.clone(), answers: Arc::new(Mutex::new(answers)), gate };
        (backend, reads)
    }

    #[test]
    fn unavailable_backend_is_not_asked_again_before_the_reprobe() {
        let (backend, reads) = fake(vec![Err(Unavailable("no library".into()))], None);
        let counters = Arc::new(Counters::default());
        let mut worker =
            BackendWorker::spawn(Box::new(backend), timing(1000, Duration::from_secs(300)), counters).unwrap();
        assert!(!worker.is_idle_at(Instant::now()), "not asked yet");
        assert!(worker.poll(Instant::now()).unwrap().is_empty());
        assert!(worker.is_idle_at(Instant::now()));
        assert!(worker.poll(Instant::now()).unwrap().is_empty());
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert!(!worker.is_idle_at(Instant::now() + Duration::from_secs(300)), "asked again after the reprobe");
    }

    #[test]
    fn unavailable_backend_is_asked_again_after_the_reprobe() {
        let (backend, reads) = fake(vec![Err(Unavailable("no device".into())), Ok(vec![gpu("late")])], None);
        let counters = Arc::new(Counters::default());
        let mut worker = BackendWorker::spawn(Box::new(backend), timing(1000, Duration::ZERO), counters).unwrap();
        assert!(worker.poll(Instant::now()).unwrap().is_empty());
        assert_eq!(worker.poll(Instant::now()).unwrap(), vec![gpu("late")]);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    /// Polls until `expected` comes: an answer later than the wait (a loaded
    /// machine, a driver back from a hang) is picked up by a later poll.
    fn poll_until(worker: &mut BackendWorker, expected: &[GpuReading]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.poll(Instant::now()).unwrap() != expected {
            assert!(Instant::now() < deadline, "the answer never arrived");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stuck_backend_costs_one_bounded_wait_then_answers_late() {
        let (release, gate) = mpsc::channel();
        let (backend, reads) = fake(vec![Ok(vec![gpu("a")]), Ok(vec![gpu("b")])], Some(gate));
        let counters = Arc::new(Counters::default());
        let mut worker = BackendWorker::spawn(Box::new(backend), timing(50, Duration::ZERO), counters.clone()).unwrap();
        release.send(()).unwrap();
        poll_until(&mut worker, &[gpu("a")]);
        let timeouts = counters.nvml_timeouts.load(Ordering::Relaxed);

        // The second query hangs: one bounded wait, then the last readings.
        let started = Instant::now();
        assert_eq!(worker.poll(Instant::now()).unwrap(), vec![gpu("a")]);
        assert!(started.elapsed() < Duration::from_secs(2));
        // While it still hangs, collections do not wait at all and ask nothing new.
        let started = Instant::now();
        assert_eq!(worker.poll(Instant::now()).unwrap(), vec![gpu("a")]);
        assert!(started.elapsed() < Duration::from_millis(40));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(counters.nvml_timeouts.load(Ordering::Relaxed), timeouts + 1);

        // The driver comes back: the late answer is used.
        release.send(()).unwrap();
        poll_until(&mut worker, &[gpu("b")]);
    }

    #[test]
    fn stale_readings_are_dropped() {
        let (release, gate) = mpsc::channel();
        let (backend, _) = fake(vec![Ok(vec![gpu("a")])], Some(gate));
        let counters = Arc::new(Counters::default());
        let timing = Timing { stale_after: Duration::ZERO, ..timing(20, Duration::ZERO) };
        let mut worker = BackendWorker::spawn(Box::new(backend), timing, counters).unwrap();
        release.send(()).unwrap();
        poll_until(&mut worker, &[gpu("a")]);
        thread::sleep(Duration::from_millis(2));
        assert!(worker.poll(Instant::now()).unwrap().is_empty(), "a stuck backend's old readings expire");
        drop(release);
    }

    #[test]
    fn a_dead_worker_is_reported() {
        struct Panics;
        impl GpuBackend for Panics {
            fn read(&mut self) -> Result<Vec<GpuReading>, Unavailable> {
                panic!("backend bug")
            }
        }
        // The wait ends as soon as the thread is gone; a panic that prints its
        // backtrace on a loaded machine can outlast a short one.
        let mut worker =
            BackendWorker::spawn(Box::new(Panics), timing(30_000, Duration::ZERO), Arc::default()).unwrap();
        assert!(worker.poll(Instant::now()).is_err());
    }
}
