//! GPUs: AMD and Intel cards from the DRM sysfs tree ([`sysfs`]), NVIDIA cards through
//! NVML loaded at run time ([`nvidia`]), on a thread of its own with a time bound
//! ([`worker`]).
//!
//! Everything is found when the [`GpuCollector`] is built; nothing is touched before
//! that, so a disabled collector costs nothing.

mod nvidia;
pub(crate) mod sysfs;
mod worker;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::answer::Gpu;

/// What a source measured of one GPU, before it is put in the wire shape.
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

impl GpuReading {
    /// The wire shape: each value once under a name the client decodes and once under
    /// the README's name, which the client ignores (PROTOCOL.md, "Gpu object").
    pub fn into_answer(self) -> Gpu {
        Gpu {
            name: self.name,
            vendor: self.vendor.map(str::to_owned),
            utilization_gpu_pct: self.utilization_pct,
            mem_used_bytes: self.mem_used_bytes,
            mem_total_bytes: self.mem_total_bytes,
            temp_c: self.temp_c,
            usage: self.utilization_pct,
            memory_total: self.mem_total_bytes,
            memory_used: self.mem_used_bytes,
        }
    }
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

/// Every GPU of the host. Blocking: call it off the async runtime's workers.
pub struct GpuCollector {
    sysfs: Vec<sysfs::DrmGpu>,
    nvml: Option<worker::BackendWorker>,
    counters: Arc<Counters>,
}

impl GpuCollector {
    /// Finds the AMD and Intel cards under `sys_root` and, when `nvml` is set, starts
    /// the NVML thread; NVML itself is loaded by the first [`collect`](Self::collect)
    /// on that thread, so a slow driver does not hold up start-up.
    pub fn new(sys_root: &Path, nvml: bool) -> Self {
        let counters = Arc::new(Counters::default());
        let backend = if nvml { nvidia::backend(counters.clone()) } else { None };
        Self::with_backend(sys_root, backend, worker::Timing::default(), counters)
    }

    fn with_backend(
        sys_root: &Path,
        backend: Option<Box<dyn worker::GpuBackend>>,
        timing: worker::Timing,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            sysfs: sysfs::discover(sys_root, &counters),
            nvml: backend.and_then(|b| worker::BackendWorker::spawn(b, timing, counters.clone())),
            counters,
        }
    }

    /// Every GPU now, sysfs cards first; `None` when there is none at all.
    pub fn collect(&mut self) -> Option<Vec<Gpu>> {
        let mut gpus: Vec<Gpu> = self.sysfs.iter().map(|g| g.read(&self.counters).into_answer()).collect();
        gpus.extend(self.poll_nvml().into_iter().map(GpuReading::into_answer));
        (!gpus.is_empty()).then_some(gpus)
    }

    fn poll_nvml(&mut self) -> Vec<GpuReading> {
        let Some(worker) = &mut self.nvml else {
            return Vec::new();
        };
        worker.poll().unwrap_or_else(|worker::WorkerGone| {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use serde::Deserialize;

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
        let mut collector = GpuCollector::with_backend(dir.path(), Some(backend), fake_timing(), Arc::default());
        let names: Vec<String> = collector.collect().unwrap().into_iter().map(|g| g.name).collect();
        assert_eq!(names, ["AMD Radeon RX 6800/6800 XT/6900 XT", "NVIDIA H100"]);
    }

    #[test]
    fn no_gpu_at_all_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let backend = fake_backend(Err(Unavailable("no library".into())));
        let mut collector = GpuCollector::with_backend(dir.path(), Some(backend), fake_timing(), Arc::default());
        assert_eq!(collector.collect(), None);
        let mut without_nvml = GpuCollector::with_backend(dir.path(), None, fake_timing(), Arc::default());
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
        if collector.sysfs.is_empty() && stats.nvml_load_failures == stats.nvml_load_attempts {
            assert_eq!((first, second), (None, None));
        }
    }

    /// The client's view of a Gpu (socktop_connector 1.60.1, `GpuInfo`): serde rejects
    /// an object with two aliases of one field as a duplicate.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only decoding matters")]
    struct ClientGpu {
        name: Option<String>,
        vendor: Option<String>,
        #[serde(default, alias = "utilization_gpu_pct", alias = "gpu_util_pct", alias = "gpu_utilization")]
        utilization: Option<f32>,
        #[serde(default, alias = "mem_used_bytes", alias = "vram_used_bytes")]
        mem_used: Option<u64>,
        #[serde(default, alias = "mem_total_bytes", alias = "vram_total_bytes")]
        mem_total: Option<u64>,
        #[serde(default, alias = "temp_c", alias = "temperature_c")]
        temp: Option<f32>,
        // The README's names, which the real client ignores.
        usage: Option<u32>,
        memory_total: Option<u64>,
        memory_used: Option<u64>,
    }

    const ALIAS_GROUPS: [&[&str]; 4] = [
        &["utilization", "utilization_gpu_pct", "gpu_util_pct", "gpu_utilization"],
        &["mem_used", "mem_used_bytes", "vram_used_bytes"],
        &["mem_total", "mem_total_bytes", "vram_total_bytes"],
        &["temp", "temp_c", "temperature_c"],
    ];

    fn assert_one_alias_per_value(gpu: Gpu) {
        let json = serde_json::to_value(&gpu).unwrap();
        let object = json.as_object().unwrap();
        for group in ALIAS_GROUPS {
            let present = group.iter().filter(|name| object.contains_key(**name)).count();
            assert_eq!(present, 1, "{group:?} in {json}");
        }
        for readme in ["usage", "memory_total", "memory_used", "temp_c"] {
            assert!(object.contains_key(readme), "README field {readme} missing in {json}");
        }
        let text = serde_json::to_string(&gpu).unwrap();
        serde_json::from_str::<ClientGpu>(&text).unwrap_or_else(|e| panic!("client rejects {text}: {e}"));
    }

    #[test]
    fn gpu_serialises_one_alias_per_value() {
        let full = GpuReading {
            name: "AMD Radeon RX 7600".into(),
            vendor: Some("AMD"),
            utilization_pct: Some(12),
            mem_used_bytes: Some(1 << 30),
            mem_total_bytes: Some(8 << 30),
            temp_c: Some(48.5),
        };
        let json = serde_json::to_value(full.clone().into_answer()).unwrap();
        assert_eq!(json["utilization_gpu_pct"], 12);
        assert_eq!(json["usage"], 12);
        assert_eq!(json["mem_used_bytes"], json["memory_used"]);
        assert_eq!(json["mem_total_bytes"], json["memory_total"]);
        assert_one_alias_per_value(full.into_answer());
        assert_one_alias_per_value(gpu("bare").into_answer());
    }
}
