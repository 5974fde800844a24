//! The fast metrics answer (`get_metrics`): CPU shares, memory, network counters,
//! host name, CPU temperature and GPUs, collected together on request.
//!
//! Clients ask every 500 ms, so the three procfs files stay open and are re-read in
//! place ([`KeptFile`]): an open, a buffer allocation and a close per file per
//! request cost more than the reads.

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use crate::collect::gpu::GpuCollector;
use crate::collect::temperature::CpuTemperature;
use crate::collect::{cpu, memory, network};
use crate::config::Collection;
use crate::host::clock::unix_now;
use crate::host::procfs::KeptFile;
use crate::protocol::answer::Metrics;
use crate::protocol::framing::json_frame;

pub struct MetricsCollector {
    stat: KeptFile,
    meminfo: KeptFile,
    net_dev: KeptFile,
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
        let kept = |file: &str| KeptFile::new(proc_root.join(file));
        let mut stat = kept("stat");
        let baseline = read_kept(&mut stat).map(cpu::parse_proc_stat).unwrap_or_default();
        let temperature = collection.temperature.then(|| CpuTemperature::discover(&collection.sys_root)).flatten();
        let gpus = collection.gpu.then(|| GpuCollector::new(&collection.sys_root, cfg!(feature = "nvidia")));
        Self {
            stat,
            meminfo: kept("meminfo"),
            net_dev: kept("net/dev"),
            cpu: cpu::CpuUsage::new(baseline),
            temperature,
            gpus,
        }
    }

    pub fn sample(&mut self) -> Metrics {
        let stat = read_kept(&mut self.stat).map(cpu::parse_proc_stat).unwrap_or_default();
        let shares = self.cpu.update(stat);
        let memory = read_kept(&mut self.meminfo).map(memory::parse_meminfo).unwrap_or_default();
        let networks = read_kept(&mut self.net_dev).map(network::parse_net_dev).unwrap_or_default();
        Metrics {
            sampled_at_ms: unix_now().as_millis() as u64,
            cpu_total: shares.total,
            cpu_per_core: shares.per_core,
            mem_total: memory.mem_total,
            mem_used: memory.mem_used,
            swap_total: memory.swap_total,
            swap_used: memory.swap_used,
            hostname: hostname(),
            cpu_temp_c: self.temperature.as_mut().and_then(CpuTemperature::read),
            disks: Vec::new(),
            networks,
            top_processes: Vec::new(),
            gpus: self.gpus.as_mut().and_then(GpuCollector::collect),
            process_count: None,
        }
    }
}

/// The host name from uname(2). It is what `/proc/sys/kernel/hostname` shows
/// (both give the caller's UTS namespace, whatever procfs is mounted), for one
/// syscall instead of a sysctl read.
fn hostname() -> String {
    // SAFETY: utsname is plain bytes, valid when zeroed; uname fills it.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `names` is a valid, writable utsname.
    if unsafe { libc::uname(&mut names) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "uname failed");
        return String::new();
    }
    let bytes = names.nodename.map(|c| c as u8);
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads a kept file, logging (not failing) when it cannot be read: a metrics
/// answer with one part missing is more useful than none.
fn read_kept(file: &mut KeptFile) -> Option<&str> {
    file.read().inspect_err(|e| tracing::debug!(error = %e, "read failed")).ok()
}

impl Collect for MetricsCollector {
    fn collect(&mut self) -> Message {
        json_frame(&self.sample())
    }

    /// Without temperatures (hwmon drivers may wait on a bus) and GPUs (NVML may
    /// wait on the driver), a sample is four procfs reads.
    fn never_waits(&mut self) -> bool {
        self.temperature.is_none() && self.gpus.is_none()
    }
}
