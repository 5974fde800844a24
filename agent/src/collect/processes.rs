//! The processes list (`get_processes`): every process in `/proc` with its name,
//! resident memory and CPU share since the previous scan. CPU time comes from the
//! agent's [`CpuTimeSource`] (eBPF or /proc).
//!
//! With the eBPF source, one read of its task iterator lists every process with its
//! name, resident pages and CPU time ([`CpuTimeSource::read_processes`]), and no
//! /proc file is read. Otherwise the scan reads `/proc/PID/stat`, once per process.
//!
//! This runs on every uncached request, so the /proc path is built to cost little
//! more than the kernel's own work of writing each stat file: the stat files of up
//! to `kept_files` processes stay open between scans and are re-read with pread (see
//! [`procfs`]); what the scanner knows of each process lives in a vector sorted by
//! pid and merged with the (ascending) directory listing, so no map is rebuilt;
//! names are decoded only when a process's `comm` changes; the answer's rows are
//! rewritten in place, so a steady scan allocates nothing; and `/proc` is not
//! listed again while no pid was handed out since the last listing (see
//! [`procfs::parse_last_pid`]): exits show up as failed reads anyway.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cputime::rate::{CpuReading, RateRule};
use crate::cputime::{CpuTimeSource, ProcessRecord, ScannedCpu, SharedCpuSource};
use crate::host::clock::HostClock;
use crate::host::procfs::{self, KeptFile, ProcDir};
use crate::host::stat::{comm_name, parse_stat};
use crate::protocol::pb;

/// A listing is redone after this long even when no pid was handed out, which
/// bounds the miss should the pid counter wrap around exactly to where it was.
const RELIST_AFTER: Duration = Duration::from_secs(1);

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
    /// Opened on the first scan, so building the scanner cannot fail.
    dir: Option<ProcDir>,
    /// Converts /proc's pages and clock ticks.
    clock: HostClock,
    rate: RateRule,
    cpu_source: SharedCpuSource,
    /// Most stat files kept open between scans; past it, files are opened per scan.
    kept_files: usize,
    open_files: usize,
    /// Every process of the last scan, sorted by pid.
    tracked: Vec<Tracked>,
    /// The next scan's list, built by merging `tracked` with the listing; kept to
    /// reuse its allocation.
    merged: Vec<Tracked>,
    /// This scan's pids, ascending.
    listing: Vec<u32>,
    /// `/proc/loadavg`, when the procfs is of this process's pid namespace.
    loadavg: Option<KeptFile>,
    /// The last pid handed out as of the last listing, and when that was.
    listed: Option<(u32, Instant)>,
    /// The last pid handed out as of this scan, and as of the last time the CPU
    /// source was told which processes live.
    scan_last_pid: Option<u32>,
    retained_last_pid: Option<u32>,
    /// Whether a known process left since the CPU source was last told.
    departed: bool,
    dirent_buffer: Vec<u8>,
    stat_buffer: Vec<u8>,
    cpu_scanned: Vec<ScannedCpu>,
    cpu_ns: Vec<u64>,
    /// What the CPU source listed, when it lists processes itself.
    records: Vec<ProcessRecord>,
    answer: pb::Processes,
    previous_at: Option<Instant>,
    pub last_issues: ScanIssues,
}

/// What the scanner keeps of one process between scans.
#[derive(Debug)]
struct Tracked {
    pid: u32,
    /// Its stat file, while within the budget of kept files.
    stat: Option<File>,
    /// With the pid, names the process (ns since boot); a change means the pid
    /// was reused.
    start_time_ns: u64,
    /// Cumulative CPU ns at the previous scan; `None` before the first reading.
    cpu_ns: Option<u64>,
    /// `comm` as read, and as the text the answer carries.
    comm: Vec<u8>,
    name: String,
    rss_bytes: u64,
}

impl Tracked {
    fn new(pid: u32) -> Tracked {
        Tracked { pid, stat: None, start_time_ns: 0, cpu_ns: None, comm: Vec::new(), name: String::new(), rss_bytes: 0 }
    }

