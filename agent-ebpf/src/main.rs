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

mod counters;
mod exit;
mod globals;
mod iter;
mod maps;
mod repair;
mod switch;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// "Dual MIT/GPL" is GPL-compatible for the kernel, which the probe-read helper needs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
