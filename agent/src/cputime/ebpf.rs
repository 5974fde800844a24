//! The eBPF CPU-time source: loads the embedded `sched_switch` program (built by
//! `cargo xtask build-ebpf`), attaches it, and reads per-process on-CPU time from
//! its map, including the slices still running at the instant of the read.
//!
//! Values count from the moment the program was attached, not from process start:
//! the processes collector only ever uses their differences.

use std::{
    io,
    io::Read as _,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use agent_common::cputime::{
    ERR_COUNT, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, ERRORS_MAP, FREE_TRACEPOINT, ITER_TARGET, LOADED_AT_GLOBAL,
    MAX_CPUS, MAX_PROCESSES, MM_RSS_OFFSETS_GLOBAL, POSSIBLE_CPUS_GLOBAL, PREALLOCATED_GLOBAL, PROCESS_TIME_MAP,
    PROCESS_TIME_PREALLOC_MAP, PROGRAM_BTF, PROGRAM_FREE_BTF, PROGRAM_FREE_RAW, PROGRAM_PROCESSES, PROGRAM_RAW,
    PROGRAM_RESYNC, ProcessTime, RESYNC_PERIOD_NS, TASK_COMM_OFFSET_GLOBAL, TASK_EXEC_START_OFFSET_GLOBAL,
    TASK_MM_OFFSET_GLOBAL, TASK_PID_OFFSET_GLOBAL, TASK_PREV_SUM_EXEC_OFFSET_GLOBAL, TASK_START_TIME_OFFSET_GLOBAL,
    TASK_SUM_EXEC_OFFSET_GLOBAL, TASK_TGID_OFFSET_GLOBAL, TRACEPOINT,
};
use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        BtfTracePoint, Iter, PerfEvent, ProgramError, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};

use crate::collect::procfs::{self, ProcDir};

use super::{
    CpuSourceKind, CpuTimeError, CpuTimeSource, ProcessRecord, ScannedCpu,
    btf::{self, ProcessOffsets, TaskOffsets},
};

/// The program object, committed in the repository so building the agent needs no
/// eBPF toolchain.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!("../../ebpf/socktop-cpu.bpf.o")
}

/// Which of the program's two twins is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachKind {
    /// `tp_btf/sched_switch` (kernel >= 5.5): typed arguments, cheapest to call.
    BtfTracePoint,
    /// `raw_tp/sched_switch`: for kernels that have BTF but refuse `tp_btf`.
    RawTracePoint,
}

impl AttachKind {
    /// The `sched_switch` program of this kind.
    fn program_name(self) -> &'static str {
        match self {
            AttachKind::BtfTracePoint => PROGRAM_BTF,
            AttachKind::RawTracePoint => PROGRAM_RAW,
        }
    }

    /// The `sched_process_free` program of this kind.
    fn free_program_name(self) -> &'static str {
        match self {
            AttachKind::BtfTracePoint => PROGRAM_FREE_BTF,
            AttachKind::RawTracePoint => PROGRAM_FREE_RAW,
        }
    }
}

/// How the per-CPU process map gets its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMemory {
    /// Entry by entry as processes appear: 8 bytes per possible CPU per process.
    OnDemand,
    /// All `MAX_PROCESSES` entries up front, 8 bytes per possible CPU each. Before
    /// Linux 6.1 the verifier lets a perf-event program (`resync`) use only
    /// preallocated hash maps.
    Preallocated,
}

impl MapMemory {
    /// The map the programs count in, and the one left unused.
    fn maps(self) -> (&'static str, &'static str) {
        match self {
            MapMemory::OnDemand => (PROCESS_TIME_MAP, PROCESS_TIME_PREALLOC_MAP),
            MapMemory::Preallocated => (PROCESS_TIME_PREALLOC_MAP, PROCESS_TIME_MAP),
        }
    }

    /// The value of the program's `PREALLOCATED` global (borrowed by the loader).
    fn global(self) -> &'static u32 {
        match self {
            MapMemory::OnDemand => &0,
            MapMemory::Preallocated => &1,
        }
    }
}

