//! The `sched_switch` CPU-time program: its map, global and program names, and the
//! records it keeps.
//!
//! Accounting is per process (tgid). For each process the program keeps
//! [`ProcessTime`]: `acc_ns` is "on-CPU time of finished slices minus the start
//! times of the slices still running", `running` is how many of its threads are on a
//! CPU now. The cumulative on-CPU time at any instant `t` (CLOCK_MONOTONIC ns, the
//! clock of `bpf_ktime_get_ns`) is therefore `acc_ns + running * t`, in wrapping u64
//! arithmetic: one map entry read at one instant gives the time including the slices
//! still running, with no second map to keep consistent with it.

/// Hash map `u32 tgid -> ProcessTime`.
pub const PROCESS_TIME_MAP: &str = "PROCESS_TIME";
/// Per-CPU array of one [`CpuSlot`]: the task whose switch-in was counted on that CPU.
pub const CPU_SLOT_MAP: &str = "CPU_SLOT";
/// Per-CPU array of `u64` counters indexed by the `ERR_*` constants.
pub const ERRORS_MAP: &str = "ERRORS";

/// Capacity of [`PROCESS_TIME_MAP`]: processes (not threads) the program can track
/// at once. Entries of gone processes are deleted by [`PROGRAM_FREE_BTF`] (or its
/// twin), or by user space after a scan where that program is not attached.
pub const MAX_PROCESSES: u32 = 32_768;

/// Global: byte offset of `pid` (the thread id) in `struct task_struct`, from the
/// kernel's BTF. Zero means "not set" and makes the program count nothing.
pub const TASK_PID_OFFSET_GLOBAL: &str = "TASK_PID_OFFSET";
/// Global: byte offset of `tgid` (the process id) in `struct task_struct`, from BTF.
pub const TASK_TGID_OFFSET_GLOBAL: &str = "TASK_TGID_OFFSET";
/// Global: CLOCK_MONOTONIC ns just before loading; time before it is not counted.
pub const LOADED_AT_GLOBAL: &str = "LOADED_AT_NS";
/// Global: byte offset of `se.sum_exec_runtime` in `struct task_struct`, from BTF.
pub const TASK_SUM_EXEC_OFFSET_GLOBAL: &str = "TASK_SUM_EXEC_OFFSET";
/// Global: byte offset of `se.prev_sum_exec_runtime` in `struct task_struct`.
pub const TASK_PREV_SUM_EXEC_OFFSET_GLOBAL: &str = "TASK_PREV_SUM_EXEC_OFFSET";

/// The `tp_btf/sched_switch` program (preferred, kernel >= 5.5).
pub const PROGRAM_BTF: &str = "sched_switch_btf";
/// The `raw_tp/sched_switch` twin, for kernels that have BTF but refuse `tp_btf`.
pub const PROGRAM_RAW: &str = "sched_switch_raw";
/// The tracepoint both programs attach to.
pub const TRACEPOINT: &str = "sched_switch";
/// The `tp_btf/sched_process_free` program that deletes a dead process's entry.
pub const PROGRAM_FREE_BTF: &str = "process_free_btf";
/// Its `raw_tp` twin.
pub const PROGRAM_FREE_RAW: &str = "process_free_raw";
/// The tracepoint the two attach to.
pub const FREE_TRACEPOINT: &str = "sched_process_free";
/// The task-iterator program that lists every process in one read (`iter/task`).
pub const PROGRAM_PROCESSES: &str = "processes";
/// The kernel's name of the iterator target `PROGRAM_PROCESSES` attaches to.
pub const ITER_TARGET: &str = "task";
/// Global: byte offset of `start_time` (u64 ns) in `struct task_struct`, from BTF.
pub const TASK_START_TIME_OFFSET_GLOBAL: &str = "TASK_START_TIME_OFFSET";
/// Global: byte offset of `comm` (char[16]) in `struct task_struct`, from BTF.
pub const TASK_COMM_OFFSET_GLOBAL: &str = "TASK_COMM_OFFSET";
/// Global: byte offset of `mm` in `struct task_struct`, from BTF.
pub const TASK_MM_OFFSET_GLOBAL: &str = "TASK_MM_OFFSET";
/// Global: byte offsets in `struct mm_struct` of the file, anon and shmem page
/// counters that make up the resident set (`[u32; 3]`), from BTF.
pub const MM_RSS_OFFSETS_GLOBAL: &str = "MM_RSS_OFFSETS";
/// The perf-event program that re-checks each CPU's running task.
pub const PROGRAM_RESYNC: &str = "resync";
/// CPU-clock period of `PROGRAM_RESYNC` on each CPU: bounds how long a switch the
/// tracepoint did not report can go unnoticed.
pub const RESYNC_PERIOD_NS: u64 = 2_000_000;

