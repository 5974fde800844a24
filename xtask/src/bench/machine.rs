//! What the figures were measured on: CPU, cores, kernel, memory, load and the
//! host's own process count.

use std::fmt;

pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    /// Online CPUs (`cpuN` lines of `/proc/stat`): the whole machine the agents'
    /// CPU shares are of, whatever CPUs the bench may use.
    pub online_cpus: usize,
    pub kernel: String,
    pub mem_gib: f64,
    pub processes: usize,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
            .unwrap_or("unknown")
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            online_cpus: online_cpus(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            mem_gib: mem_kib / (1024.0 * 1024.0),
            processes: process_count(),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} logical CPUs ({}), {:.1} GiB, Linux {}, {} processes",
            self.cores, self.cpu_model, self.mem_gib, self.kernel, self.processes
        )
    }
}

fn online_cpus() -> usize {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    socktop_agent::collect::cpu::parse_proc_stat(&stat).cores.len().max(1)
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Processes (not threads) on the host now: the numeric entries of `/proc`.
pub fn process_count() -> usize {
    std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.filter_map(Result::ok).filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok())).count()
    })
}