/// Why the eBPF source could not start; the agent then falls back to /proc.
#[derive(Debug, thiserror::Error)]
pub enum EbpfLoadError {
    #[error("not permitted: needs root, or CAP_BPF with CAP_PERFMON")]
    NotPermitted,
    #[error("not in the host pid namespace, so the kernel's pids would not match /proc")]
    ForeignPidNamespace,
    #[error("no usable kernel BTF, which gives the task_struct layout: {0}")]
    NoBtf(#[from] btf::BtfError),
    #[error("kernel BTF for tp_btf and the task iterator: {0}")]
    KernelBtf(String),
    #[error("loading the eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    #[error("the verifier rejected {program}: {last_line}")]
    Verifier {
        program: &'static str,
        /// The last line of the verifier log, which names the failing check.
        last_line: String,
        /// The whole verifier log.
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} {program}: {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("reading {POSSIBLE_CPUS_PATH}: {0}")]
    PossibleCpus(#[source] io::Error),
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Loads the program, preferring `tp_btf` and falling back to its `raw_tp` twin.
pub fn load() -> Result<EbpfCpuTime, EbpfLoadError> {
    match load_kind(AttachKind::BtfTracePoint) {
        Err(btf_error) if !matches!(btf_error, EbpfLoadError::NotPermitted | EbpfLoadError::ForeignPidNamespace) => {
            tracing::debug!("tp_btf program unavailable ({btf_error}); trying raw_tp");
            load_kind(AttachKind::RawTracePoint).map_err(|raw_error| {
                tracing::debug!("raw_tp program unavailable: {raw_error}");
                btf_error
            })
        }
        other => other,
    }
}

/// Loads and attaches one twin of the program, with the process map allocated on
/// demand unless the kernel wants it preallocated.
pub fn load_kind(kind: AttachKind) -> Result<EbpfCpuTime, EbpfLoadError> {
    load_with(kind, None)
}

/// Loads and attaches one twin of the program with the process map's memory
/// chosen, not detected (tests run the preallocated twin on kernels that allow both).
pub fn load_with_memory(kind: AttachKind, memory: MapMemory) -> Result<EbpfCpuTime, EbpfLoadError> {
    load_with(kind, Some(memory))
}

fn load_with(kind: AttachKind, memory: Option<MapMemory>) -> Result<EbpfCpuTime, EbpfLoadError> {
    check_privileges()?;
    check_pid_namespace()?;
    // Parsing the kernel's BTF (ours for offsets, aya's for attach points) makes
    // megabytes of short-lived allocations. Made and freed on a thread of its own,
    // they stay in that thread's malloc arena, apart from the long-lived state made
    // on this one, so freeing them returns the pages: mixed in one heap, the
    // long-lived pieces kept hundreds of KiB of it resident (idle RSS).
    let (offsets, process_offsets, loader) = on_scratch_thread(|| {
        let vmlinux = btf::read(Path::new(btf::VMLINUX_BTF))?;
        let process_offsets = btf::parse_process_offsets(&vmlinux)
            .inspect_err(|error| tracing::info!("processes are listed from /proc: {error}"))
            .ok();
        let offsets = btf::parse_task_offsets(&vmlinux)?;
        // `new` parses the kernel's BTF for CO-RE relocations, which Rust objects
        // do not have; it is dropped here, on this thread.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        Ok::<_, EbpfLoadError>((offsets, process_offsets, loader))
    })?;
    let possible_cpus = std::fs::read_to_string(POSSIBLE_CPUS_PATH)
        .and_then(|list| {
            cpu_id_bound(&list).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{list:?}")))
        })
        .map_err(EbpfLoadError::PossibleCpus)?;
    let (mut ebpf, memory) = load_object(loader, offsets, process_offsets, possible_cpus, memory)?;
    // Read for the prefill below and, with the iterator, for `find_blind_pids`.
    let proc_dir =
        ProcDir::open(Path::new("/proc")).inspect_err(|error| tracing::debug!("opening /proc: {error}")).ok();
    if memory == MapMemory::OnDemand {
        prefill(&mut ebpf, proc_dir.as_ref())?;
    }
    let (kernel_cleanup, iterator) = on_scratch_thread(|| {
        let kernel_btf = Btf::from_sys_fs().map_err(|error| EbpfLoadError::KernelBtf(error.to_string()));
        let kernel_cleanup = attach(&mut ebpf, kind, &kernel_btf)?;
        let iterator = process_offsets.is_some() && load_iterator(&mut ebpf, &kernel_btf);
        Ok::<_, EbpfLoadError>((kernel_cleanup, iterator))
    })?;
    let mut source = EbpfCpuTime::new(ebpf, kind, iterator, memory)?;
    source.kernel_cleanup = kernel_cleanup;
    if iterator {
        source.find_blind_pids(proc_dir);
    }
    // Prove now that `resync` attaches, so a failure falls back to /proc at start
    // rather than at the first request; then leave it off until a client connects.
    source.resume_resync().map_err(|source| EbpfLoadError::Program {
        action: "attaching",
        program: PROGRAM_RESYNC,
        source,
    })?;
    source.pause_resync();
    Ok(source)
}

/// Inserts an empty entry for every process in /proc into the map allocated on
/// demand, before the programs attach. The program takes a new entry from a small
/// per-CPU cache that the kernel refills after the program returns; attached to a
/// running system it would meet every process within milliseconds, and some
/// inserts failed (1 to 3 of ~70 processes here, each losing a slice). Processes
/// born later come a few at a time (300 forked at once lost none).
fn prefill(ebpf: &mut Ebpf, proc_dir: Option<&ProcDir>) -> Result<(), EbpfLoadError> {
    let map = ebpf.map_mut(PROCESS_TIME_MAP).ok_or(EbpfLoadError::Missing(PROCESS_TIME_MAP))?;
    let mut times = PerCpuHashMap::<_, u32, ProcessTime>::try_from(map)
        .map_err(|source| EbpfLoadError::Map { map: PROCESS_TIME_MAP, source })?;
    let possible = aya::util::nr_cpus().map_err(|(_, error)| EbpfLoadError::PossibleCpus(error))?;
    let mut failed = 0;
    for pid in listed_pids(proc_dir, &mut Vec::new()) {
        // Fails only when the length is not the number of possible CPUs.
        let empty =
            PerCpuValues::try_from(vec![ProcessTime::default(); possible]).map_err(EbpfLoadError::PossibleCpus)?;
        if let Err(error) = times.insert(pid, empty, BPF_NOEXIST) {
            tracing::debug!("prefilling the eBPF entry of {pid}: {error}");
            failed += 1;
        }
    }
    if failed > 0 {
        tracing::info!("{failed} processes were not prefilled in the eBPF map; their first slice may go uncounted");
    }
    Ok(())
}

/// `BPF_NOEXIST` from include/uapi/linux/bpf.h: insert only, never overwrite.
const BPF_NOEXIST: u64 = 1;

/// Runs `work` on a thread of its own and returns its result (see `load_kind`).
fn on_scratch_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join()).unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The CPUs the kernel may ever bring up, as a list of ranges.
const POSSIBLE_CPUS_PATH: &str = "/sys/devices/system/cpu/possible";

/// One past the highest CPU id in a kernel CPU list such as `0-3,8-11` (the
/// kernel's `nr_cpu_ids`); None when the list is malformed or says more than
/// `MAX_CPUS`.
fn cpu_id_bound(list: &str) -> Option<u32> {
    let mut bound = None;
    for range in list.trim().split(',') {
        let last = range.rsplit('-').next()?.parse::<u32>().ok()?;
        bound = bound.max(Some(last.checked_add(1)?));
    }
    bound.filter(|&bound| bound <= MAX_CPUS)
}

/// Loads the object and its `resync` program, which decides the process map's
/// memory. Before Linux 6.1 the verifier refuses a map allocated on demand to a
/// perf-event program like `resync`, and warns in the kernel log when a raw_tp
/// program uses one; so `resync` is loaded first, and when `memory` is not given
/// and the verifier refuses it, the object is loaded again with the preallocated map.
fn load_object(
    loader: EbpfLoader<'static>,
    offsets: TaskOffsets,
    process: Option<ProcessOffsets>,
    possible_cpus: u32,
    memory: Option<MapMemory>,
) -> Result<(Ebpf, MapMemory), EbpfLoadError> {
    // The globals below are borrowed for as long as the loader lives.
    let mut loader: EbpfLoader<'_> = loader;
    let loaded_at = monotonic_ns();
    loader
        .override_global(LOADED_AT_GLOBAL, &loaded_at, true)
        .override_global(POSSIBLE_CPUS_GLOBAL, &possible_cpus, true)
        .override_global(TASK_PID_OFFSET_GLOBAL, &offsets.pid, true)
        .override_global(TASK_TGID_OFFSET_GLOBAL, &offsets.tgid, true)
        .override_global(TASK_SUM_EXEC_OFFSET_GLOBAL, &offsets.sum_exec_runtime, true)
        .override_global(TASK_PREV_SUM_EXEC_OFFSET_GLOBAL, &offsets.prev_sum_exec_runtime, true)
        .override_global(TASK_EXEC_START_OFFSET_GLOBAL, &offsets.exec_start, true);
    // Left at 0 without them: the iterator is then not loaded at all.
    if let Some(process) = &process {
        loader
            .override_global(TASK_START_TIME_OFFSET_GLOBAL, &process.start_time, true)
            .override_global(TASK_COMM_OFFSET_GLOBAL, &process.comm, true)
            .override_global(TASK_MM_OFFSET_GLOBAL, &process.mm, true)
            .override_global(MM_RSS_OFFSETS_GLOBAL, &process.rss_counters, true);
    }
    let mut load = |memory: MapMemory| -> Result<Ebpf, EbpfLoadError> {
        let (used, unused) = memory.maps();
        loader
            .override_global(PREALLOCATED_GLOBAL, memory.global(), true)
            .map_max_entries(used, MAX_PROCESSES)
            .map_max_entries(unused, 1);
        let mut ebpf = loader.load(object()).map_err(|error| match &error {
            EbpfError::MapError(MapError::CreateError { io_error, .. }) if is_eperm(io_error) => {
                EbpfLoadError::NotPermitted
            }
            _ => EbpfLoadError::Object(error),
        })?;
        load_resync(&mut ebpf)?;
        Ok(ebpf)
    };
    match memory {
        Some(memory) => Ok((load(memory)?, memory)),
        None => match load(MapMemory::OnDemand) {
            Err(EbpfLoadError::Verifier { log, .. }) if log.contains("preallocated") => {
                let kib = u64::from(MAX_PROCESSES) * 8 * u64::from(possible_cpus) / 1024;
                tracing::info!("the verifier wants a preallocated process map (Linux < 6.1): {kib} KiB");
                Ok((load(MapMemory::Preallocated)?, MapMemory::Preallocated))
            }
            other => Ok((other?, MapMemory::OnDemand)),
        },
    }
}

/// Attaches the `sched_switch` program of `kind`, then its `sched_process_free`
/// companion; returns whether the companion attached (without it, user space
/// deletes the entries of dead processes, see `retain_live`).
fn attach(ebpf: &mut Ebpf, kind: AttachKind, kernel_btf: &Result<Btf, EbpfLoadError>) -> Result<bool, EbpfLoadError> {
    attach_tracepoint(ebpf, kind, kind.program_name(), TRACEPOINT, kernel_btf)?;
    let freed = attach_tracepoint(ebpf, kind, kind.free_program_name(), FREE_TRACEPOINT, kernel_btf);
    if let Err(error) = &freed {
        tracing::info!("entries of exited processes are deleted by scans: {error}");
    }
    Ok(freed.is_ok())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    kind: AttachKind,
    name: &'static str,
    tracepoint: &str,
    kernel_btf: &Result<Btf, EbpfLoadError>,
) -> Result<(), EbpfLoadError> {
    let program = ebpf.program_mut(name).ok_or(EbpfLoadError::Missing(name))?;
    let wrap = |action| move |source| EbpfLoadError::Program { action, program: name, source };
    match kind {
        AttachKind::BtfTracePoint => {
            let btf = kernel_btf.as_ref().map_err(|error| EbpfLoadError::KernelBtf(error.to_string()))?;
            let program: &mut BtfTracePoint = program.try_into().map_err(wrap("selecting"))?;
            program.load(tracepoint, btf).map_err(|e| load_error(name, e))?;
            program.attach().map_err(wrap("attaching"))?;
        }
        AttachKind::RawTracePoint => {
            let program: &mut RawTracePoint = program.try_into().map_err(wrap("selecting"))?;
            program.load().map_err(|e| load_error(name, e))?;
            program.attach(tracepoint).map_err(wrap("attaching"))?;
        }
    }
    Ok(())
}

/// Loads the process iterator; false (logged) when the kernel refuses it, and the
/// processes scan reads /proc instead. It needs kernel BTF and Linux >= 5.8.
fn load_iterator(ebpf: &mut Ebpf, kernel_btf: &Result<Btf, EbpfLoadError>) -> bool {
    let loaded = (|| -> Result<(), Box<dyn std::error::Error>> {
        let btf = kernel_btf.as_ref().map_err(|error| error.to_string())?;
        let program: &mut Iter =
            ebpf.program_mut(PROGRAM_PROCESSES).ok_or(EbpfLoadError::Missing(PROGRAM_PROCESSES))?.try_into()?;
        program.load(ITER_TARGET, btf).map_err(|e| load_error(PROGRAM_PROCESSES, e))?;
        Ok(())
    })();
    if let Err(error) = &loaded {
        tracing::info!("processes are listed from /proc: the task iterator did not load: {error}");
    }
    loaded.is_ok()
}

/// Loads the `resync` perf-event program; [`EbpfCpuTime::resume_resync`] attaches
/// it on every online CPU, each `RESYNC_PERIOD_NS` of CPU clock (see the program
/// for why).
fn load_resync(ebpf: &mut Ebpf) -> Result<(), EbpfLoadError> {
    let name = PROGRAM_RESYNC;
    let program = ebpf.program_mut(name).ok_or(EbpfLoadError::Missing(name))?;
    let program: &mut PerfEvent =
        program.try_into().map_err(|source| EbpfLoadError::Program { action: "selecting", program: name, source })?;
    program.load().map_err(|e| load_error(name, e))?;
    Ok(())
}

/// Sorts a program load failure into "not permitted", "verifier said no" and the rest.
fn load_error(program: &'static str, error: ProgramError) -> EbpfLoadError {
    match error {
        ProgramError::LoadError { io_error, .. } if is_eperm(&io_error) => EbpfLoadError::NotPermitted,
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let last_line = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
            EbpfLoadError::Verifier { program, last_line, log, source: io_error }
        }
        source => EbpfLoadError::Program { action: "loading", program, source },
    }
}

fn is_eperm(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EPERM)
}

