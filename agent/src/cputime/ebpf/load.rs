//! Loading and attaching: the privilege and namespace checks, the kernel's BTF
//! offsets, the object with its globals, and the programs attached in order.

use std::{io, os::unix::fs::MetadataExt, path::Path, sync::Arc};

use agent_common::cputime::{
    FREE_TRACEPOINT, ITER_TARGET, LOADED_AT_GLOBAL, MAX_CPUS, MAX_PROCESSES, MM_RSS_OFFSETS_GLOBAL,
    PERCPU_LOOKUP_GLOBAL, POSSIBLE_CPUS_GLOBAL, PREALLOCATED_GLOBAL, PROCESS_TIME_MAP, PROCESS_TIME_PREALLOC_MAP,
    PROGRAM_BTF, PROGRAM_FREE_BTF, PROGRAM_FREE_RAW, PROGRAM_FREE_RAW_PREALLOC, PROGRAM_PROCESSES, PROGRAM_RAW,
    PROGRAM_RAW_PREALLOC, PROGRAM_REPAIR_IDLE, PROGRAM_REPAIR_IDLE_PREALLOC, PROGRAM_REPAIR_TICK,
    PROGRAM_REPAIR_TICK_PREALLOC, PROGRAM_RESYNC, PROGRAM_RESYNC_PREALLOC, ProcessTime, RESYNC_PERIOD_NS,
    RSS_BY_PROBE_GLOBAL, TASK_COMM_OFFSET_GLOBAL, TASK_EXEC_START_OFFSET_GLOBAL, TASK_MM_OFFSET_GLOBAL,
    TASK_PID_OFFSET_GLOBAL, TASK_PREV_SUM_EXEC_OFFSET_GLOBAL, TASK_REAL_PARENT_OFFSET_GLOBAL,
    TASK_START_TIME_OFFSET_GLOBAL, TASK_SUM_EXEC_OFFSET_GLOBAL, TASK_TGID_OFFSET_GLOBAL, TRACEPOINT,
};
use aya::{
    Btf, BtfError, Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, PerCpuHashMap, PerCpuValues},
    programs::{BtfTracePoint, Iter, PerfEvent, ProgramError, RawTracePoint},
};

use super::blind::{BlindPids, ProcStats, listed_pids};
use super::map_full::MapFull;
use super::source::EbpfCpuTime;
use super::verifier;
use crate::cputime::btf::{self, ProcessOffsets, RssRead, TaskOffsets};
use crate::host::clock::{HostClock, monotonic_ns};
use crate::host::procfs::ProcDir;