    /// Takes this scan's reading of the process.
    fn update(&mut self, rate: &RateRule, start_time_ns: u64, comm: &[u8], rss_bytes: u64) {
        if self.cpu_ns.is_none() || !rate.is_same_process(start_time_ns, self.start_time_ns) {
            // A new process, or a reused pid: its CPU history starts now.
            self.cpu_ns = None;
        }
        self.start_time_ns = start_time_ns;
        if comm != self.comm.as_slice() {
            self.comm.clear();
            self.comm.extend_from_slice(comm);
            self.name = comm_name(comm);
        }
        self.rss_bytes = rss_bytes;
    }
}

/// The name in a NUL-padded `comm` buffer.
fn comm_bytes(comm: &[u8]) -> &[u8] {
    comm.split(|&b| b == 0).next().unwrap_or_default()
}

/// The outcome of reading one process's stat file.
enum Read {
    Ok,
    Vanished,
    Unparsable,
}

impl ProcessScanner {
    pub fn new(
        proc_root: PathBuf,
        clock: HostClock,
        cpus: usize,
        cpu_source: SharedCpuSource,
        kept_files: usize,
    ) -> Self {
        let loadavg = procfs::is_own_pid_namespace(&proc_root).then(|| KeptFile::new(proc_root.join("loadavg")));
        Self {
            proc_root,
            dir: None,
            clock,
            rate: RateRule::new(cpus, clock.ticks_per_second()),
            cpu_source,
            kept_files,
            open_files: 0,
            tracked: Vec::new(),
            merged: Vec::new(),
            listing: Vec::new(),
            loadavg,
            listed: None,
            scan_last_pid: None,
            retained_last_pid: None,
            departed: false,
            dirent_buffer: Vec::new(),
            stat_buffer: Vec::new(),
            cpu_scanned: Vec::new(),
            cpu_ns: Vec::new(),
            records: Vec::new(),
            answer: pb::Processes::default(),
            previous_at: None,
            last_issues: ScanIssues::default(),
        }
    }

    /// Reads every process and its CPU share since the previous call (0 on the first).
    pub fn scan(&mut self) -> std::io::Result<&pb::Processes> {
        let now = match self.read_from_cpu_source() {
            Some(now) => now,
            None => {
                self.list_and_merge()?;
                self.read_merged();
                let now = Instant::now();
                self.fill_cpu_ns();
                now
            }
        };
        self.write_answer(now);
        std::mem::swap(&mut self.tracked, &mut self.merged);
        self.merged.clear();
        self.previous_at = Some(now);
        Ok(&self.answer)
    }

    /// Takes every process from the CPU source when it lists them itself (the eBPF
    /// task iterator: one read for all, instead of a stat file each) and merges them
    /// into `merged` with their CPU time in `cpu_ns`. Returns the reading's instant,
    /// or None when the source cannot list or failed, and /proc must be scanned.
    fn read_from_cpu_source(&mut self) -> Option<Instant> {
        let cpu_source = Arc::clone(&self.cpu_source);
        let mut source = crate::sync::lock(&cpu_source);
        // Read first: a process created after it makes the next scan tell the source.
        let last_pid = self.last_pid();
        if let Err(e) = source.read_processes(&mut self.records)? {
            tracing::warn!(error = %e, "listing processes through the CPU source failed; scanning /proc");
            return None;
        }
        let now = Instant::now();
        self.scan_last_pid = last_pid;
        let mut known = std::mem::take(&mut self.tracked).into_iter().peekable();
        self.cpu_ns.clear();
        for record in &self.records {
            while known.next_if(|t| t.pid < record.tgid).is_some() {
                self.departed = true;
            }
            let mut tracked = known.next_if(|t| t.pid == record.tgid).unwrap_or_else(|| Tracked::new(record.tgid));
            tracked.update(
                &self.rate,
                record.start_time_ns,
                comm_bytes(&record.comm),
                self.clock.pages_to_bytes(record.rss_pages),
            );
            self.cpu_ns.push(record.cpu_ns);
            self.merged.push(tracked);
        }
        self.departed |= known.next().is_some();
        self.last_issues = ScanIssues::default();
        self.forget_exited(&mut **source);
        Some(now)
    }

