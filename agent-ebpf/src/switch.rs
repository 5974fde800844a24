//! The `sched_switch` programs: close the slice of the task leaving the CPU, open
//! the slice of the one coming in.

use agent_common::cputime::{CpuSlot, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, ProcessTime};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    counters::{add, charge, close_slice, update_or_insert},
    globals::{LOADED_AT_NS, TASK_EXEC_START_OFFSET},
    maps::{CPU_SLOT, PreallocatedOnly, Selected, TimeMap, count_error},
    task::{BtfTask, RawTask, Task, last_slice_ns, runtime_ns, task_ids},
};

/// Index of `next` among the tracepoint's arguments:
/// `TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` in include/trace/events/sched.h (`preempt` came first
/// in v4.4, `prev_state` was appended in v5.18, so `next` has been 2 throughout).
pub(crate) const NEXT_ARG: usize = 2;
/// Index of `prev`, the task leaving the CPU (same source).
pub(crate) const PREV_ARG: usize = 1;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> u32 {
    on_switch::<Selected, _>(BtfTask(ctx.arg(PREV_ARG)), BtfTask(ctx.arg(NEXT_ARG)));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> u32 {
    on_switch::<Selected, _>(RawTask(ctx.arg(PREV_ARG)), RawTask(ctx.arg(NEXT_ARG)));
    0
}

/// `sched_switch_raw` naming only the preallocated map: before Linux 6.1 the kernel
/// warns once per boot when a raw_tp program names a map allocated on demand (see
/// `TimeMap`); the loader picks it with the preallocated process map.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw_prealloc(ctx: RawTracePointContext) -> u32 {
    on_switch::<PreallocatedOnly, _>(RawTask(ctx.arg(PREV_ARG)), RawTask(ctx.arg(NEXT_ARG)));
    0
}

#[inline(always)]
pub(crate) fn on_switch<M: TimeMap, T: Task>(prev: T, next: T) {
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
        if let Some(next_slot) = switch_within_process::<M>(slot, &incoming, end, start) {
            *slot = CpuSlot { anchor_ns, clock_offset_ns, ..next_slot };
            return;
        }
        close_slice::<M>(slot.tgid, end);
    } else if current_tid != slot.tid {
        account_unseen_switch::<M, _>(slot, prev, current_tgid, unseen_since(slot), start);
    } else if slot.tgid != 0 {
        // `prev`'s run time could not be read: the slice ends now by the clock.
        close_slice::<M>(slot.tgid, start);
    }
    *slot = CpuSlot { clock_offset_ns, ..switch_in::<M>(incoming, start, anchor_ns) };
}

/// Longest stretch of counted run time over which slice starts are chained before
/// the clock is read again.
pub(crate) const CHAIN_LIMIT_NS: u64 = 1_000_000;

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
pub(crate) fn chained_start(slot: &CpuSlot, end: u64) -> Option<u64> {
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
pub(crate) fn read_clock<T: Task>(slot: &CpuSlot, next: T, incoming: &Option<Incoming>) -> (u64, u64, u64) {
    // SAFETY: a helper call without arguments.
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
pub(crate) fn last_update<T: Task>(task: T, clock_offset_ns: u64) -> Option<u64> {
    if clock_offset_ns == 0 {
        return None;
    }
    let exec_start = task.field::<u64>(TASK_EXEC_START_OFFSET.load())?;
    Some(exec_start.wrapping_add(clock_offset_ns))
}

/// What the program reads of a task: its ids and its runtime so far.
pub(crate) struct Incoming {
    slot: CpuSlot,
}

/// Reads `task` as a slot starting now would record it; None when the read failed.
#[inline(always)]
pub(crate) fn read_task<T: Task>(task: T) -> Option<Incoming> {
    let (tid, tgid) = task_ids(task)?;
    let base_runtime_ns = runtime_ns(task)?;
    Some(Incoming { slot: CpuSlot { tgid, tid, base_runtime_ns, ..CpuSlot::default() } })
}

/// Where the slice this CPU opened at its last switch-in ends, on the clock of its
/// start: the start plus the slice's length as the scheduler counted it
/// (`se.sum_exec_runtime`, brought up to date just before this tracepoint), so the
/// totals agree with the kernel's accounting. None when `task` could not be read.
#[inline(always)]
pub(crate) fn counted_end<T: Task>(slot: &CpuSlot, task: T) -> Option<u64> {
    let ran = runtime_ns(task)?.saturating_sub(slot.base_runtime_ns);
    Some(slot.start_ns.wrapping_add(ran))
}

/// A switch between two threads of one process closes one slice and opens the
/// next in the same entry: one update instead of two, on the hottest path (a
/// process's threads handing work to each other), and none when the next slice
/// starts where the last ended. None when `next` is elsewhere.
#[inline(always)]
pub(crate) fn switch_within_process<M: TimeMap>(
    slot: &CpuSlot,
    incoming: &Option<Incoming>,
    end: u64,
    start: u64,
) -> Option<CpuSlot> {
    let next = &incoming.as_ref()?.slot;
    if next.tgid != slot.tgid || next.tid == 0 {
        return None;
    }
    if end != start {
        let time = M::map().get_ptr_mut(next.tgid)?;
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
pub(crate) fn account_unseen_switch<M: TimeMap, T: Task>(slot: &CpuSlot, task: T, tgid: u32, since: u64, until: u64) {
    if slot.tgid != 0 {
        count_error(ERR_MISMATCH);
        close_slice::<M>(slot.tgid, slot.start_ns);
    }
    if tgid == 0 {
        return;
    }
    let slice = last_slice_ns(task).unwrap_or(0).min(until.saturating_sub(since));
    charge::<M>(tgid, slice);
}

/// The earliest a task running untraced on this CPU can have been picked: when the
/// slot's recorded slice began or, on a CPU not yet seen, when the program was
/// loaded (nothing before counts).
#[inline(always)]
pub(crate) fn unseen_since(slot: &CpuSlot) -> u64 {
    if slot.tgid != 0 { slot.start_ns } else { LOADED_AT_NS.load() }
}

/// Opens a slice starting at `start` for the incoming task and returns what this CPU
/// must remember; `anchor_ns` is the clock reading `start` is chained from.
#[inline(always)]
pub(crate) fn switch_in<M: TimeMap>(incoming: Option<Incoming>, start: u64, anchor_ns: u64) -> CpuSlot {
    let Some(Incoming { slot }) = incoming else {
        count_error(ERR_READ_TASK);
        return CpuSlot::default();
    };
    // pid 0 is the idle task: idle time belongs to no process.
    if slot.tid == 0 {
        return CpuSlot::default();
    }
    if !update_or_insert::<M>(slot.tgid, ProcessTime::open_delta(start)) {
        count_error(ERR_MAP_FULL);
        return CpuSlot::default();
    }
    CpuSlot { start_ns: start, anchor_ns, ..slot }
}
