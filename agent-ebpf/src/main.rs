//! Per-process on-CPU time, counted at every context switch.
//!
//! On `sched_switch` the program closes the slice of the task leaving the CPU and
//! opens the slice of the task coming in, in this CPU's copy of that task's process
//! entry (`agent_common::cputime::ProcessTime`): opening marks the copy running and
//! subtracts the start; closing adds back the start plus the slice's length as the
//! scheduler counted it. User space sums `ProcessTime::at(now)` over the copies and
//! so sees the slices still running, even of a task that never leaves its CPU.
//!
//! Keyed by process (tgid), not thread: the agent reports processes, the time of a
//! thread that exits stays in its process's entry with nothing to fold, and the map
//! grows with processes, not threads. Per CPU: with one shared entry, threads of
//! one process running on two CPUs passed its cache line between them at every
//! switch (two threads ping-ponging across two CPUs here: about 130 ns per switch
//! with a shared entry, about 85 with per-CPU copies).
//!
//! Some kernels switch some tasks without the tracepoint; the running task is
//! re-checked and the record repaired on work the kernel does anyway: the
//! scheduler tick of a busy CPU (`repair_tick`) and a CPU's entry into idle
//! (`repair_idle`), or, where those cannot attach, a CPU-clock perf event
//! (`resync`).
//!
//! Two companions serve the agent's processes list: `sched_process_free` hands the
//! final total of a process that exited to user space (while someone reads) and
//! deletes its entry, and a task iterator (`processes`) lists every process with
//! its counter in one read.
#![no_std]
#![no_main]

use agent_common::cputime::{
    CpuSlot, ERR_COUNT, ERR_EXIT_LOST, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, EXITS_BYTES, ExitRecord, MAX_CPUS,
    MAX_PROCESSES, ProcessRecord, ProcessTime,
};
use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, seq_file},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_map_lookup_percpu_elem, bpf_seq_write},
    },
    macros::{btf_tracepoint, map, perf_event, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext, RawTracePointContext},
};

/// Offset of `pid` in `struct task_struct`, set by user space from the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: Global<u32> = Global::new(0);
/// Offset of `tgid` in `struct task_struct`, set by user space from the kernel's BTF.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.sum_exec_runtime` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_SUM_EXEC_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.prev_sum_exec_runtime` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_PREV_SUM_EXEC_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.exec_start` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_EXEC_START_OFFSET: Global<u32> = Global::new(0);
/// Offset of `start_time` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_START_TIME_OFFSET: Global<u32> = Global::new(0);
/// Offset of `comm` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: Global<u32> = Global::new(0);
/// Offset of `mm` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_MM_OFFSET: Global<u32> = Global::new(0);
/// Offset of `real_parent` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
static TASK_REAL_PARENT_OFFSET: Global<u32> = Global::new(0);
/// Offsets in `struct mm_struct` of the file, anon and shmem page counters, from BTF.
#[unsafe(no_mangle)]
static MM_RSS_OFFSETS: Global<[u32; 3]> = Global::new([0; 3]);
/// CLOCK_MONOTONIC ns just before loading: nothing before it is counted.
#[unsafe(no_mangle)]
static LOADED_AT_NS: Global<u64> = Global::new(0);
/// CPU ids the kernel may use (`nr_cpu_ids`), set by user space.
#[unsafe(no_mangle)]
static POSSIBLE_CPUS: Global<u32> = Global::new(0);
/// Non-zero: count in `PROCESS_TIME_PREALLOC` instead of `PROCESS_TIME`. Set by
/// user space where the verifier refuses the latter (see `process_time`).
#[unsafe(no_mangle)]
static PREALLOCATED: Global<u32> = Global::new(0);

/// The process map, allocated as processes appear: a preallocated per-CPU map
/// takes 8 bytes per entry per possible CPU up front (256 KiB per CPU), whatever
/// the number of processes.
#[map]
static PROCESS_TIME: PerCpuHashMap<u32, ProcessTime> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, BPF_F_NO_PREALLOC);
/// The same, preallocated. User space shrinks the one not in use to one entry.
#[map]
static PROCESS_TIME_PREALLOC: PerCpuHashMap<u32, ProcessTime> = PerCpuHashMap::with_max_entries(MAX_PROCESSES, 0);