// Capability numbers from include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Tracing programs need CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (Linux >= 5.8).
fn check_privileges() -> Result<(), EbpfLoadError> {
    match std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective_caps(&s)) {
        Some(caps) if !may_trace(caps) => Err(EbpfLoadError::NotPermitted),
        // Unknown: let the kernel decide.
        _ => Ok(()),
    }
}

/// The `CapEff:` mask of a `/proc/PID/status` file.
fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

fn may_trace(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// The program sees pids of the initial pid namespace; /proc in another namespace
/// lists other numbers. `PROC_PID_INIT_INO` is from include/linux/proc_ns.h.
fn check_pid_namespace() -> Result<(), EbpfLoadError> {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(meta) if meta.ino() != PROC_PID_INIT_INO => Err(EbpfLoadError::ForeignPidNamespace),
        _ => Ok(()),
    }
}

/// The pids `dir` lists, ascending; none when it cannot be listed.
fn listed_pids(dir: Option<&ProcDir>, buffer: &mut Vec<u8>) -> Vec<u32> {
    let mut pids = Vec::new();
    let Some(dir) = dir else { return pids };
    if let Err(error) = dir.list_pids(buffer, &mut pids) {
        tracing::debug!("listing /proc: {error}");
        pids.clear();
    }
    pids.sort_unstable();
    pids
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

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

/// Run statistics of the attached program (while `kernel.bpf_stats_enabled` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time: Duration,
    pub run_count: u64,
}

