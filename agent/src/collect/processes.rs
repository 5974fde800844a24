//! The processes list (`get_processes`): every process in `/proc` with its name,
//! resident memory and CPU share since the previous scan. CPU time comes from the
//! agent's [`CpuTimeSource`] (eBPF or /proc); the scan itself reads only
//! `/proc/PID/stat`, once per process.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::collect::stat::parse_stat;
use crate::cputime::{CpuTimeSource, ScannedCpu, cpu_percent};
use crate::protocol::pb;

/// The CPU-time source, shared by the processes list and the per-process detail.
pub type SharedCpuSource = Arc<Mutex<Box<dyn CpuTimeSource>>>;

/// What the previous scan saw of a process, to compute its CPU share.
#[derive(Debug, Clone, Copy)]
struct Previous {
    start_time: u64,
    cpu_ns: u64,
}

/// Counts of what went wrong in the last scan, for the debug log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanIssues {
    /// Processes that exited between the directory listing and the read.
    pub vanished: usize,
    /// Files that did not parse.
    pub unparsable: usize,
}

pub struct ProcessScanner {
    proc_root: PathBuf,
    page_size: u64,
    cpus: usize,
    cpu_source: SharedCpuSource,
    previous: HashMap<u32, Previous>,
    previous_at: Option<Instant>,
    pub last_issues: ScanIssues,
}

/// One process as read from its stat file.
struct Scanned {
    pid: u32,
    name: String,
    start_time: u64,
    rss_bytes: u64,
}

impl ProcessScanner {
    pub fn new(proc_root: PathBuf, page_size: u64, cpus: usize, cpu_source: SharedCpuSource) -> Self {
        Self {
            proc_root,
            page_size,
            cpus,
            cpu_source,
            previous: HashMap::new(),
            previous_at: None,
            last_issues: ScanIssues::default(),
        }
    }

    /// Reads every process and its CPU share since the previous call (0 on the first).
    pub fn scan(&mut self) -> std::io::Result<pb::Processes> {
        let (processes, cpu) = self.read_all()?;
        let now = Instant::now();
        let wall = self.previous_at.map(|at| now.duration_since(at));
        let cumulative = self.cumulative_ns(&cpu);

        let mut next = HashMap::with_capacity(processes.len());
        let rows = processes
            .into_iter()
            .zip(cumulative)
            .map(|(process, cpu_ns)| {
                let before = self.previous.get(&process.pid).filter(|p| p.start_time == process.start_time);
                let cpu_usage = match (before, wall) {
                    (Some(before), Some(wall)) => cpu_percent(cpu_ns.saturating_sub(before.cpu_ns), wall, self.cpus),
                    _ => 0.0,
                };
                next.insert(process.pid, Previous { start_time: process.start_time, cpu_ns });
                pb::Process { pid: process.pid, name: process.name, cpu_usage, mem_bytes: process.rss_bytes }
            })
            .collect::<Vec<_>>();
        self.previous = next;
        self.previous_at = Some(now);
        Ok(pb::Processes { process_count: rows.len() as u64, rows })
    }

