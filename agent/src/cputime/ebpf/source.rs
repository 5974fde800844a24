//! The runtime source: reads per-process CPU time from the program's map (or every
//! process at once from its task iterator), keeps `resync` attached and exits
//! recorded only while clients are connected, hands over the exit records, and
//! deletes the entries of processes that are gone.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use agent_common::cputime::{
    CPU_NS_UNSUMMED, ERR_COUNT, ERR_EXIT_LOST, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, ERRORS_MAP, EXITS_MAP,
    EXITS_WANTED_MAP, ExitRecord, IDLE_TRACEPOINT, PROCESS_TIME_MAP, PROGRAM_PROCESSES, PROGRAM_REPAIR_IDLE,
    PROGRAM_REPAIR_TICK, ProcessTime, RESYNC_PERIOD_NS, TICK_SETTLE_NS, TICK_TRACEPOINT,
};
use aya::{
    Ebpf,
    maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        Iter, PerfEvent, ProgramError, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
        raw_trace_point::RawTracePointLinkId,
    },
    util::online_cpus,
};

use super::blind::{BlindPids, ProcStats};
use super::exit_ring::ExitRing;
use super::load::{AttachKind, EbpfLoadError, MapMemory};
use super::map_full::MapFull;
use crate::cputime::attribution::Exit;
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
    /// Exit records that did not fit in the ring.
    pub exit_lost: u64,
}

/// What repairs untraced switches while someone reads (see the program's
/// `repair_current`).
enum RepairLinks {
    None,
    /// `repair_tick` on the scheduler tick and `repair_idle` on idle entry.
    Tick {
        tick: RawTracePointLinkId,
        idle: Option<RawTracePointLinkId>,
    },
    /// `resync` on a CPU-clock timer, one link per CPU.
    Timer(Vec<PerfEventLinkId>),
}

/// The eBPF CPU-time source. Dropping it detaches the program and frees its maps.
pub struct EbpfCpuTime {
    /// Owns the attached program; it stays attached as long as this lives.
    pub(super) ebpf: Ebpf,
    pub(super) times: PerCpuHashMap<MapData, u32, ProcessTime>,
    /// How `times` gets its memory, which decides the `resync` twin.
    pub(super) memory: MapMemory,
    pub(super) errors: PerCpuArray<MapData, u64>,
    /// Exit records of processes, written by the `sched_process_free` program while
    /// `exits_wanted` says someone reads; mapped only then.
    exits: ExitRing,
    exits_wanted: Array<MapData, u32>,
    /// Error counts already logged, so each new failure is reported once.
    pub(super) reported: ErrorCounts,
    /// Which twin is attached.
    #[cfg_attr(
        not(any(test, feature = "testing")),
        expect(dead_code, reason = "kept for the test diagnostics, which report it")
    )]
    pub(super) attach: AttachKind,
    /// Whether the repair of untraced switches rides on the scheduler tick and idle
    /// entry (`repair_tick`, `repair_idle`) rather than the `resync` timer.
    pub(super) repair_on_ticks: bool,
    /// The repair's attachments; none while the agent is idle.
    repair_links: RepairLinks,
    /// When `resync` was attached; None while it is not.
    pub(super) resync_since: Option<Instant>,
    /// Whether every CPU switched tasks once since the repair was attached (see
    /// `resume_resync`).
    settled: bool,
    /// Whether the process iterator loaded.
    pub(super) iterator: bool,
    /// Whether the kernel deletes the entries of exited processes itself (the
    /// `sched_process_free` program is attached).
    pub(super) kernel_cleanup: bool,
    /// Whether `retain_live` ran once: with kernel cleanup it is needed only for
    /// processes that exited while the programs were being attached.
    pub(super) retained_once: bool,
    /// What the iterator wrote at the last reading, kept for its allocation while
    /// the agent is watched.
    pub(super) iterator_output: Vec<u8>,
    /// Processes the task iterator does not visit although /proc lists them;
    /// listings read these from /proc instead.
    pub(super) blind: BlindPids,
    /// Reads the stat files of the blind processes and of those the program could
    /// not count.
    pub(super) proc_stats: ProcStats,
    /// Which processes are read from /proc because the map was full.
    pub(super) map_full: MapFull,
    /// The features this kernel lacks, each with why (see `load`).
    pub(super) degraded: Vec<String>,
}