/// The program object, committed in the repository so building the agent needs no
/// eBPF toolchain.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!("../../../ebpf/socktop-cpu.bpf.o")
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
    /// The `sched_switch` program of this kind for the process map's `memory`
    /// (a raw_tp program has a twin for the preallocated map, see
    /// `PROGRAM_RAW_PREALLOC`).
    pub(super) fn program_name(self, memory: MapMemory) -> &'static str {
        match (self, memory) {
            (AttachKind::BtfTracePoint, _) => PROGRAM_BTF,
            (AttachKind::RawTracePoint, MapMemory::OnDemand) => PROGRAM_RAW,
            (AttachKind::RawTracePoint, MapMemory::Preallocated) => PROGRAM_RAW_PREALLOC,
        }
    }

    /// The `sched_process_free` program of this kind for `memory`.
    pub(super) fn free_program_name(self, memory: MapMemory) -> &'static str {
        match (self, memory) {
            (AttachKind::BtfTracePoint, _) => PROGRAM_FREE_BTF,
            (AttachKind::RawTracePoint, MapMemory::OnDemand) => PROGRAM_FREE_RAW,
            (AttachKind::RawTracePoint, MapMemory::Preallocated) => PROGRAM_FREE_RAW_PREALLOC,
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
    pub(super) fn maps(self) -> (&'static str, &'static str) {
        match self {
            MapMemory::OnDemand => (PROCESS_TIME_MAP, PROCESS_TIME_PREALLOC_MAP),
            MapMemory::Preallocated => (PROCESS_TIME_PREALLOC_MAP, PROCESS_TIME_MAP),
        }
    }

    /// The `resync` twin that names only maps this memory allows (see the program's
    /// `TimeMap`).
    pub(super) fn resync_program(self) -> &'static str {
        match self {
            MapMemory::OnDemand => PROGRAM_RESYNC,
            MapMemory::Preallocated => PROGRAM_RESYNC_PREALLOC,
        }
    }

    /// The tick and idle repair programs that name only maps this memory allows
    /// without a kernel warning (see `PROGRAM_REPAIR_TICK_PREALLOC`).
    pub(super) fn tick_repair_programs(self) -> [&'static str; 2] {
        match self {
            MapMemory::OnDemand => [PROGRAM_REPAIR_TICK, PROGRAM_REPAIR_IDLE],
            MapMemory::Preallocated => [PROGRAM_REPAIR_TICK_PREALLOC, PROGRAM_REPAIR_IDLE_PREALLOC],
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
    /// Shared: one failed read of the kernel's BTF fails both of its users.
    #[error("kernel BTF for tp_btf and the task iterator: {0}")]
    KernelBtf(#[source] Arc<BtfError>),
    #[error("loading the eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    #[error("the verifier rejected {program}: {reason}")]
    Verifier {
        program: &'static str,
        /// The verifier's own reason, picked out of its log (see `verifier::reason`).
        reason: String,
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
    #[error("reading the host's clock: {0}")]
    HostClock(String),
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// Loads the program, preferring `tp_btf` and falling back to its `raw_tp` twin,
/// with the process map allocated on demand unless the kernel wants it
/// preallocated. `proc_root` is the procfs the agent reads (`--proc-root`).
pub fn load(proc_root: &Path, clock: HostClock) -> Result<EbpfCpuTime, EbpfLoadError> {
    match load_with(Choices::detected(AttachKind::BtfTracePoint), proc_root, clock) {
        Err(btf_error) if !matches!(btf_error, EbpfLoadError::NotPermitted | EbpfLoadError::ForeignPidNamespace) => {
            tracing::debug!("tp_btf program unavailable ({btf_error}); trying raw_tp");
            load_with(Choices::detected(AttachKind::RawTracePoint), proc_root, clock).map_err(|raw_error| {
                tracing::debug!("raw_tp program unavailable: {raw_error}");
                btf_error
            })
        }
        other => other,
    }
}

/// What [`load`] decides or detects, chosen instead: tests load a map too small for
/// the host to see it full, the preallocated twins where both would load, and the
/// sums of an older kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Choices {
    pub kind: AttachKind,
    /// The process map's memory; None: what the kernel accepts.
    pub memory: Option<MapMemory>,
    pub capacity: u32,
    /// Leaves the per-CPU sums to user space even where the kernel has
    /// `bpf_map_lookup_percpu_elem`, as on kernels before 5.19.
    pub sums_in_user_space: bool,
}

impl Choices {
    /// Everything as [`load`] decides it, with the `sched_switch` twin `kind`.
    pub fn detected(kind: AttachKind) -> Self {
        Self { kind, memory: None, capacity: MAX_PROCESSES, sums_in_user_space: false }
    }
}

/// [`load`] with some of its decisions made by `choices`.
pub(super) fn load_with(choices: Choices, proc_root: &Path, clock: HostClock) -> Result<EbpfCpuTime, EbpfLoadError> {
    let Choices { kind, memory, capacity, sums_in_user_space } = choices;
    check_privileges(proc_root)?;
    check_pid_namespace(proc_root)?;
    // Parsing the kernel's BTF (ours for offsets, aya's for attach points) makes
    // megabytes of short-lived allocations. Made and freed on a thread of its own,
    // they stay in that thread's malloc arena, apart from the long-lived state made
    // on this one, so freeing them returns the pages: mixed in one heap, the
    // long-lived pieces kept hundreds of KiB of it resident (idle RSS).
    let mut degraded = Degraded::default();
    let (offsets, process_offsets, percpu_lookup, loader) = on_scratch_thread(|| {
        let vmlinux = btf::read(Path::new(btf::VMLINUX_BTF))?;
        let process_offsets = btf::parse_process_offsets(&vmlinux)
            .inspect_err(|error| degraded.note("task iterator", format!("processes are listed from /proc: {error}")))
            .ok();
        let offsets = btf::parse_task_offsets(&vmlinux)?;
        let kernel_sums = btf::has_percpu_lookup(&vmlinux)?;
        let percpu_lookup = kernel_sums && !sums_in_user_space;
        if !kernel_sums {
            degraded.note(
                "per-CPU sums",
                "the kernel has no bpf_map_lookup_percpu_elem (Linux < 5.19): the agent sums each listed and \
                 exited process's per-CPU counters from the map itself"
                    .to_owned(),
            );
        }
        // `new` parses the kernel's BTF for CO-RE relocations, which Rust objects
        // do not have; it is dropped here, on this thread.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        Ok::<_, EbpfLoadError>((offsets, process_offsets, percpu_lookup, loader))
    })?;
    let possible_cpus = std::fs::read_to_string(POSSIBLE_CPUS_PATH)
        .and_then(|list| {
            cpu_id_bound(&list).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{list:?}")))
        })
        .map_err(EbpfLoadError::PossibleCpus)?;
    let features = Features { possible_cpus, percpu_lookup };
    let (mut ebpf, memory) = load_object(loader, offsets, process_offsets, features, memory, capacity)?;
    if memory == MapMemory::Preallocated {
        let kib = u64::from(capacity) * 8 * u64::from(possible_cpus) / 1024;
        degraded.note(
            "process map",
            format!("preallocated ({kib} KiB): the verifier lets a perf-event program use no other (Linux < 6.1)"),
        );
    }
    // Read for the prefill below and, with the iterator, for the pids it skips.
    let proc_dir =
        ProcDir::open(proc_root).inspect_err(|error| tracing::debug!("opening {}: {error}", proc_root.display())).ok();
    prefill(&mut ebpf, memory, proc_dir.as_ref())?;
    let (kernel_cleanup, iterator, repair_on_ticks) = on_scratch_thread(|| {
        let kernel_btf = Btf::from_sys_fs().map_err(Arc::new);
        let kernel_cleanup = attach(&mut ebpf, kind, memory, &kernel_btf, &mut degraded)?;
        let iterator = process_offsets.is_some() && load_iterator(&mut ebpf, &kernel_btf, &mut degraded);
        let repair_on_ticks = load_tick_repair(&mut ebpf, memory, &mut degraded);
        Ok::<_, EbpfLoadError>((kernel_cleanup, iterator, repair_on_ticks))
    })?;
    let mut source = EbpfCpuTime::new(ebpf, kind, iterator, memory, MapFull::new(capacity, clock))?;
    source.kernel_cleanup = kernel_cleanup;
    source.repair_on_ticks = repair_on_ticks;
    source.proc_stats = ProcStats::new(proc_dir);
    if iterator {
        match BlindPids::find(&mut source, clock) {
            Ok(blind) => source.blind = blind,
            Err(error) => {
                source.iterator = false;
                degraded
                    .note("task iterator", format!("processes are listed from /proc: the iterator failed: {error}"));
            }
        }
    }
    source.degraded = degraded.0;
    // Prove now that `resync` attaches, so a failure falls back to /proc at start
    // rather than at the first request; then leave it off until a client connects.
    source.resume_resync().map_err(|source| EbpfLoadError::Program {
        action: "attaching",
        program: if repair_on_ticks { memory.tick_repair_programs()[0] } else { memory.resync_program() },
        source,
    })?;
    source.pause_resync();
    Ok(source)
}

/// The features a kernel lacks, each logged once as it is found, in one line:
/// which feature and why; the source works on without them.
#[derive(Default)]
struct Degraded(Vec<String>);

impl Degraded {
    fn note(&mut self, feature: &str, why: String) {
        tracing::info!("eBPF {feature}: {why}");
        self.0.push(format!("{feature}: {why}"));
    }
}

/// What the loader tells the programs about the host, besides struct offsets.
#[derive(Clone, Copy)]
struct Features {
    /// `nr_cpu_ids`.
    possible_cpus: u32,
    /// Whether the kernel has `bpf_map_lookup_percpu_elem`.
    percpu_lookup: bool,
}

/// Inserts an empty entry for every process in /proc into the process map in use,
/// before the programs attach. Allocated on demand, the program takes a new entry
/// from a small per-CPU cache that the kernel refills after the program returns;
/// attached to a running system it would meet every process within milliseconds,
/// and some inserts failed (1 to 3 of ~70 processes here, each losing a slice).
/// Processes born later come a few at a time (300 forked at once lost none).
/// Preallocated (before Linux 6.1), no insert fails for want of memory, and the
/// prefill keeps the map's contents the same as on newer kernels: a map smaller
/// than the host holds the processes alive at start.
fn prefill(ebpf: &mut Ebpf, memory: MapMemory, proc_dir: Option<&ProcDir>) -> Result<(), EbpfLoadError> {
    let (name, _) = memory.maps();
    let map = ebpf.map_mut(name).ok_or(EbpfLoadError::Missing(name))?;
    let mut times = PerCpuHashMap::<_, u32, ProcessTime>::try_from(map)
        .map_err(|source| EbpfLoadError::Map { map: name, source })?;
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
    features: Features,
    memory: Option<MapMemory>,
    capacity: u32,
) -> Result<(Ebpf, MapMemory), EbpfLoadError> {
    // The globals below are borrowed for as long as the loader lives.
    let mut loader: EbpfLoader<'_> = loader;
    let loaded_at = monotonic_ns();
    let percpu_lookup = u32::from(features.percpu_lookup);
    let rss_by_probe = u32::from(process.is_some_and(|process| process.rss_read == RssRead::Probe));
    loader
        .override_global(LOADED_AT_GLOBAL, &loaded_at, true)
        .override_global(POSSIBLE_CPUS_GLOBAL, &features.possible_cpus, true)
        .override_global(PERCPU_LOOKUP_GLOBAL, &percpu_lookup, true)
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
            .override_global(TASK_REAL_PARENT_OFFSET_GLOBAL, &process.real_parent, true)
            .override_global(MM_RSS_OFFSETS_GLOBAL, &process.rss_counters, true)
            .override_global(RSS_BY_PROBE_GLOBAL, &rss_by_probe, true);
    }
    let mut load = |memory: MapMemory| -> Result<Ebpf, EbpfLoadError> {
        let (used, unused) = memory.maps();
        loader
            .override_global(PREALLOCATED_GLOBAL, memory.global(), true)
            .map_max_entries(used, capacity)
            .map_max_entries(unused, 1);
        let mut ebpf = loader.load(object()).map_err(|error| match &error {
            EbpfError::MapError(MapError::CreateError { io_error, .. }) if is_eperm(io_error) => {
                EbpfLoadError::NotPermitted
            }
            _ => EbpfLoadError::Object(error),
        })?;
        load_resync(&mut ebpf, memory)?;
        Ok(ebpf)
    };
    match memory {
        Some(memory) => Ok((load(memory)?, memory)),
        None => match load(MapMemory::OnDemand) {
            Err(EbpfLoadError::Verifier { log, .. }) if log.contains("preallocated") => {
                tracing::debug!("the verifier wants a preallocated process map (Linux < 6.1)");
                Ok((load(MapMemory::Preallocated)?, MapMemory::Preallocated))
            }
            other => Ok((other?, MapMemory::OnDemand)),
        },
    }
}

/// Attaches the `sched_switch` program of `kind` for the process map's `memory`,
/// then its `sched_process_free` companion; returns whether the companion attached (without it, user space
/// deletes the entries of dead processes, see `retain_live`).
fn attach(
    ebpf: &mut Ebpf,
    kind: AttachKind,
    memory: MapMemory,
    kernel_btf: &Result<Btf, Arc<BtfError>>,
    degraded: &mut Degraded,
) -> Result<bool, EbpfLoadError> {
    attach_tracepoint(ebpf, kind, kind.program_name(memory), TRACEPOINT, kernel_btf)?;
    let freed = attach_tracepoint(ebpf, kind, kind.free_program_name(memory), FREE_TRACEPOINT, kernel_btf);
    if let Err(error) = &freed {
        degraded.note(
            "exit records",
            format!("entries of exited processes are deleted by scans, and their last slices go uncounted: {error}"),
        );
    }
    Ok(freed.is_ok())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    kind: AttachKind,
    name: &'static str,
    tracepoint: &str,
    kernel_btf: &Result<Btf, Arc<BtfError>>,
) -> Result<(), EbpfLoadError> {
    let program = ebpf.program_mut(name).ok_or(EbpfLoadError::Missing(name))?;
    let wrap = |action| move |source| EbpfLoadError::Program { action, program: name, source };
    match kind {
        AttachKind::BtfTracePoint => {
            let btf = kernel_btf.as_ref().map_err(|error| EbpfLoadError::KernelBtf(Arc::clone(error)))?;
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
fn load_iterator(ebpf: &mut Ebpf, kernel_btf: &Result<Btf, Arc<BtfError>>, degraded: &mut Degraded) -> bool {
    let loaded = (|| -> Result<(), Box<dyn std::error::Error>> {
        let btf = kernel_btf.as_ref().map_err(|error| EbpfLoadError::KernelBtf(Arc::clone(error)))?;
        let program: &mut Iter =
            ebpf.program_mut(PROGRAM_PROCESSES).ok_or(EbpfLoadError::Missing(PROGRAM_PROCESSES))?.try_into()?;
        program.load(ITER_TARGET, btf).map_err(|e| load_error(PROGRAM_PROCESSES, e))?;
        Ok(())
    })();
    if let Err(error) = &loaded {
        degraded.note("task iterator", format!("processes are listed from /proc: {error}"));
    }
    loaded.is_ok()
}

/// Loads the programs that repair untraced switches on timer expiries (the
/// scheduler tick's among them) and on idle entry, which wake no CPU; false
/// (logged) when the kernel refuses them, and the `resync` timer does the repair
/// instead.
fn load_tick_repair(ebpf: &mut Ebpf, memory: MapMemory, degraded: &mut Degraded) -> bool {
    let loaded = memory.tick_repair_programs().into_iter().try_for_each(|name| {
        let program = ebpf.program_mut(name).ok_or(EbpfLoadError::Missing(name))?;
        let program: &mut RawTracePoint = program.try_into().map_err(|source| EbpfLoadError::Program {
            action: "selecting",
            program: name,
            source,
        })?;
        program.load().map_err(|e| load_error(name, e))
    });
    if let Err(error) = &loaded {
        let period_ms = RESYNC_PERIOD_NS / 1_000_000;
        degraded.note(
            "tick repair",
            format!("untraced switches are repaired by a {period_ms} ms timer on every CPU while watched: {error}"),
        );
    }
    loaded.is_ok()
}

/// Loads the `resync` perf-event program that suits the process map's `memory`;
/// [`EbpfCpuTime::resume_resync`] attaches it on every online CPU, each
/// `RESYNC_PERIOD_NS` of CPU clock (see the program for why).
fn load_resync(ebpf: &mut Ebpf, memory: MapMemory) -> Result<(), EbpfLoadError> {
    let name = memory.resync_program();
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
            tracing::debug!("the verifier's log of {program}:\n{log}");
            let reason = verifier::reason(&log).unwrap_or("(no reason in the log)").to_owned();
            EbpfLoadError::Verifier { program, reason, log, source: io_error }
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
fn check_privileges(proc_root: &Path) -> Result<(), EbpfLoadError> {
    match std::fs::read_to_string(proc_root.join("self/status")).ok().and_then(|s| effective_caps(&s)) {
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
fn check_pid_namespace(proc_root: &Path) -> Result<(), EbpfLoadError> {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    match std::fs::metadata(proc_root.join("self/ns/pid")) {
        Ok(meta) if meta.ino() != PROC_PID_INIT_INO => Err(EbpfLoadError::ForeignPidNamespace),
        _ => Ok(()),
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
