//! The runtime source: reads per-process CPU time from the program's map (or every
//! process at once from its task iterator), keeps `resync` attached only while
//! clients are connected, and deletes the entries of processes that are gone.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use agent_common::cputime::{
    ERR_COUNT, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, ERRORS_MAP, MAX_PROCESSES, PROCESS_TIME_MAP,
    PROGRAM_PROCESSES, PROGRAM_RESYNC, ProcessTime, RESYNC_PERIOD_NS,
};
use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        Iter, PerfEvent, ProgramError,
        perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};

use super::blind::BlindPids;
use super::load::{AttachKind, EbpfLoadError, MapMemory};
use crate::cputime::{CpuSourceKind, CpuTimeError, CpuTimeSource, ProcessRecord, ScannedCpu};
use crate::host::clock::monotonic_ns;

/// Counters the program bumps when it cannot count a switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Switch-ins of a new process refused because the map was full.
    pub map_full: u64,
    /// Switch-ins whose task ids could not be read.
    pub read_task: u64,
    /// Switch-outs of a task other than the one recorded at switch-in.
    pub mismatch: u64,
}

/// The eBPF CPU-time source. Dropping it detaches the program and frees its maps.
pub struct EbpfCpuTime {
    /// Owns the attached program; it stays attached as long as this lives.
    pub(super) ebpf: Ebpf,
    pub(super) times: PerCpuHashMap<MapData, u32, ProcessTime>,
    /// How `times` gets its memory.
    pub(super) memory: MapMemory,
    pub(super) errors: PerCpuArray<MapData, u64>,
    /// Error counts already logged, so each new failure is reported once.
    pub(super) reported: ErrorCounts,
    pub(super) attach: AttachKind,
    /// The `resync` attachments, one per CPU; empty while the agent is idle. Its
    /// timer interrupts every CPU every `RESYNC_PERIOD_NS`, which an agent nobody
    /// watches should not do.
    pub(super) resync_links: Vec<PerfEventLinkId>,
    /// When `resync` was attached; None while it is not.
    pub(super) resync_since: Option<Instant>,
    /// Whether the process iterator loaded.
    pub(super) iterator: bool,
    /// Whether the kernel deletes the entries of exited processes itself (the
    /// `sched_process_free` program is attached).
    pub(super) kernel_cleanup: bool,
    /// Whether `retain_live` ran once: with kernel cleanup it is needed only for
    /// processes that exited while the programs were being attached.
    pub(super) retained_once: bool,
    /// What the iterator wrote at the last reading, kept for its allocation.
    pub(super) iterator_output: Vec<u8>,
    /// Processes the task iterator does not visit although /proc lists them;
    /// listings read these from /proc instead.
    pub(super) blind: BlindPids,
}

impl EbpfCpuTime {
    pub(super) fn new(
        mut ebpf: Ebpf,
        attach: AttachKind,
        iterator: bool,
        memory: MapMemory,
    ) -> Result<Self, EbpfLoadError> {
        let take = |ebpf: &mut Ebpf, map| ebpf.take_map(map).ok_or(EbpfLoadError::Missing(map));
        let (times_map, _) = memory.maps();
        let times = take(&mut ebpf, times_map)?;
        let errors = take(&mut ebpf, ERRORS_MAP)?;
        let times = PerCpuHashMap::try_from(times).map_err(|source| EbpfLoadError::Map { map: times_map, source })?;
        let errors = PerCpuArray::try_from(errors).map_err(|source| EbpfLoadError::Map { map: ERRORS_MAP, source })?;
        Ok(Self {
            ebpf,
            times,
            memory,
            errors,
            reported: ErrorCounts::default(),
            attach,
            resync_links: Vec::new(),
            resync_since: None,
            iterator,
            kernel_cleanup: false,
            retained_once: false,
            iterator_output: Vec::new(),
            blind: BlindPids::default(),
        })
    }