    /// Lists `/proc` and merges the listing with what the last scan knew into
    /// `merged`, in pid order; processes that left are dropped, closing their
    /// files. Without a new pid since the last listing, `merged` is simply what
    /// the last scan knew.
    fn list_and_merge(&mut self) -> std::io::Result<()> {
        let last_pid = self.last_pid();
        self.scan_last_pid = last_pid;
        if last_pid.is_some()
            && self.listed.is_some_and(|(pid, at)| Some(pid) == last_pid && at.elapsed() < RELIST_AFTER)
        {
            self.merged.append(&mut self.tracked);
            return Ok(());
        }
        let dir = match &mut self.dir {
            Some(dir) => dir,
            none => none.insert(ProcDir::open(&self.proc_root)?),
        };
        dir.list_pids(&mut self.dirent_buffer, &mut self.listing)?;
        if !self.listing.is_sorted() {
            self.listing.sort_unstable();
        }
        self.listed = last_pid.map(|pid| (pid, Instant::now()));
        let mut known = std::mem::take(&mut self.tracked).into_iter().peekable();
        for &pid in &self.listing {
            while known.next_if(|t| t.pid < pid).is_some() {
                self.departed = true;
            }
            let tracked = known.next_if(|t| t.pid == pid).unwrap_or_else(|| Tracked::new(pid));
            self.merged.push(tracked);
        }
        self.departed |= known.next().is_some();
        Ok(())
    }

    /// The last pid handed out, read before listing so a process created during
    /// the listing makes the next scan list again.
    fn last_pid(&mut self) -> Option<u32> {
        let text = self.loadavg.as_mut()?.read().inspect_err(|e| tracing::debug!(error = %e, "read failed")).ok()?;
        procfs::parse_last_pid(text)
    }

    /// Reads the stat file of every merged process, dropping those that exited
    /// since the listing or did not parse.
    fn read_merged(&mut self) {
        let mut merged = std::mem::take(&mut self.merged);
        self.open_files = merged.iter().filter(|t| t.stat.is_some()).count();
        self.cpu_scanned.clear();
        let mut issues = ScanIssues::default();
        merged.retain_mut(|tracked| {
            match self.read_one(tracked) {
                Read::Ok => return true,
                Read::Vanished => issues.vanished += 1,
                Read::Unparsable => issues.unparsable += 1,
            }
            self.open_files -= usize::from(tracked.stat.is_some());
            false
        });
        self.merged = merged;
        self.departed |= issues.vanished + issues.unparsable > 0;
        self.last_issues = issues;
    }

    fn read_one(&mut self, tracked: &mut Tracked) -> Read {
        let read = match (&tracked.stat, &self.dir) {
            (Some(file), _) => procfs::read_from_start(file, &mut self.stat_buffer),
            (None, Some(dir)) => dir.open_stat(tracked.pid).and_then(|file| {
                let read = procfs::read_from_start(&file, &mut self.stat_buffer);
                if read.is_ok() && self.open_files < self.kept_files {
                    self.open_files += 1;
                    tracked.stat = Some(file);
                }
                read
            }),
            (None, None) => return Read::Vanished,
        };
        let Ok(length) = read else { return Read::Vanished };
        let Ok(stat) = parse_stat(&self.stat_buffer[..length]) else {
            // An empty read is a process that exited after the open.
            return if length == 0 { Read::Vanished } else { Read::Unparsable };
        };
        let start_time_ns = self.clock.ticks_to_ns(stat.start_time);
        tracked.update(&self.rate, start_time_ns, stat.comm, self.clock.pages_to_bytes(stat.rss_pages));
        self.cpu_scanned.push(ScannedCpu { pid: tracked.pid, ticks: stat.utime + stat.stime });
        Read::Ok
    }

    /// Cumulative CPU ns of each scanned process into `cpu_ns`. On a source
    /// failure every process reads as its previous value, so the scan still
    /// answers, with 0%, rather than failing the request.
    fn fill_cpu_ns(&mut self) {
        let cpu_source = Arc::clone(&self.cpu_source);
        let mut source = crate::sync::lock(&cpu_source);
        let read = source.cumulative_ns(&self.cpu_scanned, &mut self.cpu_ns);
        if let Err(e) = &read {
            tracing::warn!(error = %e, "reading per-process CPU time failed");
        }
        if read.is_err() || self.cpu_ns.len() != self.merged.len() {
            self.cpu_ns.clear();
            self.cpu_ns.extend(self.merged.iter().map(|t| t.cpu_ns.unwrap_or(0)));
        }
        self.forget_exited(&mut **source);
    }

