//! The task iterator (`processes`): every process with its counter in one read.

use agent_common::cputime::ProcessRecord;
use aya_ebpf::{bindings::seq_file, helpers::generated::bpf_seq_write};

use crate::{
    counters::process_cpu_ns,
    maps::Selected,
    globals::{MM_RSS_OFFSETS, RSS_BY_PROBE, TASK_MM_OFFSET, TASK_START_TIME_OFFSET},
    task::{BtfTask, RawTask, Task, comm, parent_tgid, task_ids},
};

/// `struct bpf_iter__task` (kernel/bpf/task_iter.c): the context of an `iter/task`
/// program, one call per task and a last one with `task` NULL.
#[repr(C)]
pub(crate) struct IterTaskContext {
    meta: *const IterMeta,
    task: *const u8,
}

/// The head of `struct bpf_iter_meta` (include/linux/bpf.h): the output file.
#[repr(C)]
pub(crate) struct IterMeta {
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
pub(crate) fn describe_process(task: BtfTask) -> Option<ProcessRecord> {
    let (tid, tgid) = task_ids(task)?;
    if tid != tgid {
        return None;
    }
    Some(ProcessRecord {
        tgid,
        ppid: parent_tgid(task),
        start_time_ns: task.field::<u64>(TASK_START_TIME_OFFSET.load())?,
        cpu_ns: process_cpu_ns::<Selected>(tgid),
        rss_pages: rss_pages(task),
        comm: comm(task)?,
    })
}

/// Resident pages of `task`'s memory map as `get_mm_rss()` counts them: the file,
/// anon and shmem counters, each read as `percpu_counter_read_positive` does
/// (the shared count, negative read as 0). 0 for a task without one.
#[inline(always)]
pub(crate) fn rss_pages(task: BtfTask) -> u64 {
    // The loaded pointer is typed `struct mm_struct *` to the verifier.
    let Some(mm) = task.pointee(TASK_MM_OFFSET.load()) else { return 0 };
    let offsets = MM_RSS_OFFSETS.load();
    if RSS_BY_PROBE.load() != 0 {
        // Before Linux 6.2 (see `RSS_BY_PROBE`): the same reads through the helper.
        return sum_counters(RawTask(mm.0), offsets);
    }
    sum_counters(mm, offsets)
}

/// The three counters at `offsets` in `mm`, each negative read as 0, added up.
#[inline(always)]
fn sum_counters<T: Task>(mm: T, offsets: [u32; 3]) -> u64 {
    let counter = |offset: u32| mm.field::<i64>(offset).map_or(0, |pages| pages.max(0) as u64);
    counter(offsets[0]) + counter(offsets[1]) + counter(offsets[2])
}
