//! The processes list (`get_processes`): every process in `/proc` with its name,
//! resident memory, cumulative CPU time and CPU share since the previous scan, as
//! a [`ProcessesSnapshot`]. CPU time comes from the agent's [`CpuTimeSource`]
//! (eBPF or /proc); the time of processes that exited since the previous scan
//! shows in their nearest listed ancestor (see
//! [`attribution`](crate::cputime::attribution)).
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
//! names are decoded only when a process's `comm` changes and are shared with the
//! snapshot, so a steady scan allocates only the snapshot's vector; and `/proc` is not
//! listed again while no pid was handed out since the last listing (see
//! [`procfs::parse_last_pid`]): exits show up as failed reads anyway.

mod snapshot;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::collect::process_groups::CommCpu;
use crate::config::ChildrenMode;
use crate::cputime::attribution::{Attribution, Exit, Listed};
use crate::cputime::rate::RateRule;
use crate::cputime::{CpuSourceKind, CpuTimeSource, ProcessRecord, ScannedCpu, SharedCpuSource, cpu_percent};
use crate::host::clock::{self, HostClock};
use crate::host::procfs::{self, KeptFile, ProcDir};
use crate::host::stat::parse_stat;
pub use snapshot::{ProcessSample, ProcessesSnapshot};

use super::{Collect, CollectError};

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
    source_kind: CpuSourceKind,
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
    /// Where exited processes' time shows, and what it knows of earlier scans.
    attribution: Attribution,
    /// Processes that exited since the last scan, when the source records them.
    exits: Vec<Exit>,
    exits_recorded: bool,
    /// CPU ns per command name, exited processes included, over every scan.
    comm_cpu: CommCpu,
    /// This scan's clock reading, on the clock of the processes' start times (ns
    /// since boot: CLOCK_MONOTONIC for the iterator's, CLOCK_BOOTTIME for /proc's).
    clock_ns: u64,
    /// This scan's processes as the attribution rule takes them, and what it shows.
    rule_input: Vec<Listed>,
    shown_ns: Vec<u64>,
    previous_at: Option<Instant>,
    last_issues: ScanIssues,
    /// The last two snapshots this scanner made, to reuse their memory.
    handed_out: [Option<Arc<ProcessesSnapshot>>; 2],
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
    /// The parent's pid.
    ppid: u32,
    /// CPU ns of the children it reaped (/proc `cutime` + `cstime`; 0 from the
    /// iterator, whose source records exits instead).
    children_ns: u64,
    /// `comm` as the text the snapshot carries, shared by every process of that
    /// name ([`CommCpu::name_of`]).
    name: Arc<str>,
    rss_bytes: u64,
}

impl Tracked {
    fn new(pid: u32) -> Tracked {
        Tracked {
            pid,
            stat: None,
            start_time_ns: 0,
            cpu_ns: None,
            ppid: 0,
            children_ns: 0,
            name: Arc::from(""),
            rss_bytes: 0,
        }
    }

    /// Takes this scan's reading of the process.
    fn update(
        &mut self,
        rate: &RateRule,
        start_time_ns: u64,
        ppid: u32,
        comm: &[u8],
        rss_bytes: u64,
        names: &mut CommCpu,
    ) {
        self.ppid = ppid;
        if self.cpu_ns.is_none() || !rate.is_same_process(start_time_ns, self.start_time_ns) {
            // A new process, or a reused pid: its CPU history starts now.
            self.cpu_ns = None;
        }
        self.start_time_ns = start_time_ns;
        // A name that is not UTF-8 reads as changed on every scan: looked up again.
        if comm != self.name.as_bytes() {
            self.name = names.name_of(comm);
        }
        self.rss_bytes = rss_bytes;
    }
}

