//! The agent seen from outside: resident memory, open files and CPU time from
//! `/proc/PID/status`, `/proc/PID/fd` and `/proc/PID/stat` (proc(5)), sampled
//! through the run so the peak is known.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss: u64,
    pub fds: usize,
    pub cpu: Duration,
}

pub struct Watch {
    pid: u32,
    /// Highest RSS and open files seen, each on its own.
    peak: Mutex<Sample>,
}

impl Watch {
    pub fn new(pid: u32) -> Self {
        Self { pid, peak: Mutex::new(Sample::default()) }
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        let rss = testkit::kernel::rss_bytes(self.pid).context("reading VmRSS")?;
        let cpu = testkit::kernel::cpu_time(self.pid).context("reading the CPU time")?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count();
        let sample = Sample { rss, fds, cpu };
        let mut peak = self.peak.lock().unwrap_or_else(|p| p.into_inner());
        peak.rss = peak.rss.max(sample.rss);
        peak.fds = peak.fds.max(sample.fds);
        peak.cpu = sample.cpu;
        Ok(sample)
    }

    /// Sockets the agent holds (its listener among them), from the targets of the
    /// links in `/proc/PID/fd`.
    pub fn sockets(&self) -> anyhow::Result<usize> {
        let mut sockets = 0;
        for entry in std::fs::read_dir(format!("/proc/{}/fd", self.pid))? {
            let target = entry.and_then(|entry| std::fs::read_link(entry.path()));
            sockets += usize::from(target.is_ok_and(|target| target.to_string_lossy().starts_with("socket:")));
        }
        Ok(sockets)
    }

    pub fn peak(&self) -> Sample {
        *self.peak.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Samples every `period` until aborted.
    pub async fn run_every(self: std::sync::Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if self.sample().is_err() {
                return;
            }
        }
    }
}
