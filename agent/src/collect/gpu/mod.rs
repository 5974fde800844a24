//! GPUs: AMD and Intel cards from the DRM sysfs tree ([`sysfs`]), NVIDIA cards through
//! NVML loaded at run time ([`nvidia`]), on a thread of its own with a time bound
//! ([`worker`]).
//!
//! Cards are looked for when the [`GpuCollector`] is built, so a disabled collector
//! costs nothing. On a host without GPUs the DRM tree is listed again only every
//! [`REPROBE_AFTER`] and NVML loaded again only after its own, longer bound
//! ([`worker::Timing`]); collections in between touch nothing and run on the async
//! worker ([`GpuCollector::never_waits`]).

mod nvidia;
pub(crate) mod sysfs;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::collect::probe::{JudgedAt, Probed, REPROBE_AFTER};

/// What a source measured of one GPU (the protocol puts it in the wire shape).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub name: String,
    pub vendor: Option<&'static str>,
    /// Busy share, 0..100.
    pub utilization_pct: Option<u32>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub temp_c: Option<f32>,
}

/// Failure counters, shared with the NVML thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    sysfs_read_failures: AtomicU64,
    nvml_load_attempts: AtomicU64,
    nvml_load_failures: AtomicU64,
    nvml_query_failures: AtomicU64,
    nvml_timeouts: AtomicU64,
}

/// A snapshot of the collector's counters, for logs and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// sysfs GPU attributes that existed but could not be read or parsed.
    pub sysfs_read_failures: u64,
    /// Times `libnvidia-ml.so.1` was loaded and initialised (or tried).
    pub nvml_load_attempts: u64,
    pub nvml_load_failures: u64,
    /// NVML queries that failed for another reason than "not supported".
    pub nvml_query_failures: u64,
    /// Collections that gave up waiting for NVML.
    pub nvml_timeouts: u64,
}

impl Counters {
    fn snapshot(&self) -> GpuStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GpuStats {
            sysfs_read_failures: get(&self.sysfs_read_failures),
            nvml_load_attempts: get(&self.nvml_load_attempts),
            nvml_load_failures: get(&self.nvml_load_failures),
            nvml_query_failures: get(&self.nvml_query_failures),
            nvml_timeouts: get(&self.nvml_timeouts),
        }
    }
}

/// Every GPU of the host. Blocking while it has a GPU or a probe is due: call it off
/// the async runtime's workers unless [`never_waits`](Self::never_waits) says so.
pub struct GpuCollector {
    sys_root: PathBuf,
    /// The AMD and Intel cards; found when at least one is.
    sysfs: Probed<Vec<sysfs::DrmGpu>>,
    nvml: Option<worker::BackendWorker>,
    counters: Arc<Counters>,
    judged: JudgedAt,
}

impl GpuCollector {
    /// Finds the AMD and Intel cards under `sys_root` and, when `nvml` is set, starts
    /// the NVML thread; NVML itself is loaded by the first [`collect`](Self::collect)
    /// on that thread, so a slow driver does not hold up start-up.
    pub fn new(sys_root: &Path, nvml: bool) -> Self {
        let counters = Arc::new(Counters::default());
        let backend = if nvml { nvidia::backend(counters.clone()) } else { None };
        Self::with_backend(sys_root, backend, worker::Timing::default(), counters, Instant::now())
    }

    fn with_backend(
        sys_root: &Path,
        backend: Option<Box<dyn worker::GpuBackend>>,
        timing: worker::Timing,
        counters: Arc<Counters>,
        now: Instant,
    ) -> Self {
        Self {
            sys_root: sys_root.to_path_buf(),
            sysfs: Probed::first(now, REPROBE_AFTER, || find_sysfs_gpus(sys_root, &counters)),
            nvml: backend.and_then(|b| worker::BackendWorker::spawn(b, timing, counters.clone())),
            counters,
            judged: JudgedAt::default(),
        }
    }

    /// Every GPU now, sysfs cards first; `None` when there is none at all.
    pub fn collect(&mut self) -> Option<Vec<GpuReading>> {
        let now = self.judged.take();
        self.collect_at(now)
    }

    /// True when the next [`collect`](Self::collect) touches no file and waits for
    /// nothing: no card in sysfs and no listing due, and NVML absent (or off) with no
    /// new attempt due.
    pub fn never_waits(&mut self) -> bool {
        let now = self.judged.judge();
        self.sysfs.is_idle_at(now) && self.nvml.as_ref().is_none_or(|nvml| nvml.is_idle_at(now))
    }

    fn collect_at(&mut self, now: Instant) -> Option<Vec<GpuReading>> {
        let (sys_root, counters) = (&self.sys_root, &self.counters);
        let cards = self.sysfs.get(now, || find_sysfs_gpus(sys_root, counters)).map_or(&[][..], |cards| &cards[..]);
        let mut gpus: Vec<GpuReading> = cards.iter().map(|g| g.read(counters)).collect();
        gpus.extend(self.poll_nvml(now));
        (!gpus.is_empty()).then_some(gpus)
    }

