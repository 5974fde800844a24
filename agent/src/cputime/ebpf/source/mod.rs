//! The runtime source: reads per-process CPU time from the program's map (or every
//! process at once from its task iterator), keeps `resync` attached and exits
//! recorded only while clients are connected, hands over the exit records, and
//! deletes the entries of processes that are gone. The map reads are in
//! [`maps`], the repair's attachments in [`repair`], the processes read from
//! /proc while the map is full in [`proc_fallback`].

mod maps;
mod proc_fallback;
mod repair;

use std::time::Instant;

use agent_common::cputime::{ERRORS_MAP, EXITS_MAP, EXITS_WANTED_MAP, PROCESS_TIME_MAP, ProcessTime};
use aya::Ebpf;
use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap};

use super::blind::{BlindPids, ProcStats};
use super::exit_ring::ExitRing;
use super::load::{AttachKind, EbpfLoadError, MapMemory};
use super::map_full::MapFull;
use crate::cputime::attribution::Exit;
use crate::cputime::{CpuSourceKind, CpuTimeError, CpuTimeSource, ProcessRecord, ScannedCpu};
use maps::{drain_exits, final_total};
use repair::RepairLinks;

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