/// The name in a NUL-padded `comm` buffer.
pub(crate) fn comm_bytes(comm: &[u8]) -> &[u8] {
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
        children: ChildrenMode,
    ) -> Self {
        let loadavg = procfs::is_own_pid_namespace(&proc_root).then(|| KeptFile::new(proc_root.join("loadavg")));
        let source_kind = crate::sync::lock(&cpu_source).kind();
        Self {
            proc_root,
            dir: None,
            clock,
            rate: RateRule::new(cpus, clock.ticks_per_second()),
            source_kind,
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
            attribution: Attribution::new(children, RateRule::new(cpus, clock.ticks_per_second())),
            exits: Vec::new(),
            exits_recorded: false,
            comm_cpu: CommCpu::new(RateRule::new(cpus, clock.ticks_per_second())),
            clock_ns: 0,
            rule_input: Vec::new(),
            shown_ns: Vec::new(),
            previous_at: None,
            last_issues: ScanIssues::default(),
            handed_out: [None, None],
        }
    }

    /// Reads every process and its CPU share since the previous call (none on the
    /// first).
    pub fn scan(&mut self) -> std::io::Result<Arc<ProcessesSnapshot>> {
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
        let snapshot = self.snapshot(now);
        std::mem::swap(&mut self.tracked, &mut self.merged);
        self.merged.clear();
        self.previous_at = Some(now);
        Ok(snapshot)
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
        // Exits before the listing: a process that exits after it is either in the
        // listing or in the next scan's exits, never in both. Drained on every scan,
        // whichever path lists, so the ring never fills.
        self.exits_recorded = source.take_exits(&mut self.exits);
        self.clock_ns = clock::monotonic_ns();
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
                record.ppid,
                comm_bytes(&record.comm),
                self.clock.pages_to_bytes(record.rss_pages),
                &mut self.comm_cpu,
            );
            tracked.children_ns = 0;
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
        // Exits are seen here through the parents' reaped-children times: /proc's
        // start times are on the boot clock, and to a tick only.
        self.exits.clear();
        self.exits_recorded = false;
        self.clock_ns = clock::boottime_ns();
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
        let rss_bytes = self.clock.pages_to_bytes(stat.rss_pages);
        tracked.update(&self.rate, start_time_ns, stat.ppid, stat.comm, rss_bytes, &mut self.comm_cpu);
        tracked.children_ns = self.clock.ticks_to_ns(stat.cutime + stat.cstime);
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

    /// The snapshot of the merged list, each process's share over the interval
    /// being what the attribution rule shows for it: its own time since the scan
    /// before and, under `--cpu-children attribute`, the unshown time of its
    /// descendants that exited meanwhile.
    fn snapshot(&mut self, now: Instant) -> Arc<ProcessesSnapshot> {
        let interval = self.previous_at.and_then(|at| now.checked_duration_since(at)).filter(|wall| !wall.is_zero());
        self.rule_input.clear();
        self.rule_input.extend(self.merged.iter().zip(&self.cpu_ns).map(|(tracked, &own_ns)| Listed {
            pid: tracked.pid,
            start_time: tracked.start_time_ns,
            ppid: tracked.ppid,
            own_ns,
            children_ns: tracked.children_ns,
        }));
        let exits = self.exits_recorded.then_some(self.exits.as_slice());
        self.attribution.account(self.clock_ns, &self.rule_input, exits, &mut self.shown_ns);
        let cpus = self.rate.cpus();
        let mut processes = self.recycled_samples();
        let samples =
            self.merged.iter_mut().zip(&self.cpu_ns).zip(&self.shown_ns).map(|((tracked, &cpu_ns), &shown_ns)| {
                tracked.cpu_ns = Some(cpu_ns);
                let interval_cpu_ns = interval.map(|_| shown_ns);
                ProcessSample {
                    pid: tracked.pid,
                    ppid: tracked.ppid,
                    start_time_ns: tracked.start_time_ns,
                    name: Arc::clone(&tracked.name),
                    rss_bytes: tracked.rss_bytes,
                    cpu_ns,
                    interval_cpu_ns,
                    cpu_share: interval.map(|wall| cpu_percent(shown_ns, wall, cpus)),
                }
            });
        processes.extend(samples);
        let exits = if self.exits_recorded { self.exits.as_slice() } else { &[] };
        self.comm_cpu.count(&processes, exits);
        let snapshot = Arc::new(ProcessesSnapshot {
            at: now,
            sampled_at: SystemTime::now(),
            interval: self.previous_at.map(|at| now.saturating_duration_since(at)),
            cpus: self.rate.cpus(),
            source: self.source_kind,
            processes,
            comm_cpu_ns: self.comm_cpu.totals().to_vec(),
        });
        self.handed_out.rotate_left(1);
        self.handed_out[1] = Some(Arc::clone(&snapshot));
        snapshot
    }

    /// The sample vector of a snapshot handed out earlier that nobody holds any
    /// more (the cache let it go), emptied; else a new one. With two kept, a steady
    /// cycle of scans refills the same two vectors instead of allocating, zeroing
    /// and freeing one per scan (5,000 processes are 280 KiB, mapped and unmapped).
    fn recycled_samples(&mut self) -> Vec<ProcessSample> {
        for slot in &mut self.handed_out {
            if let Some(snapshot) = slot.take_if(|snapshot| Arc::strong_count(snapshot) == 1)
                && let Ok(snapshot) = Arc::try_unwrap(snapshot)
            {
                let mut processes = snapshot.processes;
                processes.clear();
                return processes;
            }
        }
        Vec::new()
    }
}

impl Collect for ProcessScanner {
    type Snapshot = Arc<ProcessesSnapshot>;

    fn collect(&mut self) -> Result<Arc<ProcessesSnapshot>, CollectError> {
        let scanned = self.scan().map_err(|e| {
            tracing::error!(error = %e, "listing processes failed");
            CollectError::ListingProcesses(e)
        });
        if self.last_issues.unparsable > 0 {
            tracing::debug!(issues = ?self.last_issues, "some /proc/PID/stat files did not parse");
        }
        scanned
    }

    /// Closes the kept stat files (an idle agent holds no descriptor per process)
    /// and drops every per-scan buffer. What each process ran until now stays
    /// (`tracked`, the attribution's and the per-name counters' state), so the next
    /// scan's shares and totals are as right as without this.
    fn release(&mut self) {
        for tracked in &mut self.tracked {
            tracked.stat = None;
        }
        self.open_files = 0;
        self.tracked.shrink_to_fit();
        // The next scan lists, and so reopens, the directory: a process whose
        // file was closed is read through it.
        self.dir = None;
        self.listed = None;
        if let Some(loadavg) = &mut self.loadavg {
            loadavg.close();
        }
        self.merged = Vec::new();
        self.listing = Vec::new();
        self.dirent_buffer = Vec::new();
        self.stat_buffer = Vec::new();
        self.cpu_scanned = Vec::new();
        self.cpu_ns = Vec::new();
        self.records = Vec::new();
        self.exits = Vec::new();
        self.rule_input = Vec::new();
        self.shown_ns = Vec::new();
        self.handed_out = [None, None];
        self.attribution.release();
        self.comm_cpu.release();
    }
}

#[cfg(test)]
mod tests;
