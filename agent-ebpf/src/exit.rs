//! The `sched_process_free` programs: the final total of a process that exited.

use agent_common::cputime::{CPU_NS_UNSUMMED, ERR_EXIT_LOST, ExitRecord};
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    counters::process_cpu_ns,
    globals::TASK_START_TIME_OFFSET,
    maps::{EXITS, EXITS_WANTED, PreallocatedOnly, Selected, TimeMap, count_error},
    task::{BtfTask, RawTask, Task, comm, parent_tgid, task_ids},
};

#[btf_tracepoint(function = "sched_process_free")]
pub fn process_free_btf(ctx: BtfTracePointContext) -> u32 {
    on_free::<Selected, _>(BtfTask(ctx.arg(FREED_ARG)));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn process_free_raw(ctx: RawTracePointContext) -> u32 {
    on_free::<Selected, _>(RawTask(ctx.arg(FREED_ARG)));
    0
}

/// `process_free_raw` naming only the preallocated map (see
/// `sched_switch_raw_prealloc`).
#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn process_free_raw_prealloc(ctx: RawTracePointContext) -> u32 {
    on_free::<PreallocatedOnly, _>(RawTask(ctx.arg(FREED_ARG)));
    0
}

/// Index of the task among `sched_process_free`'s arguments:
/// `TP_PROTO(struct task_struct *p)` in include/trace/events/sched.h.
pub(crate) const FREED_ARG: usize = 0;

/// A task's memory is being freed, an RCU grace period after it was reaped. When
/// it led its thread group the whole process is gone (a leader is reaped only once
/// its other threads are), so its total is final: while user space reads, it goes
/// to the `EXITS` ring with the process's ids, start time and parent, so that the
/// time it ran since the last processes scan is not lost with it; then its entry
/// goes, so user space need not walk the map for the dead (where the program cannot
/// sum the entry, before Linux 5.19, user space sums and deletes it on reading the
/// record; see `PERCPU_LOOKUP`). A thread that execs
/// takes over the leader's pid, and the old leader is freed under the thread's old
/// pid, so the process keeps its entry.
///
/// This runs once per exit, off the `sched_switch` path. The free, rather than
/// `sched_process_exit`, because the exit tracepoint fires before the task's last
/// stretch of kernel work and its last switch, which the total must include.
#[inline(always)]
pub(crate) fn on_free<M: TimeMap, T: Task>(task: T) {
    let Some((tid, tgid)) = task_ids(task) else {
        return;
    };
    if tid != tgid {
        return;
    }
    if exits_wanted() && record_exit::<M, _>(task, tgid) == Recorded::EntryLeftForUserSpace {
        return;
    }
    // Absent already when the process never ran since loading.
    let _ = M::map().remove(tgid);
}

/// Whether user space reads `EXITS` now.
#[inline(always)]
pub(crate) fn exits_wanted() -> bool {
    EXITS_WANTED.get(0).is_some_and(|wanted| *wanted != 0)
}

/// What became of an exit record.
#[derive(PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Written with its total, or not written (nothing to hand on, or the ring was
    /// full): the entry may go.
    Done,
    /// Written without its total (`CPU_NS_UNSUMMED`): user space reads the entry,
    /// then deletes it.
    EntryLeftForUserSpace,
}

/// Writes the exit record of process `tgid`, led by `task`; counts it in
/// `ERR_EXIT_LOST` when the ring is full. A process that never ran since loading
/// has nothing to hand on.
#[inline(always)]
pub(crate) fn record_exit<M: TimeMap, T: Task>(task: T, tgid: u32) -> Recorded {
    let cpu_ns = process_cpu_ns::<M>(tgid);
    // Unsummed, the lookup of this CPU's copy tells whether there is an entry.
    let unsummed = cpu_ns == CPU_NS_UNSUMMED;
    if cpu_ns == 0 || (unsummed && M::map().get_ptr(tgid).is_none()) {
        return Recorded::Done;
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
        return Recorded::Done;
    }
    if unsummed { Recorded::EntryLeftForUserSpace } else { Recorded::Done }
}