/// The eBPF CPU-time source. Dropping it detaches the program and frees its maps.
pub struct EbpfCpuTime {
    /// Owns the attached program; it stays attached as long as this lives.
    ebpf: Ebpf,
    times: PerCpuHashMap<MapData, u32, ProcessTime>,
    /// How `times` gets its memory.
    memory: MapMemory,
    errors: PerCpuArray<MapData, u64>,
    /// Error counts already logged, so each new failure is reported once.
    reported: ErrorCounts,
    attach: AttachKind,
    /// The `resync` attachments, one per CPU; empty while the agent is idle. Its
    /// timer interrupts every CPU every `RESYNC_PERIOD_NS`, which an agent nobody
    /// watches should not do.
    resync_links: Vec<PerfEventLinkId>,
    /// When `resync` was attached; None while it is not.
    resync_since: Option<Instant>,
    /// Whether the process iterator loaded.
    iterator: bool,
    /// Whether the kernel deletes the entries of exited processes itself (the
    /// `sched_process_free` program is attached).
    kernel_cleanup: bool,
    /// Whether `retain_live` ran once: with kernel cleanup it is needed only for
    /// processes that exited while the programs were being attached.
    retained_once: bool,
    /// What the iterator wrote at the last reading, kept for its allocation.
    iterator_output: Vec<u8>,
    /// Processes the task iterator does not visit although /proc lists them, found
    /// at load by comparing the two (on the development VM's 6.18 kernel, pid 1 and
    /// its threads are never visited). Listings read these from /proc instead.
    blind_pids: Vec<u32>,
    /// `/proc`, kept open to read the blind pids' stat files.
    proc_dir: Option<ProcDir>,
    stat_buffer: Vec<u8>,
}

