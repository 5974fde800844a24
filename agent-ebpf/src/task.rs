//! Reading fields of a `task_struct`, at offsets user space took from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::globals::{
    TASK_COMM_OFFSET, TASK_PID_OFFSET, TASK_PREV_SUM_EXEC_OFFSET, TASK_REAL_PARENT_OFFSET, TASK_SUM_EXEC_OFFSET,
    TASK_TGID_OFFSET,
};

/// A `task_struct` the program reads fields of, at offsets user space took from BTF.
pub(crate) trait Task: Copy {
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
pub(crate) struct BtfTask(pub(crate) *const u8);

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
pub(crate) struct RawTask(pub(crate) *const u8);

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

/// `task`'s thread id and process id (`pid` and `tgid` in the kernel's words).
#[inline(always)]
pub(crate) fn task_ids<T: Task>(task: T) -> Option<(u32, u32)> {
    Some((task.field::<u32>(TASK_PID_OFFSET.load())?, task.field::<u32>(TASK_TGID_OFFSET.load())?))
}

/// The tgid of `task`'s `real_parent`; 0 when it cannot be read.
#[inline(always)]
pub(crate) fn parent_tgid<T: Task>(task: T) -> u32 {
    task.pointee(TASK_REAL_PARENT_OFFSET.load())
        .and_then(|parent| parent.field::<u32>(TASK_TGID_OFFSET.load()))
        .unwrap_or(0)
}

/// `task_struct.comm` of `task`.
#[inline(always)]
pub(crate) fn comm<T: Task>(task: T) -> Option<[u8; 16]> {
    let offset = TASK_COMM_OFFSET.load();
    let head = task.field::<[u8; 8]>(offset)?;
    let tail = task.field::<[u8; 8]>(offset.wrapping_add(8))?;
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&head);
    comm[8..].copy_from_slice(&tail);
    Some(comm)
}

/// `se.sum_exec_runtime` of a task: the scheduler's count of its on-CPU ns.
#[inline(always)]
pub(crate) fn runtime_ns<T: Task>(task: T) -> Option<u64> {
    task.field::<u64>(TASK_SUM_EXEC_OFFSET.load())
}

/// The scheduler's count of a task's current slice: `se.sum_exec_runtime` minus
/// `se.prev_sum_exec_runtime`, which it sets when it picks the task.
#[inline(always)]
pub(crate) fn last_slice_ns<T: Task>(task: T) -> Option<u64> {
    let sum = runtime_ns(task)?;
    let prev = task.field::<u64>(TASK_PREV_SUM_EXEC_OFFSET.load())?;
    Some(sum.saturating_sub(prev))
}
