//! Per-process on-CPU time, counted at every context switch.
//!
//! On `sched_switch` the program closes the slice of the task leaving the CPU and
//! opens the slice of the task coming in, in that task's process entry
//! (`agent_common::cputime::ProcessTime`): opening adds `-now` to `acc_ns` and 1 to
//! `running`, closing adds `+now` and -1. User space evaluates `acc_ns + running *
//! now` and so sees the slices still running, even of a task that never leaves its
//! CPU.
//!
//! Keyed by process (tgid), not thread: the agent reports processes, the time of a
//! thread that exits stays in its process's entry with nothing to fold, and the map
//! grows with processes, not threads.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::arch::asm;

use agent_common::cputime::{
    CpuSlot, ERR_COUNT, ERR_MAP_FULL, ERR_MISMATCH, ERR_READ_TASK, MAX_PROCESSES, ProcessTime,
};
use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
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

#[map]
static PROCESS_TIME: HashMap<u32, ProcessTime> = HashMap::with_max_entries(MAX_PROCESSES, 0);
#[map]
static CPU_SLOT: PerCpuArray<CpuSlot> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_COUNT, 0);

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
    on_switch(ctx.arg(PREV_ARG), ctx.arg(NEXT_ARG));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> u32 {
    on_switch(ctx.arg(PREV_ARG), ctx.arg(NEXT_ARG));
    0
}

#[inline(always)]
fn on_switch(prev: *const u8, next: *const u8) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(slot) = CPU_SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array value, touched only by this CPU, whose switch handler
    // cannot be re-entered (it runs with interrupts off under the runqueue lock).
    let slot = unsafe { &mut *slot };
    if slot.tgid != 0 {
        switch_out(slot, prev, now);
    }
    *slot = switch_in(next, now);
}

/// Closes the slice this CPU opened at its last switch-in. Its length is the
/// scheduler's own count (`se.sum_exec_runtime`, brought up to date just before
/// this tracepoint), so the totals agree with the kernel's accounting.
#[inline(always)]
fn switch_out(slot: &CpuSlot, prev: *const u8, now: u64) {
    let window = now.wrapping_sub(slot.start_ns);
    let ran = runtime_ns(slot.task).map(|sum| sum.saturating_sub(slot.base_runtime_ns));
    // At sched_switch the current task is still the one leaving.
    let current = (bpf_get_current_pid_tgid() >> 32) as u32;
    if current == slot.tgid {
        close_slice(slot.tgid, slot.start_ns.wrapping_add(ran.unwrap_or(window)));
        return;
    }
    // The kernel switched from the recorded task to `current` without this
    // tracepoint: some tasks leave the CPU untraced (ftrace misses them too). Each
    // gets what the scheduler counted for it, within the window.
    count_error(ERR_MISMATCH);
    let recorded_ran = ran.unwrap_or(0).min(window);
    close_slice(slot.tgid, slot.start_ns.wrapping_add(recorded_ran));
    if current != 0 {
        let current_ran = last_slice_ns(prev).unwrap_or(0).min(window - recorded_ran);
        charge(current, current_ran);
    }
}

/// `se.sum_exec_runtime` of a task: the scheduler's count of its on-CPU ns.
#[inline(always)]
fn runtime_ns(task: u64) -> Option<u64> {
    read_task_field::<u64>(task as *const u8, TASK_SUM_EXEC_OFFSET.load())
}

/// The scheduler's count of a task's current slice: `se.sum_exec_runtime` minus
/// `se.prev_sum_exec_runtime`, which it sets when it picks the task.
#[inline(always)]
fn last_slice_ns(task: *const u8) -> Option<u64> {
    let sum = runtime_ns(task as u64)?;
    let prev = read_task_field::<u64>(task, TASK_PREV_SUM_EXEC_OFFSET.load())?;
    Some(sum.saturating_sub(prev))
}