    /// Tells the source which processes live, when some may have exited since it
    /// was last told: a known process left, or a pid was handed out (a process born
    /// and gone between two scans leaves an entry in the eBPF map). For the eBPF
    /// source without its `sched_process_free` program, that call walks its whole
    /// map, a syscall per entry.
    fn forget_exited(&mut self, source: &mut dyn CpuTimeSource) {
        let new_pids = self.scan_last_pid.is_none() || self.scan_last_pid != self.retained_last_pid;
        if self.departed || new_pids {
            self.listing.clear();
            self.listing.extend(self.merged.iter().map(|t| t.pid));
            source.retain_live(&self.listing);
            self.departed = false;
            self.retained_last_pid = self.scan_last_pid;
        }
    }

    /// Rewrites the answer's rows in place from the merged list.
    fn write_answer(&mut self, now: Instant) {
        let rows = &mut self.answer.rows;
        rows.resize_with(self.merged.len(), pb::Process::default);
        for ((row, tracked), &cpu_ns) in rows.iter_mut().zip(&mut self.merged).zip(&self.cpu_ns) {
            let reading = CpuReading { start_time_ns: tracked.start_time_ns, cpu_ns, at: now };
            row.cpu_usage = match (tracked.cpu_ns, self.previous_at) {
                (Some(before), Some(at)) => {
                    let before = CpuReading { cpu_ns: before, at, ..reading };
                    self.rate.share(&before, &reading).unwrap_or(0.0)
                }
                _ => 0.0,
            };
            tracked.cpu_ns = Some(cpu_ns);
            row.pid = tracked.pid;
            row.mem_bytes = tracked.rss_bytes;
            if row.name != tracked.name {
                row.name.clear();
                row.name.push_str(&tracked.name);
            }
        }
        self.answer.process_count = rows.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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
        ProcessScanner::new(root.to_path_buf(), HostClock::new(100, 0, 4096), 2, source, 4096)
    }

