//! The fast metrics (`get_metrics`): CPU shares, memory, network counters, host
//! name, CPU temperature and GPUs, collected together on request (and the hwmon
//! temperature inputs, which only a Prometheus scrape reads).
//!
//! Clients ask every 500 ms, so the three procfs files stay open and are re-read in
//! place ([`KeptFile`]): an open, a buffer allocation and a close per file per
//! request cost more than the reads.

use std::time::SystemTime;

use super::gpu::{GpuCollector, GpuReading};
use super::memory::MemoryInfo;
use super::network::Network;
use super::temperature::CpuTemperature;
use super::temperature::hwmon_temps::HwmonTemperatures;
use super::{Collect, CollectError, cpu, memory, network};
use crate::config::Collection;
use crate::host::procfs::KeptFile;

/// One reading of the host's fast metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// When it was read (wall clock); clients compute rates from it.
    pub sampled_at: SystemTime,
    /// Busy share of the whole machine since the reading before, 0..100.
    pub cpu_total: f32,
    /// Busy share of each logical CPU, 0..100, in CPU order.
    pub cpu_per_core: Vec<f32>,
    /// The cumulative ticks per CPU and mode the shares come from (Prometheus
    /// exports counters, not shares).
    pub cpu_ticks: cpu::CpuStat,
    /// Memory and swap, in bytes.
    pub memory: MemoryInfo,
    pub hostname: String,
    /// The CPU package temperature; None when off or the host has no sensor.
    pub cpu_temp_c: Option<f32>,
    /// Every hwmon temperature input (none when temperatures are off), read only
    /// by the Prometheus scrape that renders this snapshot.
    pub hwmon_temps: HwmonTemperatures,
    /// Cumulative byte counters per network interface.
    pub networks: Vec<Network>,
    /// None when GPU collection is off or no GPU was found.
    pub gpus: Option<Vec<GpuReading>>,
}

pub struct MetricsCollector {
    stat: KeptFile,
    meminfo: KeptFile,
    net_dev: KeptFile,
    cpu: cpu::CpuUsage,
    /// `None` when temperatures are off.
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
        let temperature = collection.temperature.then(|| CpuTemperature::new(&collection.sys_root));
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

    pub fn sample(&mut self) -> MetricsSnapshot {
        let stat = read_kept(&mut self.stat).map(cpu::parse_proc_stat).unwrap_or_default();
        let shares = self.cpu.update(stat.clone());
        MetricsSnapshot {
            sampled_at: SystemTime::now(),
            cpu_total: shares.total,
            cpu_per_core: shares.per_core,
            cpu_ticks: stat,
            memory: read_kept(&mut self.meminfo).map(memory::parse_meminfo).unwrap_or_default(),
            hostname: hostname(),
            cpu_temp_c: self.temperature.as_mut().and_then(CpuTemperature::read),
            hwmon_temps: self.temperature.as_ref().map(CpuTemperature::hwmon_temperatures).unwrap_or_default(),
            networks: read_kept(&mut self.net_dev).map(network::parse_net_dev).unwrap_or_default(),
            gpus: self.gpus.as_mut().and_then(GpuCollector::collect),
        }
    }
}

/// The host name from uname(2). It is what `/proc/sys/kernel/hostname` shows
/// (both give the caller's UTS namespace, whatever procfs is mounted), for one
/// syscall instead of a sysctl read.
fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Reads a kept file, logging (not failing) when it cannot be read: a metrics
/// answer with one part missing is more useful than none.
fn read_kept(file: &mut KeptFile) -> Option<&str> {
    file.read().inspect_err(|e| tracing::debug!(error = %e, "read failed")).ok()
}

impl Collect for MetricsCollector {
    type Snapshot = MetricsSnapshot;

    fn collect(&mut self) -> Result<MetricsSnapshot, CollectError> {
        Ok(self.sample())
    }

    /// Without a temperature sensor (hwmon drivers may wait on a bus) and GPUs (NVML
    /// may wait on the driver) to read, a sample is four procfs reads.
    fn never_waits(&mut self) -> bool {
        self.temperature.as_mut().is_none_or(CpuTemperature::never_waits)
            && self.gpus.as_mut().is_none_or(GpuCollector::never_waits)
    }
}