impl EbpfCpuTime {
    pub(super) fn new(
        mut ebpf: Ebpf,
        attach: AttachKind,
        iterator: bool,
        memory: MapMemory,
        map_full: MapFull,
    ) -> Result<Self, EbpfLoadError> {
        let take = |ebpf: &mut Ebpf, map| ebpf.take_map(map).ok_or(EbpfLoadError::Missing(map));
        let (times_map, _) = memory.maps();
        let times = take(&mut ebpf, times_map)?;
        let errors = take(&mut ebpf, ERRORS_MAP)?;
        let exits = take(&mut ebpf, EXITS_MAP)?;
        let exits_wanted = take(&mut ebpf, EXITS_WANTED_MAP)?;
        let times = PerCpuHashMap::try_from(times).map_err(|source| EbpfLoadError::Map { map: times_map, source })?;
        let errors = PerCpuArray::try_from(errors).map_err(|source| EbpfLoadError::Map { map: ERRORS_MAP, source })?;
        let exits = ExitRing::new(exits).map_err(|source| EbpfLoadError::Map { map: EXITS_MAP, source })?;
        let exits_wanted =
            Array::try_from(exits_wanted).map_err(|source| EbpfLoadError::Map { map: EXITS_WANTED_MAP, source })?;
        Ok(Self {
            ebpf,
            times,
            memory,
            errors,
            exits,
            exits_wanted,
            reported: ErrorCounts::default(),
            attach,
            repair_on_ticks: false,
            repair_links: RepairLinks::None,
            resync_since: None,
            settled: false,
            iterator,
            kernel_cleanup: false,
            retained_once: false,
            iterator_output: Vec::new(),
            blind: BlindPids::default(),
            proc_stats: ProcStats::default(),
            map_full,
            degraded: Vec::new(),
        })
    }