/// Ends a running slice of `tgid` at `at`.
#[inline(always)]
fn close_slice(tgid: u32, at: u64) {
    // No entry: user space deleted it because the process left /proc. Recreating it
    // here would leave `running` at -1, so the slice's tail is dropped instead.
    if let Some(time) = PROCESS_TIME.get_ptr_mut(tgid) {
        add(time, at, 1u64.wrapping_neg());
    }
}

/// Adds a finished stretch of `ns` to `tgid`.
#[inline(always)]
fn charge(tgid: u32, ns: u64) {
    if !update_or_insert(tgid, ns, 0) {
        count_error(ERR_MAP_FULL);
    }
}

/// Opens a slice for `next` and returns what this CPU must remember of it.
#[inline(always)]
fn switch_in(next: *const u8, now: u64) -> CpuSlot {
    let Some((tid, tgid)) = read_ids(next) else {
        count_error(ERR_READ_TASK);
        return CpuSlot::default();
    };
    // pid 0 is the idle task: idle time belongs to no process.
    if tid == 0 {
        return CpuSlot::default();
    }
    let Some(base_runtime_ns) = runtime_ns(next as u64) else {
        count_error(ERR_READ_TASK);
        return CpuSlot::default();
    };
    if !update_or_insert(tgid, now.wrapping_neg(), 1) {
        count_error(ERR_MAP_FULL);
        return CpuSlot::default();
    }
    CpuSlot { tgid, tid, start_ns: now, task: next as u64, base_runtime_ns }
}

/// Adds the deltas to `tgid`'s entry, inserting it if needed. False when the map is
/// full.
#[inline(always)]
fn update_or_insert(tgid: u32, acc_delta: u64, running_delta: u64) -> bool {
    if let Some(time) = PROCESS_TIME.get_ptr_mut(tgid) {
        add(time, acc_delta, running_delta);
        return true;
    }
    let fresh = ProcessTime { acc_ns: acc_delta, running: running_delta };
    match PROCESS_TIME.insert(tgid, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        // Another CPU inserted the same process between our lookup and insert.
        Err(NEG_EEXIST) => match PROCESS_TIME.get_ptr_mut(tgid) {
            Some(time) => {
                add(time, acc_delta, running_delta);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Atomically adds to both fields, `acc_ns` first: user space reads an entry twice
/// and keeps it only when both reads agree, which this order makes sufficient.
#[inline(always)]
fn add(time: *mut ProcessTime, acc_delta: u64, running_delta: u64) {
    // SAFETY: `time` points into a map value, 8-byte aligned, alive for the program's
    // run; other CPUs update it only through these atomics.
    unsafe {
        atomic_add(&raw mut (*time).acc_ns, acc_delta);
        atomic_add(&raw mut (*time).running, running_delta);
    }
}

/// `lock *(u64 *)(dst) += value`: BPF's atomic add (BPF_ATOMIC | BPF_ADD, no fetch,
/// so any BPF CPU version has it). Written as asm because the BPF target declares no
/// compare-and-swap and so core offers no `AtomicU64::fetch_add` there.
///
/// # Safety
/// `dst` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, value: u64) {
    // SAFETY: upheld by the caller; the asm touches only `*dst`.
    unsafe { asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) dst, in(reg) value, options(nostack)) };
}

/// `(pid, tgid)` of a task, read at the offsets user space took from BTF.
#[inline(always)]
fn read_ids(task: *const u8) -> Option<(u32, u32)> {
    let pid = read_task_field::<i32>(task, TASK_PID_OFFSET.load())?;
    let tgid = read_task_field::<i32>(task, TASK_TGID_OFFSET.load())?;
    Some((pid as u32, tgid as u32))
}

/// A field of a `task_struct` at `offset`; None when the offset was not set (0 is
/// never one of these fields) or the read faulted.
#[inline(always)]
fn read_task_field<T>(task: *const u8, offset: u32) -> Option<T> {
    if offset == 0 {
        return None;
    }
    // SAFETY: probe reads check their source and fail instead of faulting.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(offset as usize).cast::<T>()) }.ok()
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