/// A new process could not be inserted: the map is full. Its time is lost until an
/// entry frees up.
pub const ERR_MAP_FULL: u32 = 0;
/// Reading `next->pid`/`next->tgid` failed, or the offsets were not set.
pub const ERR_READ_TASK: u32 = 1;
/// The running task was not the one recorded at the CPU's last switch-in: the
/// kernel switched tasks without the tracepoint (see docs/EBPF.md).
pub const ERR_MISMATCH: u32 = 2;
/// Number of error counters.
pub const ERR_COUNT: u32 = 3;

/// Per-process CPU time; see the module documentation for how to read it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessTime {
    /// Finished on-CPU ns minus the start time of every running slice (wrapping).
    pub acc_ns: u64,
    /// Threads of the process on a CPU now (wrapping; u64 keeps the record padding-free).
    pub running: u64,
}

impl ProcessTime {
    /// Cumulative on-CPU ns at `now_ns` (CLOCK_MONOTONIC).
    pub const fn at(&self, now_ns: u64) -> u64 {
        self.acc_ns.wrapping_add(self.running.wrapping_mul(now_ns))
    }
}

/// The task whose switch-in was counted on one CPU; `tgid == 0` when none was (the
/// idle task, or the first switch after the program was attached).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSlot {
    pub tgid: u32,
    pub tid: u32,
    /// When the slice started (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// The task's `se.sum_exec_runtime` at switch-in.
    pub base_runtime_ns: u64,
    /// The clock reading `start_ns` is chained from (the program's `next_start`).
    pub anchor_ns: u64,
}

/// One process as `PROGRAM_PROCESSES` writes it: what `/proc/PID/stat` would say of
/// it, plus its on-CPU time from `PROCESS_TIME_MAP` at the instant it was written.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessRecord {
    pub tgid: u32,
    /// Zero; keeps the record free of padding.
    pub reserved: u32,
    /// `task_struct.start_time`: with the tgid, names the process across pid reuse.
    pub start_time_ns: u64,
    /// Cumulative on-CPU ns ([`ProcessTime::at`] the write); 0 if never seen running.
    pub cpu_ns: u64,
    /// Resident pages, summed as `get_mm_rss()` does; 0 for kernel threads.
    pub rss_pages: u64,
    /// `task_struct.comm` of the group leader, NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)], Copy, made only of integers, with no padding.
    unsafe impl aya::Pod for super::ProcessTime {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CpuSlot {}
    // SAFETY: as above (the comm bytes are integers too).
    unsafe impl aya::Pod for super::ProcessRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_slice_counts_up_to_the_reading_instant() {
        // One finished slice of 5 ns, one slice running since t=100.
        let time = ProcessTime { acc_ns: 5u64.wrapping_sub(100), running: 1 };
        assert_eq!(time.at(100), 5);
        assert_eq!(time.at(130), 35);
    }

    #[test]
    fn records_have_no_padding() {
        assert_eq!(core::mem::size_of::<ProcessTime>(), 16);
        assert_eq!(core::mem::size_of::<CpuSlot>(), 32);
        assert_eq!(core::mem::size_of::<ProcessRecord>(), 48);
    }
}