    /// Attaches `resync` on every online CPU unless it is attached, and makes sure
    /// every CPU's record of its running task was checked since: until then a CPU
    /// may run a task not counted yet (one that came on untraced while nothing
    /// repaired). Attaching runs this thread on every CPU, and each of those
    /// switches checks its CPU's record at once; for a CPU it did not run on, this
    /// waits until the repair has run everywhere (two ticks, or two timer periods,
    /// after attaching). Either way the next reading already sees every CPU.
    pub fn resume_resync(&mut self) -> Result<(), ProgramError> {
        let since = self.attach_resync()?;
        if self.settled {
            return Ok(());
        }
        if let Some(wait) = self.settled_by_repair(since).checked_duration_since(Instant::now()) {
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
        let attached = if self.repair_on_ticks { self.attach_tick_repair() } else { self.attach_timer_repair() };
        if let Err(error) = attached {
            self.detach_repair();
            return Err(error);
        }
        let since = Instant::now();
        self.resync_since = Some(since);
        self.want_exits(true);
        // Past the repair's own settling time the visits would buy nothing.
        self.settled = switch_on_every_cpu(self.settled_by_repair(since));
        Ok(since)
    }

    /// When the repair attached at `since` has run on every busy CPU.
    fn settled_by_repair(&self, since: Instant) -> Instant {
        let settle_ns = if self.repair_on_ticks { TICK_SETTLE_NS } else { 2 * RESYNC_PERIOD_NS };
        since + Duration::from_nanos(settle_ns)
    }

    /// Tells the `sched_process_free` program whether to record exits: only while
    /// someone reads them, so the ring holds no records from before a session.
    fn want_exits(&mut self, wanted: bool) {
        if wanted && let Err(error) = self.exits.map() {
            tracing::warn!("mapping the eBPF exit records: {error}");
        }
        if let Err(error) = self.exits_wanted.set(0, u32::from(wanted), 0) {
            tracing::warn!("switching the eBPF exit records {}: {error}", if wanted { "on" } else { "off" });
        }
        if !wanted {
            self.exits.unmap();
        }
    }

    /// Hands `each` the exit records written since the last call, oldest first,
    /// and frees their room in the ring.
    pub fn take_exit_records(&mut self, each: impl FnMut(ExitRecord)) {
        drain_exits(&mut self.exits, each);
    }

    /// The repair on the scheduler tick and idle entry: kernel work done anyway.
    fn attach_tick_repair(&mut self) -> Result<(), ProgramError> {
        let tick: &mut RawTracePoint =
            self.ebpf.program_mut(PROGRAM_REPAIR_TICK).ok_or(ProgramError::NotLoaded)?.try_into()?;
        self.repair_links = RepairLinks::Tick { tick: tick.attach(TICK_TRACEPOINT)?, idle: None };
        let idle: &mut RawTracePoint =
            self.ebpf.program_mut(PROGRAM_REPAIR_IDLE).ok_or(ProgramError::NotLoaded)?.try_into()?;
        let idle_link = idle.attach(IDLE_TRACEPOINT)?;
        if let RepairLinks::Tick { idle, .. } = &mut self.repair_links {
            *idle = Some(idle_link);
        }
        Ok(())
    }

    /// The repair on a CPU-clock timer on every online CPU, which wakes idle CPUs.
    fn attach_timer_repair(&mut self) -> Result<(), ProgramError> {
        let cpus = online_cpus().map_err(|(_, error)| ProgramError::IOError(error))?;
        let program: &mut PerfEvent =
            self.ebpf.program_mut(self.memory.resync_program()).ok_or(ProgramError::NotLoaded)?.try_into()?;
        let mut links = Vec::new();
        for cpu in cpus {
            let config = PerfEventConfig::Software(SoftwareEvent::CpuClock);
            let scope = PerfEventScope::AllProcessesOneCpu { cpu };
            match program.attach(config, scope, SamplePolicy::Period(RESYNC_PERIOD_NS), false) {
                Ok(link) => links.push(link),
                Err(error) => {
                    self.repair_links = RepairLinks::Timer(links);
                    return Err(error);
                }
            }
        }
        self.repair_links = RepairLinks::Timer(links);
        Ok(())
    }

    /// Detaches the repair and stops the exit records; the next reading attaches
    /// them again.
    pub fn pause_resync(&mut self) {
        if self.resync_since.take().is_some() {
            self.want_exits(false);
        }
        self.detach_repair();
    }

    fn detach_repair(&mut self) {
        let report = |result: Result<(), ProgramError>| {
            if let Err(error) = result {
                tracing::debug!("detaching the repair of untraced switches: {error}");
            }
        };
        match std::mem::replace(&mut self.repair_links, RepairLinks::None) {
            RepairLinks::None => {}
            RepairLinks::Tick { tick, idle } => {
                if let Some(program) = self.ebpf.program_mut(PROGRAM_REPAIR_TICK) {
                    report(<&mut RawTracePoint>::try_from(program).and_then(|program| program.detach(tick)));
                }
                if let (Some(idle), Some(program)) = (idle, self.ebpf.program_mut(PROGRAM_REPAIR_IDLE)) {
                    report(<&mut RawTracePoint>::try_from(program).and_then(|program| program.detach(idle)));
                }
            }
            RepairLinks::Timer(links) => {
                if let Some(program) = self.ebpf.program_mut(self.memory.resync_program())
                    && let Ok(program) = <&mut PerfEvent>::try_from(program)
                {
                    for link in links {
                        report(program.detach(link));
                    }
                }
            }
        }
    }

    /// Cumulative on-CPU ns of process `tgid` since the program was attached, at
    /// the instant of the call; 0 if it has not run since.
    pub fn process_ns(&self, tgid: u32) -> Result<u64, MapError> {
        Ok(self.entry(tgid)?.map_or(0, |copies| sum_at(&copies, monotonic_ns())))
    }

    /// The CPU time of process `tgid`, whose utime + stime in /proc are
    /// `proc_ticks`: from the map, or from /proc when the map-full rule says so.
    fn reading_ns(&mut self, tgid: u32, proc_ticks: u64) -> Result<u64, MapError> {
        let copies = self.entry(tgid)?;
        if self.map_full.active() && self.map_full.reads_from_proc(tgid, || copies.is_some()) {
            return Ok(self.map_full.proc_ns(proc_ticks));
        }
        Ok(copies.map_or(0, |copies| sum_at(&copies, monotonic_ns())))
    }

    /// Puts the iterator's `records` of processes on /proc (see `map_full`) on their
    /// /proc totals. A record with time has an entry: only one read as 0 may lack one.
    fn read_uncounted_from_proc(&mut self, records: &mut [ProcessRecord]) {
        for record in records {
            let (tgid, times) = (record.tgid, &self.times);
            let has_entry = || record.cpu_ns != 0 || !matches!(times.get(&tgid, 0), Err(MapError::KeyNotFound));
            if !self.map_full.reads_from_proc(tgid, has_entry) {
                continue;
            }
            // Gone since the iterator saw it: its record goes with the next listing.
            if let Some(ticks) = self.proc_stats.read(tgid, |stat| stat.utime + stat.stime) {
                record.cpu_ns = self.map_full.proc_ns(ticks);
            }
        }
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
        self.sum_unsummed(out);
        // The kernel walks tasks in pid order; sorting guards the merge (and the
        // search below) against a kernel that does not.
        if !out.is_sorted_by_key(|record| record.tgid) {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        let visited = out.len();
        if self.map_full.active() {
            self.read_uncounted_from_proc(out);
        }
        let (blind, mut stats) = (std::mem::take(&mut self.blind), std::mem::take(&mut self.proc_stats));
        blind.append_missing(&mut stats, out, visited, |pid, ticks| self.reading_ns(pid, ticks).unwrap_or(0));
        (self.blind, self.proc_stats) = (blind, stats);
        if out.len() > visited {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        self.map_full.listed(out.len());
        Ok(())
    }

    /// Fills in the time of the records the iterator could not sum (a kernel without
    /// `bpf_map_lookup_percpu_elem`): one map lookup each, which returns every CPU's
    /// copy; 0 for a process without an entry, as the iterator would write.
    fn sum_unsummed(&self, records: &mut [ProcessRecord]) {
        let now = monotonic_ns();
        for record in records.iter_mut().filter(|record| record.cpu_ns == CPU_NS_UNSUMMED) {
            record.cpu_ns = match self.entry(record.tgid) {
                Ok(copies) => copies.map_or(0, |copies| sum_at(&copies, now)),
                Err(error) => {
                    tracing::debug!("reading the eBPF entry of {}: {error}", record.tgid);
                    0
                }
            };
        }
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
        debug_assert_eq!(ERR_COUNT, 4);
        Ok(ErrorCounts {
            map_full: sum(ERR_MAP_FULL)?,
            read_task: sum(ERR_READ_TASK)?,
            mismatch: sum(ERR_MISMATCH)?,
            exit_lost: sum(ERR_EXIT_LOST)?,
        })
    }

    /// Logs failures the program counted since the last report, and opens or
    /// closes a map-full episode (logged once each), before a reading.
    fn report_errors(&mut self) {
        let counts = match self.error_counts() {
            Ok(counts) => counts,
            Err(error) => return tracing::warn!("reading the eBPF error counters: {error}"),
        };
        let new = |now: u64, before: u64| now.saturating_sub(before);
        self.map_full.observe(counts.map_full);
        let unread = new(counts.read_task, self.reported.read_task);
        if unread > 0 {
            tracing::warn!("eBPF program could not read {unread} task ids; their time is not counted");
        }
        let lost = new(counts.exit_lost, self.reported.exit_lost);
        if lost > 0 {
            tracing::warn!(
                "eBPF exit records: {lost} exited processes did not fit in the ring between two scans; \
                 the time they ran since the previous scan is missing from their parents"
            );
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

    fn degraded(&self) -> &[String] {
        &self.degraded
    }

    fn error_counts(&self) -> Vec<(&'static str, u64)> {
        match EbpfCpuTime::error_counts(self) {
            Ok(c) => vec![("map_full", c.map_full), ("read_task", c.read_task), ("mismatch", c.mismatch)],
            Err(error) => {
                tracing::debug!("reading the eBPF error counters: {error}");
                Vec::new()
            }
        }
    }

    fn cumulative_ns(&mut self, procs: &[ScannedCpu], out: &mut Vec<u64>) -> Result<(), CpuTimeError> {
        out.clear();
        if let Err(error) = self.resume_resync() {
            // Readings stay right for every task that switches; only tasks that
            // leave a CPU unseen by the tracepoint are charged late.
            tracing::warn!("attaching resync failed: {error}");
        }
        self.report_errors();
        for proc in procs {
            let ns = self
                .reading_ns(proc.pid, proc.ticks)
                .map_err(|error| CpuTimeError::Map { map: PROCESS_TIME_MAP, source: Box::new(error) })?;
            out.push(ns);
        }
        Ok(())
    }

    fn take_exits(&mut self, out: &mut Vec<Exit>) -> bool {
        out.clear();
        // The records come from the `sched_process_free` program: without it (a
        // kernel that refused it), none ever come.
        if !self.kernel_cleanup {
            return false;
        }
        let times = &mut self.times;
        drain_exits(&mut self.exits, |record| {
            out.push(Exit {
                pid: record.tgid,
                start_time: record.start_time_ns,
                ppid: record.ppid,
                total_ns: final_total(times, &record),
                comm: record.comm,
            })
        });
        true
    }

    fn read_processes(&mut self, out: &mut Vec<ProcessRecord>) -> Option<Result<(), CpuTimeError>> {
        if !self.iterator {
            return None;
        }
        if let Err(error) = self.resume_resync() {
            tracing::warn!("attaching resync failed: {error}");
        }
        self.report_errors();
        Some(self.list_processes(out).map_err(CpuTimeError::Iterator))
    }

    fn active(&mut self) {
        if let Err(error) = self.attach_resync() {
            tracing::warn!("attaching resync failed: {error}");
        }
    }

    fn idle(&mut self) {
        self.pause_resync();
        // Sized by the host's processes (64 KiB for 1,100): an agent nobody
        // watches does not keep it for the next client.
        self.iterator_output = Vec::new();
    }

    /// Deletes the entries of processes absent from `live`. An entry with a thread
    /// still on a CPU is kept: its pid was reused by a process born after the scan
    /// (or the dead one's last switch is a moment away), and deleting it mid-slice
    /// would leave the slice's end unmatched. It goes at a later scan.
    fn retain_live(&mut self, live: &[u32]) {
        self.map_full.retain_live(live);
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

/// Hands `each` the records in the `exits` ring, oldest first, and frees their room.
fn drain_exits(exits: &mut ExitRing, mut each: impl FnMut(ExitRecord)) {
    while let Some(item) = exits.next() {
        if item.len() >= std::mem::size_of::<ExitRecord>() {
            // SAFETY: the program writes whole `ExitRecord`s, plain integers
            // (aya::Pod) valid for any bit pattern; read unaligned.
            each(unsafe { item.as_ptr().cast::<ExitRecord>().read_unaligned() });
        }
    }
}

/// The final total of an exit `record`. One the program could not sum (before
/// Linux 5.19) is summed here from the process's entry, which the program left for
/// this, and the entry is deleted. Until then its pid could be reused by a process
/// whose first slices would add to it; pids being handed out in increasing order up
/// to `pid_max`, that needs the pids to wrap between an exit and the next scan.
fn final_total(times: &mut PerCpuHashMap<MapData, u32, ProcessTime>, record: &ExitRecord) -> u64 {
    if record.cpu_ns != CPU_NS_UNSUMMED {
        return record.cpu_ns;
    }
    let total = match times.get(&record.tgid, 0) {
        Ok(copies) => sum_at(&copies, monotonic_ns()),
        Err(_) => 0,
    };
    match times.remove(&record.tgid) {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(error) => tracing::debug!("deleting the eBPF entry of {}: {error}", record.tgid),
    }
    total
}

/// Makes every online CPU switch tasks once, now (the `sched_switch` program checks
/// the CPU's record at each switch), unless `deadline` comes first: true when each
/// one did.
fn switch_on_every_cpu(deadline: Instant) -> bool {
    let cpus = match online_cpus() {
        Ok(cpus) => cpus,
        Err((_, error)) => {
            tracing::debug!("listing the online CPUs to switch on: {error}");
            return false;
        }
    };
    match crate::host::every_cpu::switch_on_every_cpu(&cpus, deadline) {
        Ok(missed) if missed.is_empty() => true,
        Ok(missed) => {
            tracing::debug!("could not run on CPUs {missed:?}: the first reading waits for the repair there");
            false
        }
        Err(error) => {
            tracing::debug!("switching on every CPU: {error}; the first reading waits for the repair");
            false
        }
    }
}

/// A process's cumulative on-CPU ns at `now_ns`: its copies summed over CPUs.
fn sum_at(copies: &PerCpuValues<ProcessTime>, now_ns: u64) -> u64 {
    copies.iter().fold(0u64, |total, time| total.wrapping_add(time.at(now_ns)))
}