    fn poll_nvml(&mut self, now: Instant) -> Vec<GpuReading> {
        let Some(worker) = &mut self.nvml else {
            return Vec::new();
        };
        worker.poll(now).unwrap_or_else(|worker::WorkerGone| {
            tracing::error!("the NVML thread died; NVIDIA GPUs are no longer reported");
            self.nvml = None;
            Vec::new()
        })
    }

    /// The failure counters so far.
    pub fn stats(&self) -> GpuStats {
        self.counters.snapshot()
    }
}

/// One listing of the DRM tree; `None` when it holds no AMD or Intel GPU.
fn find_sysfs_gpus(sys_root: &Path, counters: &Counters) -> Option<Vec<sysfs::DrmGpu>> {
    let cards = sysfs::discover(sys_root, counters);
    if cards.is_empty() {
        tracing::debug!(root = %sys_root.display(), retry_s = REPROBE_AFTER.as_secs(), "no AMD or Intel GPU in sysfs");
        return None;
    }
    Some(cards)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::worker::tests::{FakeBackend, gpu};
    use super::worker::{Timing, Unavailable};
    use super::*;

    fn fake_timing() -> Timing {
        Timing {
            wait: Duration::from_secs(2),
            reprobe_after: Duration::from_secs(300),
            stale_after: Duration::from_secs(60),
        }
    }

    fn fake_backend(answer: Result<Vec<GpuReading>, Unavailable>) -> Box<dyn worker::GpuBackend> {
        Box::new(FakeBackend { reads: Arc::default(), answers: Arc::new(Mutex::new(vec![answer])), gate: None })
    }

    #[test]
    fn reports_sysfs_and_nvml_gpus_together() {
        let dir = tempfile::tempdir().unwrap();
        sysfs::tests::amd_card(dir.path());
        let backend = fake_backend(Ok(vec![gpu("NVIDIA H100")]));
        let mut collector =
            GpuCollector::with_backend(dir.path(), Some(backend), fake_timing(), Arc::default(), Instant::now());
        let names: Vec<String> = collector.collect().unwrap().into_iter().map(|g| g.name).collect();
        assert_eq!(names, ["AMD Radeon RX 6800/6800 XT/6900 XT", "NVIDIA H100"]);
    }

    #[test]
    fn no_gpu_at_all_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let backend = fake_backend(Err(Unavailable("no library".into())));
        let mut collector =
            GpuCollector::with_backend(dir.path(), Some(backend), fake_timing(), Arc::default(), Instant::now());
        assert_eq!(collector.collect(), None);
        let mut without_nvml =
            GpuCollector::with_backend(dir.path(), None, fake_timing(), Arc::default(), Instant::now());
        assert_eq!(without_nvml.collect(), None);
    }

    /// This build host has no GPU: the real collector answers `None` at once and loads
    /// NVML only once, however often it is asked.
    #[test]
    fn real_host_without_gpu_answers_none_and_does_not_retry_nvml() {
        let started = Instant::now();
        let mut collector = GpuCollector::new(Path::new("/sys"), true);
        let first = collector.collect();
        let second = collector.collect();
        let stats = collector.stats();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        if cfg!(feature = "nvidia") {
            assert_eq!(stats.nvml_load_attempts, 1, "{stats:?}");
        }
        if collector.sysfs.found().is_none() && stats.nvml_load_failures == stats.nvml_load_attempts {
            assert_eq!((first, second), (None, None));
            assert!(collector.never_waits(), "nothing found: later collections touch nothing");
        }
    }

    #[test]
    fn a_card_that_appears_later_is_found_after_the_bound_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut collector = GpuCollector::with_backend(dir.path(), None, fake_timing(), Arc::default(), start);
        assert!(collector.never_waits());
        assert_eq!(collector.collect_at(start), None);
        // amdgpu bound a second later. Had the collector listed the DRM tree before
        // the bound, it would have found the card.
        sysfs::tests::amd_card(dir.path());
        for seconds in [1, 30, 59] {
            let now = start + Duration::from_secs(seconds);
            assert!(collector.sysfs.is_idle_at(now));
            assert_eq!(collector.collect_at(now), None, "looked again after {seconds} s");
        }
        let found = collector.collect_at(start + REPROBE_AFTER).unwrap();
        assert_eq!(found[0].name, "AMD Radeon RX 6800/6800 XT/6900 XT");
        assert!(!collector.never_waits(), "a card's files are read on each collection");
    }

    #[test]
    fn never_waits_once_nvml_said_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let backend = fake_backend(Err(Unavailable("no library".into())));
        let mut collector =
            GpuCollector::with_backend(dir.path(), Some(backend), fake_timing(), Arc::default(), Instant::now());
        assert!(!collector.never_waits(), "NVML is first loaded on a blocking thread");
        assert_eq!(collector.collect(), None);
        assert!(collector.never_waits());
    }
}
