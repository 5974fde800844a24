//! The fast metrics answer (`get_metrics`): CPU shares, memory, network counters,
//! host name, CPU temperature and GPUs, collected together on request.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use crate::collect::gpu::GpuCollector;
use crate::collect::temperature::CpuTemperature;
use crate::collect::{cpu, memory, network};
use crate::config::Collection;
use crate::protocol::answer::Metrics;
use crate::protocol::framing::json_frame;

pub struct MetricsCollector {
    proc_root: PathBuf,
    cpu: cpu::CpuUsage,
    /// `None` when temperatures are off or the host has no CPU sensor.
    temperature: Option<CpuTemperature>,
    /// `None` when GPU collection is off.
    gpus: Option<GpuCollector>,
}

impl MetricsCollector {
    /// Takes the first CPU reading now, so the first answer already covers an
    /// interval. Disabled collectors are never built, so they touch no file.
    pub fn new(collection: &Collection) -> Self {
        let proc_root = &collection.proc_root;
        let baseline = read_logged(&proc_root.join("stat")).map(|t| cpu::parse_proc_stat(&t)).unwrap_or_default();
        let temperature = collection.temperature.then(|| CpuTemperature::discover(&collection.sys_root)).flatten();
        let gpus = collection.gpu.then(|| GpuCollector::new(&collection.sys_root, cfg!(feature = "nvidia")));
        Self { proc_root: proc_root.to_path_buf(), cpu: cpu::CpuUsage::new(baseline), temperature, gpus }
    }

    pub fn sample(&mut self) -> Metrics {
        let stat = self.read("stat").map(|t| cpu::parse_proc_stat(&t)).unwrap_or_default();
        let shares = self.cpu.update(stat);
        let memory = self.read("meminfo").map(|t| memory::parse_meminfo(&t)).unwrap_or_default();
        let networks = self.read("net/dev").map(|t| network::parse_net_dev(&t)).unwrap_or_default();
        Metrics {
            sampled_at_ms: epoch_ms(),
            cpu_total: shares.total,
            cpu_per_core: shares.per_core,
            mem_total: memory.mem_total,
            mem_used: memory.mem_used,
            swap_total: memory.swap_total,
            swap_used: memory.swap_used,
            hostname: self.read("sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
            cpu_temp_c: self.temperature.as_mut().and_then(CpuTemperature::read),
            disks: Vec::new(),
            networks,
            top_processes: Vec::new(),
            gpus: self.gpus.as_mut().and_then(GpuCollector::collect),
            process_count: None,
        }
    }

    fn read(&self, file: &str) -> Option<String> {
        read_logged(&self.proc_root.join(file))
    }
}

impl Collect for MetricsCollector {
    fn collect(&mut self) -> Message {
        json_frame(&self.sample())
    }
}

/// Reads a text file, logging (not failing) when it cannot be read: a metrics
/// answer with one part missing is more useful than none.
pub(crate) fn read_logged(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .inspect_err(|e| tracing::debug!(path = %path.display(), error = %e, "read failed"))
        .ok()
}

pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