/// The process map in use. Before Linux 6.1 the verifier lets a perf-event program
/// (`resync`) use only preallocated hash maps, so the loader selects the
/// preallocated twin there. `PREALLOCATED` is read-only, so the verifier knows which
/// branch runs and drops the other: the choice costs nothing at run time.
#[inline(always)]
fn process_time() -> &'static PerCpuHashMap<u32, ProcessTime> {
    if PREALLOCATED.load() != 0 { &PROCESS_TIME_PREALLOC } else { &PROCESS_TIME }
}

#[map]
static CPU_SLOT: PerCpuArray<CpuSlot> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_COUNT, 0);
/// The final totals of processes that exited, for user space to hand to their
/// ancestors (see `on_free`).
#[map]
static EXITS: RingBuf = RingBuf::with_byte_size(EXITS_BYTES, 0);
/// One u32, non-zero while user space reads `EXITS` (a client is connected).
#[map]
static EXITS_WANTED: Array<u32> = Array::with_max_entries(1, 0);

/// Index of `next` among the tracepoint's arguments:
/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` in include/trace/events/sched.h (`preempt` came first
/// in v4.4, `prev_state` was appended in v5.18, so `next` has been 2 throughout).
const NEXT_ARG: usize = 2;
/// Index of `prev`, the task leaving the CPU (same source).
const PREV_ARG: usize = 1;

/// `EEXIST` from include/uapi/asm-generic/errno-base.h, negated as helpers return it.
const NEG_EEXIST: i32 = -17;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> u32 {
    on_switch(BtfTask(ctx.arg(PREV_ARG)), BtfTask(ctx.arg(NEXT_ARG)));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> u32 {
    on_switch(RawTask(ctx.arg(PREV_ARG)), RawTask(ctx.arg(NEXT_ARG)));
    0
}

#[btf_tracepoint(function = "sched_process_free")]
pub fn process_free_btf(ctx: BtfTracePointContext) -> u32 {
    on_free(BtfTask(ctx.arg(FREED_ARG)));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn process_free_raw(ctx: RawTracePointContext) -> u32 {
    on_free(RawTask(ctx.arg(FREED_ARG)));
    0
}

/// Index of the task among `sched_process_free`'s arguments:
/// `TP_PROTO(struct task_struct *p)` in include/trace/events/sched.h.
const FREED_ARG: usize = 0;

/// A task's memory is being freed, an RCU grace period after it was reaped. When
/// it led its thread group the whole process is gone (a leader is reaped only once
/// its other threads are), so its total is final: while user space reads, it goes
/// to the `EXITS` ring with the process's ids, start time and parent, so that the
/// time it ran since the last processes scan is not lost with it; then its entry
/// goes, so user space need not walk the map for the dead. A thread that execs
/// takes over the leader's pid, and the old leader is freed under the thread's old
/// pid, so the process keeps its entry.
///
/// This runs once per exit, off the `sched_switch` path. The free, rather than
/// `sched_process_exit`, because the exit tracepoint fires before the task's last
/// stretch of kernel work and its last switch, which the total must include.
#[inline(always)]
fn on_free<T: Task>(task: T) {
    let Some((tid, tgid)) = task_ids(task) else {
        return;
    };
    if tid != tgid {
        return;
    }
    if exits_wanted() {
        record_exit(task, tgid);
    }
    // Absent already when the process never ran since loading.
    let _ = process_time().remove(tgid);
}

/// Whether user space reads `EXITS` now.
#[inline(always)]
fn exits_wanted() -> bool {
    EXITS_WANTED.get(0).is_some_and(|wanted| *wanted != 0)
}

/// Writes the exit record of process `tgid`, led by `task`; counts it in
/// `ERR_EXIT_LOST` when the ring is full. A process that never ran since loading
/// has nothing to hand on.
#[inline(always)]
fn record_exit<T: Task>(task: T, tgid: u32) {
    let cpu_ns = process_cpu_ns(tgid);
    if cpu_ns == 0 {
        return;
    }
    let record = ExitRecord {
        tgid,
        ppid: parent_tgid(task),
        start_time_ns: task.field::<u64>(TASK_START_TIME_OFFSET.load()).unwrap_or(0),
        cpu_ns,
        comm: comm(task).unwrap_or_default(),
    };
    if EXITS.output::<ExitRecord>(&record, 0).is_err() {
        count_error(ERR_EXIT_LOST);
    }
}

/// The tgid of `task`'s `real_parent`; 0 when it cannot be read.
#[inline(always)]
fn parent_tgid<T: Task>(task: T) -> u32 {
    task.pointee(TASK_REAL_PARENT_OFFSET.load())
        .and_then(|parent| parent.field::<u32>(TASK_TGID_OFFSET.load()))
        .unwrap_or(0)
}

/// `task_struct.comm` of `task`.
#[inline(always)]
fn comm<T: Task>(task: T) -> Option<[u8; 16]> {
    let offset = TASK_COMM_OFFSET.load();
    let head = task.field::<[u8; 8]>(offset)?;
    let tail = task.field::<[u8; 8]>(offset.wrapping_add(8))?;
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&head);
    comm[8..].copy_from_slice(&tail);
    Some(comm)
}

/// A `task_struct` the program reads fields of, at offsets user space took from BTF.
trait Task: Copy {
    /// The field at `offset`; None when the offset was not set (0 is never one of the
    /// fields read) or the read faulted.
    fn field<T: Copy>(self, offset: u32) -> Option<T>;

    /// The object the pointer field at `offset` points to; None when the offset
    /// was not set, the read faulted or the pointer is NULL.
    fn pointee(self, offset: u32) -> Option<Self>;
}

/// A task as `tp_btf` passes it: a pointer the verifier knows the type of. Fields
/// are plain loads, which the verifier checks against BTF (the offsets are read-only
/// globals, so it sees them as constants) and the JIT guards against faults: several
/// times cheaper than a probe-read helper call, on the hottest path.
#[derive(Clone, Copy)]
struct BtfTask(*const u8);

impl Task for BtfTask {
    #[inline(always)]
    fn field<T: Copy>(self, offset: u32) -> Option<T> {
        if offset == 0 {
            return None;
        }
        // SAFETY: a typed kernel pointer from the tracepoint; the verifier admits the
        // load only at a real field of `task_struct` of this size.
        Some(unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset as usize).cast::<T>()) })
    }

    #[inline(always)]
    fn pointee(self, offset: u32) -> Option<Self> {
        // The loaded pointer is typed (the field's BTF type) to the verifier.
        self.field::<u64>(offset).filter(|&pointer| pointer != 0).map(|pointer| BtfTask(pointer as *const u8))
    }
}

/// A task as `raw_tp` (or `bpf_get_current_task`) gives it: a plain number to the
/// verifier, so fields go through the probe-read helper.
#[derive(Clone, Copy)]
struct RawTask(*const u8);

impl Task for RawTask {
    #[inline(always)]
    fn field<T: Copy>(self, offset: u32) -> Option<T> {
        if offset == 0 {
            return None;
        }
        // SAFETY: probe reads check their source and fail instead of faulting.
        unsafe { bpf_probe_read_kernel(self.0.wrapping_add(offset as usize).cast::<T>()) }.ok()
    }

    #[inline(always)]
    fn pointee(self, offset: u32) -> Option<Self> {
        self.field::<u64>(offset).filter(|&pointer| pointer != 0).map(|pointer| RawTask(pointer as *const u8))
    }
}

/// `struct bpf_iter__task` (kernel/bpf/task_iter.c): the context of an `iter/task`
/// program, one call per task and a last one with `task` NULL.
#[repr(C)]
struct IterTaskContext {
    meta: *const IterMeta,
    task: *const u8,
}

/// The head of `struct bpf_iter_meta` (include/linux/bpf.h): the output file.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
}

/// Lists every process, one [`ProcessRecord`] each, for the agent's processes scan:
/// one read of the iterator replaces a `/proc/PID/stat` read per process (the
/// kernel formats none of the ~50 fields the scan would not use) and the map
/// lookup per process. Threads other than the group leader are skipped.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn processes(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel passes a `bpf_iter__task`; the verifier checks both loads.
    let (meta, task) = unsafe {
        let ctx = ctx.cast::<IterTaskContext>();
        (core::ptr::read_volatile(&raw const (*ctx).meta), core::ptr::read_volatile(&raw const (*ctx).task))
    };
    if task.is_null() {
        return 0;
    }
    if let Some(record) = describe_process(BtfTask(task)) {
        // SAFETY: `meta` is the iterator's typed meta pointer; `seq` its first field.
        let seq = unsafe { core::ptr::read_volatile(&raw const (*meta).seq) };
        let size = core::mem::size_of::<ProcessRecord>() as u32;
        // SAFETY: the record lives on this stack for the call. A full buffer
        // (E2BIG) makes the kernel return what it has and call again for this task.
        unsafe { bpf_seq_write(seq, (&raw const record).cast(), size) };
    }
    0
}

/// The record of `task` when it leads its thread group; None for other threads
/// and tasks whose fields cannot be read.
#[inline(always)]
fn describe_process(task: BtfTask) -> Option<ProcessRecord> {
    let (tid, tgid) = task_ids(task)?;
    if tid != tgid {
        return None;
    }
    Some(ProcessRecord {
        tgid,
        ppid: parent_tgid(task),
        start_time_ns: task.field::<u64>(TASK_START_TIME_OFFSET.load())?,
        cpu_ns: process_cpu_ns(tgid),
        rss_pages: rss_pages(task),
        comm: comm(task)?,
    })
}

/// Resident pages of `task`'s memory map as `get_mm_rss()` counts them: the file,
/// anon and shmem counters, each read as `percpu_counter_read_positive` does
/// (the shared count, negative read as 0). 0 for a task without one.
#[inline(always)]
fn rss_pages(task: BtfTask) -> u64 {
    // The loaded pointer is typed `struct mm_struct *` to the verifier.
    let Some(mm) = task.pointee(TASK_MM_OFFSET.load()) else { return 0 };
    let offsets = MM_RSS_OFFSETS.load();
    let counter = |offset: u32| mm.field::<i64>(offset).map_or(0, |pages| pages.max(0) as u64);
    counter(offsets[0]) + counter(offsets[1]) + counter(offsets[2])
}

/// `tgid`'s cumulative on-CPU ns now: its copies summed over CPUs; 0 without an
/// entry.
#[inline(always)]
fn process_cpu_ns(tgid: u32) -> u64 {
    let map = core::ptr::from_ref(process_time()).cast_mut().cast();
    let key = (&raw const tgid).cast();
    let mut total = 0u64;
    let mut running = 0u64;
    for cpu in 0..POSSIBLE_CPUS.load().min(MAX_CPUS) {
        // SAFETY: `map` is this program's map and `key` a u32 as it expects. A null
        // answer means no entry (for any CPU) or a CPU id past the possible ones.
        let time = unsafe { bpf_map_lookup_percpu_elem(map, key, cpu) }.cast::<ProcessTime>();
        if time.is_null() {
            break;
        }
        // SAFETY: a map value pointer, valid for this run; one aligned u64, which the
        // CPU that owns it writes whole.
        let time = unsafe { core::ptr::read_volatile(time) };
        // At instant 0: the closed time less the running slice's start, if any.
        total = total.wrapping_add(time.at(0));
        running += u64::from(time.running());
    }
    // The clock (~30 ns here) is read only for a process with a thread on a CPU,
    // as it was before the copies were per CPU.
    if running > 0 {
        total = total.wrapping_add(running.wrapping_mul(unsafe { bpf_ktime_get_ns() }));
    }
    total
}

/// Runs whenever a high-resolution timer expires on a CPU, the scheduler tick
/// among them (`tick_sched_timer`, every 1/HZ s on a busy CPU; an idle CPU stops
/// its tick): interrupts the kernel takes anyway, so the repair wakes nothing. In
/// the timer interrupt, interrupts off; for the few timers that expire in softirq
/// context the kernel keeps this program from nesting in itself.
#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn repair_tick(_ctx: RawTracePointContext) -> u32 {
    repair_current();
    0
}

/// Runs when a CPU enters and leaves idle (`power:cpu_idle`, from the idle task,
/// interrupts off): a task that left this CPU untraced for idle is withdrawn there,
/// as the tick, stopped on an idle CPU, would not see it.
#[raw_tracepoint(tracepoint = "cpu_idle")]
pub fn repair_idle(_ctx: RawTracePointContext) -> u32 {
    repair_current();
    0
}

/// Runs every `RESYNC_PERIOD_NS` of CPU clock on each CPU: the repair where the
/// tick and idle programs cannot attach. A CPU-clock event fires on idle CPUs too,
/// waking them, which the two above do not.
#[perf_event]
pub fn resync(_ctx: PerfEventContext) -> u32 {
    repair_current();
    0
}

/// In the context of the task actually running, with interrupts off: when that is
/// not the task the slot recorded, the kernel switched without the tracepoint, and
/// the slot is repaired as a traced switch to the running task would have left it.
/// This also picks up a task that was already running when the program was
/// attached and never leaves its CPU.
#[inline(always)]
fn repair_current() {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(slot) = CPU_SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; the switch handler runs with interrupts off, and so do
    // the tick, the idle tracepoint and the perf event, so none interrupts another.
    let slot = unsafe { &mut *slot };
    let current = bpf_get_current_pid_tgid();
    if current as u32 == slot.tid {
        return;
    }
    let task = RawTask(unsafe { bpf_get_current_task() } as *const u8);
    let since = unseen_since(slot);
    // The running task's count is as of the scheduler's last update (at the latest
    // its last tick): its slice here starts at that update, so that what it ran
    // since then counts as running time from this reading on.
    let start = last_update(task, slot.clock_offset_ns).map_or(now, |at| at.max(since).min(now));
    account_unseen_switch(slot, task, (current >> 32) as u32, since, start);
    *slot = CpuSlot { clock_offset_ns: slot.clock_offset_ns, ..switch_in(read_task(task), start, now) };
}

#[inline(always)]
fn on_switch<T: Task>(prev: T, next: T) {
    let Some(slot) = CPU_SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array value, touched only by this CPU, whose switch handler
    // cannot be re-entered (it runs with interrupts off under the runqueue lock).
    let slot = unsafe { &mut *slot };
    // At sched_switch the current task is still the one leaving, `prev`: its ids
    // are two loads with tp_btf, cheaper than the helper call.
    let (current_tid, current_tgid) = task_ids(prev).unwrap_or_else(|| {
        let ids = bpf_get_current_pid_tgid();
        (ids as u32, (ids >> 32) as u32)
    });
    let incoming = read_task(next);
    // Where `prev`'s slice ends when the slot's task is `current`, which is `prev`.
    let counted = if current_tid == slot.tid && slot.tgid != 0 { counted_end(slot, prev) } else { None };
    // One place reads the clock, for both paths below; without a counted end it
    // is read, and `start` is now.
    let (start, anchor_ns, clock_offset_ns) = match counted.and_then(|end| chained_start(slot, end)) {
        Some(start) => (start, slot.anchor_ns, slot.clock_offset_ns),
        None => read_clock(slot, next, &incoming),
    };
    if let Some(end) = counted {
        if let Some(next_slot) = switch_within_process(slot, &incoming, end, start) {
            *slot = CpuSlot { anchor_ns, clock_offset_ns, ..next_slot };
            return;
        }
        close_slice(slot.tgid, end);
    } else if current_tid != slot.tid {
        account_unseen_switch(slot, prev, current_tgid, unseen_since(slot), start);
    } else if slot.tgid != 0 {
        // `prev`'s run time could not be read: the slice ends now by the clock.
        close_slice(slot.tgid, start);
    }
    *slot = CpuSlot { clock_offset_ns, ..switch_in(incoming, start, anchor_ns) };
}

/// Longest stretch of counted run time over which slice starts are chained before
/// the clock is read again.
const CHAIN_LIMIT_NS: u64 = 1_000_000;

/// When the slice of the task coming in starts, if it can be chained from the end
/// just counted; None when the clock must be read instead.
///
/// Reading the clock (`bpf_ktime_get_ns`, ~25 ns here) was a quarter of the
/// program's cost. A slice's start matters only while it runs (user space adds
/// `now - start`; closing it adds its counted length, so closed totals never depend
/// on it). The scheduler ends the outgoing task's count and starts the incoming
/// one's at the same run-queue clock reading, so the next start is the end just
/// counted. That chain advances by counted time, which leaves out interrupt and
/// steal time, so it may lag the clock by their share of the chain: the clock is
/// read again once `CHAIN_LIMIT_NS` of run time have been chained (a few µs of lag
/// at most), and after idle or any switch without a counted end.
#[inline(always)]
fn chained_start(slot: &CpuSlot, end: u64) -> Option<u64> {
    (end.wrapping_sub(slot.anchor_ns) < CHAIN_LIMIT_NS).then_some(end)
}

/// Reads the clock at a switch to `next`: the reading, as start and anchor of the
/// next slice, and this CPU's clock offset measured with it.
///
/// The offset relates `se.exec_start` (the run queue's task clock) to the clock the
/// program counts in, for `resync`, which meets tasks whose count is as of an
/// earlier update. The scheduler stamped `next` with the task clock when it picked
/// it, just before this tracepoint, so the two readings are a few µs apart. The
/// idle task is skipped (not every kernel stamps it): the previous offset stays.
#[inline(always)]
fn read_clock<T: Task>(slot: &CpuSlot, next: T, incoming: &Option<Incoming>) -> (u64, u64, u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let stamped = incoming.as_ref().is_some_and(|incoming| incoming.slot.tid != 0);
    let offset = match next.field::<u64>(TASK_EXEC_START_OFFSET.load()) {
        Some(exec_start) if stamped && exec_start != 0 => now.wrapping_sub(exec_start),
        _ => slot.clock_offset_ns,
    };
    (now, now, offset)
}

/// When the scheduler last brought `task`'s count (`se.sum_exec_runtime`) up to
/// date, on the program's clock; None before this CPU's offset was measured.
#[inline(always)]
fn last_update<T: Task>(task: T, clock_offset_ns: u64) -> Option<u64> {
    if clock_offset_ns == 0 {
        return None;
    }
    let exec_start = task.field::<u64>(TASK_EXEC_START_OFFSET.load())?;
    Some(exec_start.wrapping_add(clock_offset_ns))
}

/// What the program reads of a task: its ids and its runtime so far.
struct Incoming {
    slot: CpuSlot,
}

/// Reads `task` as a slot starting now would record it; None when the read failed.
#[inline(always)]
fn read_task<T: Task>(task: T) -> Option<Incoming> {
    let (tid, tgid) = task_ids(task)?;
    let base_runtime_ns = runtime_ns(task)?;
    Some(Incoming { slot: CpuSlot { tgid, tid, base_runtime_ns, ..CpuSlot::default() } })
}

/// `task`'s thread id and process id (`pid` and `tgid` in the kernel's words).
#[inline(always)]
fn task_ids<T: Task>(task: T) -> Option<(u32, u32)> {
    Some((task.field::<u32>(TASK_PID_OFFSET.load())?, task.field::<u32>(TASK_TGID_OFFSET.load())?))
}

/// Where the slice this CPU opened at its last switch-in ends, on the clock of its
/// start: the start plus the slice's length as the scheduler counted it
/// (`se.sum_exec_runtime`, brought up to date just before this tracepoint), so the
/// totals agree with the kernel's accounting. None when `task` could not be read.
#[inline(always)]
fn counted_end<T: Task>(slot: &CpuSlot, task: T) -> Option<u64> {
    let ran = runtime_ns(task)?.saturating_sub(slot.base_runtime_ns);
    Some(slot.start_ns.wrapping_add(ran))
}

/// A switch between two threads of one process closes one slice and opens the
/// next in the same entry: one update instead of two, on the hottest path (a
/// process's threads handing work to each other), and none when the next slice
/// starts where the last ended. None when `next` is elsewhere.
#[inline(always)]
fn switch_within_process(slot: &CpuSlot, incoming: &Option<Incoming>, end: u64, start: u64) -> Option<CpuSlot> {
    let next = &incoming.as_ref()?.slot;
    if next.tgid != slot.tgid || next.tid == 0 {
        return None;
    }
    if end != start {
        let time = process_time().get_ptr_mut(next.tgid)?;
        add(time, ProcessTime::finished_delta(end.wrapping_sub(start)));
    }
    Some(CpuSlot { start_ns: start, ..*next })
}

/// The CPU runs `task` (of process `tgid`) although the slot recorded another task
/// (or none): the kernel switched without the tracepoint (some tasks leave the CPU
/// untraced; ftrace misses them too).
///
/// The running task gets the scheduler's count of its slice since it was picked, a
/// count that ends at `until`; at most `until - since`, as it was picked after
/// `since` (see `unseen_since`), which also keeps a class that does not keep
/// `prev_sum_exec_runtime` (real-time) from counting more. The recorded task's
/// slice is withdrawn, closed at its own start: it may since have run, and been
/// counted, on another CPU, so counting it here could count it twice. Its untraced
/// run is lost instead; `ERR_MISMATCH` says how often, and `resync` keeps such
/// windows under `RESYNC_PERIOD_NS`.
#[inline(always)]
fn account_unseen_switch<T: Task>(slot: &CpuSlot, task: T, tgid: u32, since: u64, until: u64) {
    if slot.tgid != 0 {
        count_error(ERR_MISMATCH);
        close_slice(slot.tgid, slot.start_ns);
    }
    if tgid == 0 {
        return;
    }
    let slice = last_slice_ns(task).unwrap_or(0).min(until.saturating_sub(since));
    charge(tgid, slice);
}

/// The earliest a task running untraced on this CPU can have been picked: when the
/// slot's recorded slice began or, on a CPU not yet seen, when the program was
/// loaded (nothing before counts).
#[inline(always)]
fn unseen_since(slot: &CpuSlot) -> u64 {
    if slot.tgid != 0 { slot.start_ns } else { LOADED_AT_NS.load() }
}

/// `se.sum_exec_runtime` of a task: the scheduler's count of its on-CPU ns.
#[inline(always)]
fn runtime_ns<T: Task>(task: T) -> Option<u64> {
    task.field::<u64>(TASK_SUM_EXEC_OFFSET.load())
}

/// The scheduler's count of a task's current slice: `se.sum_exec_runtime` minus
/// `se.prev_sum_exec_runtime`, which it sets when it picks the task.
#[inline(always)]
fn last_slice_ns<T: Task>(task: T) -> Option<u64> {
    let sum = runtime_ns(task)?;
    let prev = task.field::<u64>(TASK_PREV_SUM_EXEC_OFFSET.load())?;
    Some(sum.saturating_sub(prev))
}

/// Ends a running slice of `tgid` at `at`.
#[inline(always)]
fn close_slice(tgid: u32, at: u64) {
    // No entry: it was deleted because the process is gone. Recreating it here
    // would close a slice it never opened, so the slice's tail is dropped instead.
    if let Some(time) = process_time().get_ptr_mut(tgid) {
        add(time, ProcessTime::close_delta(at));
    }
}

/// Adds a finished stretch of `ns` to `tgid`.
#[inline(always)]
fn charge(tgid: u32, ns: u64) {
    if !update_or_insert(tgid, ProcessTime::finished_delta(ns)) {
        count_error(ERR_MAP_FULL);
    }
}

/// Opens a slice starting at `start` for the incoming task and returns what this CPU
/// must remember; `anchor_ns` is the clock reading `start` is chained from.
#[inline(always)]
fn switch_in(incoming: Option<Incoming>, start: u64, anchor_ns: u64) -> CpuSlot {
    let Some(Incoming { slot }) = incoming else {
        count_error(ERR_READ_TASK);
        return CpuSlot::default();
    };
    // pid 0 is the idle task: idle time belongs to no process.
    if slot.tid == 0 {
        return CpuSlot::default();
    }
    if !update_or_insert(slot.tgid, ProcessTime::open_delta(start)) {
        count_error(ERR_MAP_FULL);
        return CpuSlot::default();
    }
    CpuSlot { start_ns: start, anchor_ns, ..slot }
}

/// Adds `delta` to this CPU's copy of `tgid`'s entry, inserting the entry if needed
/// (the other CPUs' copies start at zero). False when it cannot be inserted: the
/// map is full, or, allocated on demand, the kernel had no memory at hand.
#[inline(always)]
fn update_or_insert(tgid: u32, delta: u64) -> bool {
    if let Some(time) = process_time().get_ptr_mut(tgid) {
        add(time, delta);
        return true;
    }
    match process_time().insert(tgid, ProcessTime(delta), u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        // Another CPU inserted the same process between our lookup and insert.
        Err(NEG_EEXIST) => match process_time().get_ptr_mut(tgid) {
            Some(time) => {
                add(time, delta);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Adds `delta` to this CPU's copy. A plain read and write: only this CPU writes
/// the copy, from the switch handler or from `resync`, and neither can interrupt the
/// other (see `on_switch`); readers on other CPUs copy the u64 whole.
#[inline(always)]
fn add(time: *mut ProcessTime, delta: u64) {
    // SAFETY: `time` points to this CPU's value in the map, 8-byte aligned, alive for
    // the program's run.
    unsafe { core::ptr::write_volatile(time, ProcessTime(core::ptr::read_volatile(time).0.wrapping_add(delta))) };
}

#[inline(always)]
fn count_error(index: u32) {
    if let Some(counter) = ERRORS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, this CPU only, no re-entry (see `on_switch`).
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// "Dual MIT/GPL" is GPL-compatible for the kernel, which the probe-read helper needs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