    #[test]
    fn lists_every_numeric_entry_with_name_and_resident_bytes() {
        let root = fake_proc(&[(1, "init", 0, 100), (42, "my (odd) name", 5, 3)]);
        let mut scanner = scanner(root.path());
        let mut rows = scanner.scan().unwrap().rows.clone();
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

    fn add_process(root: &std::path::Path, pid: u32) {
        std::fs::create_dir(root.join(pid.to_string())).unwrap();
        let stat = format!("{pid} (p{pid}) S 1 0 0 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 100 1000 1 0\n");
        std::fs::write(root.join(format!("{pid}/stat")), stat).unwrap();
    }

    fn pids(processes: &pb::Processes) -> Vec<u32> {
        processes.rows.iter().map(|r| r.pid).collect()
    }

    #[test]
    fn proc_is_listed_again_only_once_a_new_pid_was_handed_out() {
        let root = fake_proc(&[(1, "init", 0, 1)]);
        std::os::unix::fs::symlink(std::process::id().to_string(), root.path().join("self")).unwrap();
        let loadavg =
            |last_pid: u32| std::fs::write(root.path().join("loadavg"), format!("0.0 0.0 0.0 1/9 {last_pid}\n"));
        loadavg(1).unwrap();
        let source: SharedCpuSource = Arc::new(Mutex::new(Box::new(ProcCpuTime::new(100))));
        // No stat file kept open, so a removed process fails its read as in /proc.
        let mut scanner = ProcessScanner::new(root.path().to_path_buf(), HostClock::new(100, 0, 4096), 2, source, 0);
        assert_eq!(pids(scanner.scan().unwrap()), [1]);
        add_process(root.path(), 2);
        assert_eq!(pids(scanner.scan().unwrap()), [1], "no pid handed out: the listing is reused");
        loadavg(2).unwrap();
        assert_eq!(pids(scanner.scan().unwrap()), [1, 2]);
        std::fs::remove_dir_all(root.path().join("1")).unwrap();
        assert_eq!(pids(scanner.scan().unwrap()), [2], "an exit shows without a listing");
    }

    /// A /proc source that records the live lists it is given.
    struct Recording(Arc<Mutex<Vec<Vec<u32>>>>);

    impl CpuTimeSource for Recording {
        fn kind(&self) -> crate::cputime::CpuSourceKind {
            crate::cputime::CpuSourceKind::Proc
        }
        fn cumulative_ns(
            &mut self,
            procs: &[ScannedCpu],
            out: &mut Vec<u64>,
        ) -> Result<(), crate::cputime::CpuTimeError> {
            ProcCpuTime::new(100).cumulative_ns(procs, out)
        }
        fn retain_live(&mut self, live: &[u32]) {
            self.0.lock().unwrap().push(live.to_vec());
        }
    }

    #[test]
    fn the_cpu_source_forgets_processes_only_when_some_may_have_exited() {
        let root = fake_proc(&[(1, "init", 0, 1), (2, "b", 0, 1)]);
        std::os::unix::fs::symlink(std::process::id().to_string(), root.path().join("self")).unwrap();
        let loadavg = |last_pid: u32| std::fs::write(root.path().join("loadavg"), format!("0 0 0 1/9 {last_pid}\n"));
        loadavg(2).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let source: SharedCpuSource = Arc::new(Mutex::new(Box::new(Recording(Arc::clone(&calls)))));
        let mut scanner = ProcessScanner::new(root.path().to_path_buf(), HostClock::new(100, 0, 4096), 2, source, 0);
        scanner.scan().unwrap();
        scanner.scan().unwrap();
        assert_eq!(*calls.lock().unwrap(), [vec![1, 2]], "nothing could have exited in between");
        std::fs::remove_dir_all(root.path().join("2")).unwrap();
        scanner.scan().unwrap();
        scanner.scan().unwrap();
        assert_eq!(calls.lock().unwrap().last(), Some(&vec![1]));
        assert_eq!(calls.lock().unwrap().len(), 2);
        loadavg(3).unwrap();
        scanner.scan().unwrap();
        assert_eq!(calls.lock().unwrap().len(), 3, "a pid was handed out: maybe born and gone");
    }

    #[test]
    fn at_most_the_budget_of_stat_files_stays_open() {
        let root = fake_proc(&[(1, "a", 0, 1), (2, "b", 0, 1), (3, "c", 0, 1)]);
        let source: SharedCpuSource = Arc::new(Mutex::new(Box::new(ProcCpuTime::new(100))));
        let mut scanner = ProcessScanner::new(root.path().to_path_buf(), HostClock::new(100, 0, 4096), 2, source, 2);
        for _ in 0..3 {
            assert_eq!(scanner.scan().unwrap().process_count, 3);
            assert_eq!(scanner.tracked.iter().filter(|t| t.stat.is_some()).count(), 2);
        }
        std::fs::remove_dir_all(root.path().join("1")).unwrap();
        add_process(root.path(), 4);
        assert_eq!(pids(scanner.scan().unwrap()), [2, 3, 4]);
        assert_eq!(scanner.tracked.iter().filter(|t| t.stat.is_some()).count(), 2, "the freed slot is reused");
    }

    #[test]
    fn a_changed_command_name_is_picked_up() {
        let root = fake_proc(&[(5, "before", 0, 1)]);
        let mut scanner = scanner(root.path());
        assert_eq!(scanner.scan().unwrap().rows[0].name, "before");
        let exec = "5 (after) S 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1000 1 0\n";
        std::fs::write(root.path().join("5/stat"), exec).unwrap();
        assert_eq!(scanner.scan().unwrap().rows[0].name, "after");
    }

    #[test]
    fn an_exited_child_leaves_the_list_of_the_real_proc() {
        let mut scanner = scanner(std::path::Path::new("/proc"));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(pids(scanner.scan().unwrap()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!pids(scanner.scan().unwrap()).contains(&child.id()));
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
        let processes = scanner.scan().unwrap().clone();
        let me = processes.rows.iter().find(|r| r.pid == std::process::id()).expect("own pid listed");
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let rss_pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let page = 4096;
        let diff = me.mem_bytes.abs_diff(rss_pages * page);
        assert!(diff < 8 * 1024 * 1024, "rss {} vs statm {}", me.mem_bytes, rss_pages * page);
    }
}