impl EbpfCpuTime {
    fn new(mut ebpf: Ebpf, attach: AttachKind, iterator: bool, memory: MapMemory) -> Result<Self, EbpfLoadError> {
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
            blind_pids: Vec::new(),
            proc_dir: None,
            stat_buffer: Vec::new(),
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

    pub fn attach_kind(&self) -> AttachKind {
        self.attach
    }

    pub fn map_memory(&self) -> MapMemory {
        self.memory
    }

    /// Whether the kernel deletes the entries of exited processes itself.
    pub fn kernel_cleanup(&self) -> bool {
        self.kernel_cleanup
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
    fn list_processes(&mut self, out: &mut Vec<ProcessRecord>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
        for index in 0..self.blind_pids.len() {
            let pid = self.blind_pids[index];
            if out[..visited].binary_search_by_key(&pid, |record| record.tgid).is_err()
                && let Some(record) = self.record_from_proc(pid)
            {
                out.push(record);
            }
        }
        if out.len() > visited {
            out.sort_unstable_by_key(|record| record.tgid);
        }
        Ok(())
    }

    /// Compares one pass of the iterator with /proc and keeps the processes the
    /// iterator missed although /proc listed them before and after it; `dir` is
    /// kept to read those.
    fn find_blind_pids(&mut self, dir: Option<ProcDir>) {
        let mut buffer = Vec::new();
        let before = listed_pids(dir.as_ref(), &mut buffer);
        let mut records = Vec::new();
        if let Err(error) = self.list_processes(&mut records) {
            self.iterator = false;
            return tracing::info!("processes are listed from /proc: the task iterator failed: {error}");
        }
        let after = listed_pids(dir.as_ref(), &mut buffer);
        self.blind_pids = before
            .into_iter()
            .filter(|pid| after.binary_search(pid).is_ok())
            .filter(|pid| records.binary_search_by_key(pid, |record| record.tgid).is_err())
            .collect();
        if !self.blind_pids.is_empty() {
            self.proc_dir = dir;
            let shown = &self.blind_pids[..self.blind_pids.len().min(8)];
            tracing::info!(
                "the kernel's task iterator skips processes that /proc lists (pids {shown:?}, {} in all); \
                 they are read from /proc",
                self.blind_pids.len()
            );
        }
    }

    /// The record of `pid` as /proc/PID/stat and the CPU-time map give it; None
    /// when it is gone. Its start time is in clock ticks, not ns: it only has to
    /// stay the same for the same process.
    fn record_from_proc(&mut self, pid: u32) -> Option<ProcessRecord> {
        let file = self.proc_dir.as_ref()?.open_stat(pid).ok()?;
        let length = procfs::read_from_start(&file, &mut self.stat_buffer).ok()?;
        let stat = crate::collect::stat::parse_stat(&self.stat_buffer[..length]).ok()?;
        let mut comm = [0u8; 16];
        let name = &stat.comm[..stat.comm.len().min(comm.len())];
        comm[..name.len()].copy_from_slice(name);
        let (start_time_ns, rss_pages) = (stat.start_time, stat.rss_pages);
        let cpu_ns = self.process_ns(pid).unwrap_or(0);
        Some(ProcessRecord { tgid: pid, reserved: 0, start_time_ns, cpu_ns, rss_pages, comm })
    }

    /// Whether the map holds an entry for `tgid`.
    pub fn is_tracked(&self, tgid: u32) -> Result<bool, MapError> {
        Ok(self.entry(tgid)?.is_some())
    }

    /// Every CPU's copy of `tgid`'s entry; None without one.
    fn entry(&self, tgid: u32) -> Result<Option<PerCpuValues<ProcessTime>>, MapError> {
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

    /// Run time and count of the switch program and of `resync`, for measuring
    /// their cost.
    pub fn program_stats(&self) -> Result<[(&'static str, ProgramStats); 2], ProgramError> {
        let stats = |name: &'static str| -> Result<(&'static str, ProgramStats), ProgramError> {
            let info = self.ebpf.program(name).ok_or(ProgramError::NotLoaded)?.info()?;
            Ok((name, ProgramStats { run_time: info.run_time(), run_count: info.run_count() }))
        };
        Ok([stats(self.attach.program_name())?, stats(PROGRAM_RESYNC)?])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_caps_come_from_the_capeff_line() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tcat\n"), None);
    }

    #[test]
    fn tracing_needs_sys_admin_or_bpf_with_perfmon() {
        assert!(may_trace(1 << CAP_SYS_ADMIN));
        assert!(may_trace((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!may_trace(1 << CAP_BPF));
        assert!(!may_trace(0));
    }

    #[test]
    fn cpu_id_bound_is_one_past_the_highest_possible_id() {
        assert_eq!(cpu_id_bound("0-1\n"), Some(2));
        assert_eq!(cpu_id_bound("0"), Some(1));
        assert_eq!(cpu_id_bound("0-3,8-11"), Some(12));
        assert_eq!(cpu_id_bound("0,2,5"), Some(6));
        assert_eq!(cpu_id_bound(""), None);
        assert_eq!(cpu_id_bound("0-x"), None);
        assert_eq!(cpu_id_bound("0-8191"), Some(8192));
        assert_eq!(cpu_id_bound("0-8192"), None);
    }

    #[test]
    fn the_embedded_object_is_a_bpf_elf() {
        let object = object();
        assert_eq!(&object[..4], b"\x7fELF");
        // e_machine at offset 18: EM_BPF is 247 (include/uapi/linux/elf-em.h).
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
    }
}
