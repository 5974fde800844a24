//! Repairs of switches the tracepoint did not see, on work the kernel does
//! anyway (the scheduler tick, idle entry) or on a CPU-clock timer.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};

use agent_common::cputime::CpuSlot;

use crate::{
    maps::{CPU_SLOT, PreallocatedOnly, Selected, TimeMap},
    switch::{account_unseen_switch, last_update, read_task, switch_in, unseen_since},
    task::RawTask,
};

/// Runs whenever a high-resolution timer expires on a CPU, the scheduler tick
/// among them (`tick_sched_timer`, every 1/HZ s on a busy CPU; an idle CPU stops
/// its tick): interrupts the kernel takes anyway, so the repair wakes nothing. In
/// the timer interrupt, interrupts off; for the few timers that expire in softirq
/// context the kernel keeps this program from nesting in itself.
#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn repair_tick(_ctx: RawTracePointContext) -> u32 {
    repair_current::<Selected>();
    0
}

/// Runs when a CPU enters and leaves idle (`power:cpu_idle`, from the idle task,
/// interrupts off): a task that left this CPU untraced for idle is withdrawn there,
/// as the tick, stopped on an idle CPU, would not see it.
#[raw_tracepoint(tracepoint = "cpu_idle")]
pub fn repair_idle(_ctx: RawTracePointContext) -> u32 {
    repair_current::<Selected>();
    0
}

/// `repair_tick` naming only the preallocated map: Linux before 6.1 warns in its
/// log (once per boot, a kernel WARN with a stack trace) when a raw_tp program
/// names a map allocated on demand, even one its dead branch names. The loader
/// picks the twins with the preallocated process map (see `TimeMap`).
#[raw_tracepoint(tracepoint = "hrtimer_expire_entry")]
pub fn repair_tick_prealloc(_ctx: RawTracePointContext) -> u32 {
    repair_current::<PreallocatedOnly>();
    0
}

/// `repair_idle` naming only the preallocated map (see `repair_tick_prealloc`).
#[raw_tracepoint(tracepoint = "cpu_idle")]
pub fn repair_idle_prealloc(_ctx: RawTracePointContext) -> u32 {
    repair_current::<PreallocatedOnly>();
    0
}

/// Runs every `RESYNC_PERIOD_NS` of CPU clock on each CPU: the repair where the
/// tick and idle programs cannot attach. A CPU-clock event fires on idle CPUs too,
/// waking them, which the two above do not.
#[perf_event]
pub fn resync(_ctx: PerfEventContext) -> u32 {
    repair_current::<Selected>();
    0
}

/// `resync` for kernels that let a perf-event program name only preallocated maps
/// (see `TimeMap`); the loader picks it with the preallocated process map.
#[perf_event]
pub fn resync_prealloc(_ctx: PerfEventContext) -> u32 {
    repair_current::<PreallocatedOnly>();
    0
}

/// In the context of the task actually running, with interrupts off: when that is
/// not the task the slot recorded, the kernel switched without the tracepoint, and
/// the slot is repaired as a traced switch to the running task would have left it.
/// This also picks up a task that was already running when the program was
/// attached and never leaves its CPU.
#[inline(always)]
pub(crate) fn repair_current<M: TimeMap>() {
    // SAFETY: a helper call without arguments.
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
    // SAFETY: a helper call without arguments; the task is read through probe reads.
    let task = RawTask(unsafe { bpf_get_current_task() } as *const u8);
    let since = unseen_since(slot);
    // The running task's count is as of the scheduler's last update (at the latest
    // its last tick): its slice here starts at that update, so that what it ran
    // since then counts as running time from this reading on.
    let start = last_update(task, slot.clock_offset_ns).map_or(now, |at| at.max(since).min(now));
    account_unseen_switch::<M, _>(slot, task, (current >> 32) as u32, since, start);
    *slot = CpuSlot { clock_offset_ns: slot.clock_offset_ns, ..switch_in::<M>(read_task(task), start, now) };
}