    /// Attaches `resync` on every online CPU unless it is attached, and waits until it
    /// has run everywhere: until then a CPU may run a task not counted yet, and two
    /// periods cover it, so the next reading already sees every CPU.
    pub fn resume_resync(&mut self) -> Result<(), ProgramError> {
        let since = self.attach_resync()?;
        let settled = since + Duration::from_nanos(2 * RESYNC_PERIOD_NS);
        if let Some(wait) = settled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    /// Attaches `resync` on every online CPU unless it is attached; returns when it
    /// was attached.
    fn attach_resync(&mut self) -> Result<Instant, ProgramError> {
        if let Some(since) = self.resync_since {
            return Ok(since);
        }
        let cpus = online_cpus().map_err(|(_, error)| ProgramError::IOError(error))?;
        let program: &mut PerfEvent =
            self.ebpf.program_mut(PROGRAM_RESYNC).ok_or(ProgramError::NotLoaded)?.try_into()?;
        for cpu in cpus {
            let config = PerfEventConfig::Software(SoftwareEvent::CpuClock);
            let scope = PerfEventScope::AllProcessesOneCpu { cpu };
            match program.attach(config, scope, SamplePolicy::Period(RESYNC_PERIOD_NS), false) {
                Ok(link) => self.resync_links.push(link),
                Err(error) => {
                    self.pause_resync();
                    return Err(error);
                }
            }
        }
        let since = Instant::now();
        self.resync_since = Some(since);
        Ok(since)
    }

    /// Detaches `resync`; the next reading attaches it again.
    pub fn pause_resync(&mut self) {
        let Some(program) = self.ebpf.program_mut(PROGRAM_RESYNC) else { return };
        let Ok(program) = <&mut PerfEvent>::try_from(program) else { return };
        self.resync_since = None;
        for link in self.resync_links.drain(..) {
            if let Err(error) = program.detach(link) {
                tracing::debug!("detaching resync: {error}");
            }
        }
    }

    /// Cumulative on-CPU ns of process `tgid` since the program was attached, at
    /// the instant of the call; 0 if it has not run since.
    pub fn process_ns(&self, tgid: u32) -> Result<u64, MapError> {
        let copies = self.entry(tgid)?;
        let now = monotonic_ns();
        Ok(copies.map_or(0, |copies| copies.iter().fold(0u64, |total, time| total.wrapping_add(time.at(now)))))
    }

    /// Every process with its cumulative CPU time, from one pass of the task
    /// iterator, in pid order. Each pass needs its own iterator file, made from a
    /// fresh link (two syscalls; the program stays loaded). Private: callers go
    /// through `read_processes`, which attaches `resync` first; without it a task
    /// that came onto a CPU untraced is not counted until its next switch.
    pub(super) fn list_processes(
        &mut self,
        out: &mut Vec<ProcessRecord>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        out.clear();
        if !self.iterator {
            return Err("the task iterator is not loaded".into());
        }
        let program: &mut Iter = self.ebpf.program_mut(PROGRAM_PROCESSES).ok_or("no iterator program")?.try_into()?;
        let link = program.attach()?;
        let mut file = program.take_link(link)?.into_file()?;
        self.iterator_output.clear();
        file.read_to_end(&mut self.iterator_output)?;
        let record_len = std::mem::size_of::<ProcessRecord>();
        out.extend(self.iterator_output.chunks_exact(record_len).map(|bytes| {
            // SAFETY: `bytes` holds `record_len` bytes, and `ProcessRecord` is plain
            // integers (aya::Pod), valid for any bit pattern; read unaligned.
            unsafe { bytes.as_ptr().cast::<ProcessRecord>().read_unaligned() }
        }));
        // The kernel walks tasks in pid order; sorting guards the merge (and the
        // search below) against a kernel that does not.
        if !out.is_sorted_by_key(|record| record.tgid) {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        let visited = out.len();
        let mut blind = std::mem::take(&mut self.blind);
        blind.append_missing(out, visited, |pid| self.process_ns(pid).unwrap_or(0));
        self.blind = blind;
        if out.len() > visited {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        Ok(())
    }

    /// Every CPU's copy of `tgid`'s entry; None without one.
    pub(super) fn entry(&self, tgid: u32) -> Result<Option<PerCpuValues<ProcessTime>>, MapError> {
        match self.times.get(&tgid, 0) {
            Ok(copies) => Ok(Some(copies)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The program's error counters, summed over CPUs.
    pub fn error_counts(&self) -> Result<ErrorCounts, MapError> {
        let sum = |index: u32| -> Result<u64, MapError> { Ok(self.errors.get(&index, 0)?.iter().sum()) };
        debug_assert_eq!(ERR_COUNT, 3);
        Ok(ErrorCounts { map_full: sum(ERR_MAP_FULL)?, read_task: sum(ERR_READ_TASK)?, mismatch: sum(ERR_MISMATCH)? })
    }

    /// Logs failures the program counted since the last report.
    fn report_errors(&mut self) {
        let counts = match self.error_counts() {
            Ok(counts) => counts,
            Err(error) => return tracing::warn!("reading the eBPF error counters: {error}"),
        };
        let new = |now: u64, before: u64| now.saturating_sub(before);
        let full = new(counts.map_full, self.reported.map_full);
        if full > 0 {
            tracing::warn!(
                "eBPF process map: {full} switch-ins not counted (the map is full at {MAX_PROCESSES} entries, \
                 or the kernel had no memory for a new one)"
            );
        }
        let unread = new(counts.read_task, self.reported.read_task);
        if unread > 0 {
            tracing::warn!("eBPF program could not read {unread} task ids; their time is not counted");
        }
        let mismatch = new(counts.mismatch, self.reported.mismatch);
        if mismatch > 0 {
            // Some kernels switch some tasks without the tracepoint (docs/EBPF.md);
            // a few a second is normal there, so this is no warning.
            tracing::debug!("eBPF program saw {mismatch} switch-outs of an unexpected task");
        }
        self.reported = counts;
    }

    /// True when `tgid`'s entry shows no thread on a CPU, so it may be deleted
    /// without unbalancing a running slice (see `retain_live`).
    fn is_idle(&self, tgid: u32) -> bool {
        matches!(self.entry(tgid), Ok(Some(copies)) if !copies.iter().any(|time| time.running()))
    }
}

impl CpuTimeSource for EbpfCpuTime {
    fn kind(&self) -> CpuSourceKind {
        CpuSourceKind::Ebpf
    }

    fn cumulative_ns(&mut self, procs: &[ScannedCpu], out: &mut Vec<u64>) -> Result<(), CpuTimeError> {
        out.clear();
        if let Err(error) = self.resume_resync() {
            // Readings stay right for every task that switches; only tasks that
            // leave a CPU unseen by the tracepoint are charged late.
            tracing::warn!("attaching resync failed: {error}");
        }
        for proc in procs {
            let ns = self
                .process_ns(proc.pid)
                .map_err(|error| CpuTimeError::Map { map: PROCESS_TIME_MAP, source: Box::new(error) })?;
            out.push(ns);
        }
        self.report_errors();
        Ok(())
    }

    fn read_processes(&mut self, out: &mut Vec<ProcessRecord>) -> Option<Result<(), CpuTimeError>> {
        if !self.iterator {
            return None;
        }
        if let Err(error) = self.resume_resync() {
            tracing::warn!("attaching resync failed: {error}");
        }
        let listed = self.list_processes(out).map_err(CpuTimeError::Iterator);
        self.report_errors();
        Some(listed)
    }

    fn active(&mut self) {
        if let Err(error) = self.attach_resync() {
            tracing::warn!("attaching resync failed: {error}");
        }
    }

    fn idle(&mut self) {
        self.pause_resync();
    }

    /// Deletes the entries of processes absent from `live`. An entry with a thread
    /// still on a CPU is kept: its pid was reused by a process born after the scan
    /// (or the dead one's last switch is a moment away), and deleting it mid-slice
    /// would leave the slice's end unmatched. It goes at a later scan.
    fn retain_live(&mut self, live: &[u32]) {
        if self.kernel_cleanup && self.retained_once {
            return;
        }
        self.retained_once = true;
        let gone: Vec<u32> = self
            .times
            .keys()
            .filter_map(|key| key.map_err(|error| tracing::debug!("listing eBPF entries: {error}")).ok())
            .filter(|tgid| live.binary_search(tgid).is_err())
            .collect();
        for tgid in gone {
            if !self.is_idle(tgid) {
                continue;
            }
            match self.times.remove(&tgid) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => tracing::warn!("deleting the eBPF entry of {tgid}: {error}"),
            }
        }
    }
}