    fn read_all(&mut self) -> std::io::Result<(Vec<Scanned>, Vec<ScannedCpu>)> {
        let mut issues = ScanIssues::default();
        let mut processes = Vec::new();
        let mut cpu = Vec::new();
        let mut buf = Vec::with_capacity(512);
        for entry in std::fs::read_dir(&self.proc_root)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            buf.clear();
            let read = File::open(entry.path().join("stat")).and_then(|mut f| f.read_to_end(&mut buf));
            if read.is_err() {
                issues.vanished += 1;
                continue;
            }
            match parse_stat(&buf) {
                Ok(stat) => {
                    cpu.push(ScannedCpu { pid, ticks: stat.utime + stat.stime });
                    processes.push(Scanned {
                        pid,
                        name: stat.name(),
                        start_time: stat.start_time,
                        rss_bytes: stat.rss_pages * self.page_size,
                    });
                }
                // An empty read is a process that exited after the open.
                Err(_) if buf.is_empty() => issues.vanished += 1,
                Err(_) => issues.unparsable += 1,
            }
        }
        self.last_issues = issues;
        Ok((processes, cpu))
    }

    /// Cumulative CPU ns per scanned process; on a source failure every process
    /// reads as its previous value, so the scan still answers with 0% rather than
    /// failing the request.
    fn cumulative_ns(&self, cpu: &[ScannedCpu]) -> Vec<u64> {
        let mut out = Vec::with_capacity(cpu.len());
        let mut source = match self.cpu_source.lock() {
            Ok(source) => source,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = source.cumulative_ns(cpu, &mut out) {
            tracing::warn!(error = %e, "reading per-process CPU time failed");
            out = cpu.iter().map(|c| self.previous.get(&c.pid).map_or(0, |p| p.cpu_ns)).collect();
        }
        let mut live: Vec<u32> = cpu.iter().map(|c| c.pid).collect();
        live.sort_unstable();
        source.retain_live(&live);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cputime::proc::ProcCpuTime;

    fn fake_proc(processes: &[(u32, &str, u64, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for &(pid, name, ticks, rss_pages) in processes {
            let pid_dir = dir.path().join(pid.to_string());
            std::fs::create_dir(&pid_dir).unwrap();
            let stat = format!(
                "{pid} ({name}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 100 1000 {rss_pages} 0\n"
            );
            std::fs::write(pid_dir.join("stat"), stat).unwrap();
        }
        dir
    }

    fn scanner(root: &std::path::Path) -> ProcessScanner {
        let source: SharedCpuSource = Arc::new(Mutex::new(Box::new(ProcCpuTime::new(100))));
        ProcessScanner::new(root.to_path_buf(), 4096, 2, source)
    }

    #[test]
    fn lists_every_numeric_entry_with_name_and_resident_bytes() {
        let root = fake_proc(&[(1, "init", 0, 100), (42, "my (odd) name", 5, 3)]);
        let mut scanner = scanner(root.path());
        let mut rows = scanner.scan().unwrap().rows;
        rows.sort_by_key(|r| r.pid);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].pid, rows[1].name.as_str(), rows[1].mem_bytes), (42, "my (odd) name", 3 * 4096));
        assert!(rows.iter().all(|r| r.cpu_usage == 0.0), "first scan has no interval");
    }

    #[test]
    fn cpu_share_is_the_tick_delta_over_wall_time_and_all_cpus() {
        let root = fake_proc(&[(7, "busy", 0, 1)]);
        let mut scanner = scanner(root.path());
        scanner.scan().unwrap();
        // Pretend the previous scan was one second ago and 100 ticks (1 s) ran since.
        scanner.previous_at = Some(Instant::now() - std::time::Duration::from_secs(1));
        let stat = "7 (busy) R 1 7 7 0 -1 0 0 0 0 0 60 40 0 0 20 0 1 0 100 1000 1 0\n";
        std::fs::write(root.path().join("7/stat"), stat).unwrap();
        let usage = scanner.scan().unwrap().rows[0].cpu_usage;
        // One busy CPU out of two is 50%; the wall clock ran slightly over 1 s.
        assert!((49.0..=50.0).contains(&usage), "{usage}");
    }

    #[test]
    fn a_reused_pid_starts_from_zero_instead_of_a_negative_delta() {
        let root = fake_proc(&[(7, "old", 500, 1)]);
        let mut scanner = scanner(root.path());
        scanner.scan().unwrap();
        let reborn = "7 (new) R 1 7 7 0 -1 0 0 0 0 0 1 0 0 0 20 0 1 0 999 1000 1 0\n";
        std::fs::write(root.path().join("7/stat"), reborn).unwrap();
        assert_eq!(scanner.scan().unwrap().rows[0].cpu_usage, 0.0);
    }

    #[test]
    fn broken_stat_files_are_counted_not_fatal() {
        let root = fake_proc(&[(1, "ok", 0, 1)]);
        std::fs::create_dir(root.path().join("2")).unwrap();
        std::fs::write(root.path().join("2/stat"), "garbage").unwrap();
        std::fs::create_dir(root.path().join("3")).unwrap();
        std::fs::write(root.path().join("3/stat"), "").unwrap();
        std::fs::create_dir(root.path().join("4")).unwrap();
        let mut scanner = scanner(root.path());
        assert_eq!(scanner.scan().unwrap().process_count, 1);
        assert_eq!(scanner.last_issues, ScanIssues { vanished: 2, unparsable: 1 });
    }

    #[test]
    fn the_real_proc_lists_this_test_process_with_its_resident_memory() {
        let mut scanner = scanner(std::path::Path::new("/proc"));
        let processes = scanner.scan().unwrap();
        let me = processes.rows.iter().find(|r| r.pid == std::process::id()).expect("own pid listed");
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let rss_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let page = 4096;
        let diff = me.mem_bytes.abs_diff(rss_pages * page);
        assert!(diff < 8 * 1024 * 1024, "rss {} vs statm {}", me.mem_bytes, rss_pages * page);
    }
}
