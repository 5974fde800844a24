//! The `sched_switch` CPU-time program: its map, global and program names, and the
//! records it keeps.
//!
//! Accounting is per process (tgid), and each CPU keeps its own part of a process's
//! time: a [`ProcessTime`] in a per-CPU hash map. A CPU updates only its own copy
//! (a slice opens and closes on the CPU it runs on), so two CPUs running threads of
//! one process never contend for one cache line, and the updates need no atomics.
//! A copy says whether a thread of the process is on that CPU now, and the time of
//! the finished slices minus the start of the running one, so the cumulative on-CPU
//! time at any instant `t` (CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`) is
//! the sum over CPUs of [`ProcessTime::at`]`(t)`: one map entry read at one instant
//! gives the time including the slices still running, with no second map to keep
//! consistent with it.

/// Per-CPU hash map `u32 tgid -> ProcessTime`, allocated as processes appear.
pub const PROCESS_TIME_MAP: &str = "PROCESS_TIME";
/// Its preallocated twin, for kernels before 6.1 (see [`PREALLOCATED_GLOBAL`]).
pub const PROCESS_TIME_PREALLOC_MAP: &str = "PROCESS_TIME_PREALLOC";
/// Global (u32): non-zero makes the programs count in [`PROCESS_TIME_PREALLOC_MAP`].
/// Before Linux 6.1 the verifier lets a perf-event program use only preallocated
/// hash maps.
pub const PREALLOCATED_GLOBAL: &str = "PREALLOCATED";
/// Per-CPU array of one [`CpuSlot`]: the task whose switch-in was counted on that CPU.
pub const CPU_SLOT_MAP: &str = "CPU_SLOT";
/// Per-CPU array of `u64` counters indexed by the `ERR_*` constants.
pub const ERRORS_MAP: &str = "ERRORS";
/// Ring buffer of [`ExitRecord`]s: one per process that exits while someone reads.
pub const EXITS_MAP: &str = "EXITS";
/// Size of [`EXITS_MAP`] in bytes (a power of two, a multiple of the page size):
/// 512 KiB, 10,922 records of 40 bytes plus the ring's 8-byte header, which at the
/// real client's 2 s between processes requests is 5,000 exits per second.
pub const EXITS_BYTES: u32 = 512 * 1024;
/// Array of one `u32`: non-zero while someone reads the processes list (the agent
/// sets it when the first client connects and clears it when the last leaves), so
/// that exits are recorded only then and the ring never fills with records nobody
/// will read.
pub const EXITS_WANTED_MAP: &str = "EXITS_WANTED";

/// Capacity of [`PROCESS_TIME_MAP`]: processes (not threads) the program can track
/// at once. Entries of gone processes are deleted by [`PROGRAM_FREE_BTF`] (or its
/// twin), or by user space after a scan where that program is not attached. The map
/// is allocated on demand, 8 bytes per possible CPU per process tracked, except
/// before Linux 6.1, where its preallocated twin holds all of them up front.
pub const MAX_PROCESSES: u32 = 32_768;

/// Global: the number of CPU ids the kernel may use (`nr_cpu_ids`, the last id in
/// /sys/devices/system/cpu/possible plus one): the iterator sums a process's copies
/// over CPUs `0..POSSIBLE_CPUS`.
pub const POSSIBLE_CPUS_GLOBAL: &str = "POSSIBLE_CPUS";
/// Upper bound of [`POSSIBLE_CPUS_GLOBAL`] (the kernel's own `NR_CPUS` limit): the
/// iterator's loop over CPUs must have a bound the verifier can see.
pub const MAX_CPUS: u32 = 8192;

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
/// Global: byte offset of `se.exec_start` in `struct task_struct`, from BTF.
pub const TASK_EXEC_START_OFFSET_GLOBAL: &str = "TASK_EXEC_START_OFFSET";

/// The `tp_btf/sched_switch` program (preferred, kernel >= 5.5).
pub const PROGRAM_BTF: &str = "sched_switch_btf";
/// The `raw_tp/sched_switch` twin, for kernels that have BTF but refuse `tp_btf`.
pub const PROGRAM_RAW: &str = "sched_switch_raw";
/// `PROGRAM_RAW` naming only the preallocated process map (see
/// `PROGRAM_REPAIR_TICK_PREALLOC` for why).
pub const PROGRAM_RAW_PREALLOC: &str = "sched_switch_raw_prealloc";
/// The tracepoint both programs attach to.
pub const TRACEPOINT: &str = "sched_switch";
/// The `tp_btf/sched_process_free` program that deletes a dead process's entry.
pub const PROGRAM_FREE_BTF: &str = "process_free_btf";
/// Its `raw_tp` twin.
pub const PROGRAM_FREE_RAW: &str = "process_free_raw";
/// `PROGRAM_FREE_RAW` naming only the preallocated process map.
pub const PROGRAM_FREE_RAW_PREALLOC: &str = "process_free_raw_prealloc";
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
/// Global: byte offset of `real_parent` (the process that forked the task, or the
/// one that adopted it) in `struct task_struct`, from BTF.
pub const TASK_REAL_PARENT_OFFSET_GLOBAL: &str = "TASK_REAL_PARENT_OFFSET";
/// Global: byte offsets in `struct mm_struct` of the file, anon and shmem page
/// counters that make up the resident set (`[u32; 3]`), from BTF.
pub const MM_RSS_OFFSETS_GLOBAL: &str = "MM_RSS_OFFSETS";
/// Global (u32): non-zero makes the iterator read the [`MM_RSS_OFFSETS_GLOBAL`]
/// counters with the probe-read helper instead of plain loads. Until Linux 6.2 they
/// are `atomic_long_t`, a typedef'd struct in an array, which the verifier of those
/// kernels cannot walk through (`Type 'atomic_long_t' is not a struct`).
pub const RSS_BY_PROBE_GLOBAL: &str = "RSS_BY_PROBE";
/// Global (u32): non-zero where the kernel has the `bpf_map_lookup_percpu_elem`
/// helper (Linux >= 5.19), with which the iterator and the exit programs sum a
/// process's per-CPU copies. Where it is zero they write [`CPU_NS_UNSUMMED`] and
/// user space sums the copies from the map.
pub const PERCPU_LOOKUP_GLOBAL: &str = "PERCPU_LOOKUP";
/// `cpu_ns` of a [`ProcessRecord`] or [`ExitRecord`] whose program could not sum the
/// per-CPU copies (see [`PERCPU_LOOKUP_GLOBAL`]): user space reads the entry. An
/// exit record with it leaves the entry in the map for user space to delete.
pub const CPU_NS_UNSUMMED: u64 = u64::MAX;
/// The perf-event program that re-checks each CPU's running task.
pub const PROGRAM_RESYNC: &str = "resync";
/// The same program counting in the preallocated map only. Linux 5.10 checks every
/// map a perf-event program names, dead branches included, and refuses the one
/// allocated on demand; this twin names only its preallocated twin.
pub const PROGRAM_RESYNC_PREALLOC: &str = "resync_prealloc";
/// CPU-clock period of `PROGRAM_RESYNC` on each CPU: bounds how long a switch the
/// tracepoint did not report can go unnoticed.
pub const RESYNC_PERIOD_NS: u64 = 2_000_000;
/// The `raw_tp` program that does `PROGRAM_RESYNC`'s repair whenever a high-
/// resolution timer expires, the scheduler tick among them.
pub const PROGRAM_REPAIR_TICK: &str = "repair_tick";
/// The tracepoint it attaches to (`timer:hrtimer_expire_entry`). Not an `fentry`
/// on `sched_tick`: attaching trampolines is refused where ftrace is locked down
/// (it was on the development VM), tracepoints are not.
pub const TICK_TRACEPOINT: &str = "hrtimer_expire_entry";
/// The `raw_tp` program that does the repair when a CPU enters or leaves idle.
pub const PROGRAM_REPAIR_IDLE: &str = "repair_idle";
/// The tracepoint it attaches to (`power:cpu_idle`).
pub const IDLE_TRACEPOINT: &str = "cpu_idle";
/// `PROGRAM_REPAIR_TICK` naming only the preallocated process map: before Linux 6.1
/// the kernel warns once per boot (a WARN with a stack trace in its log) when a
/// raw_tp program names a map allocated on demand, even in a dead branch.
pub const PROGRAM_REPAIR_TICK_PREALLOC: &str = "repair_tick_prealloc";
/// `PROGRAM_REPAIR_IDLE` naming only the preallocated process map.
pub const PROGRAM_REPAIR_IDLE_PREALLOC: &str = "repair_idle_prealloc";
/// How long after attaching the tick program every busy CPU has ticked: two ticks
/// at the slowest rate the kernel offers (CONFIG_HZ=100).
pub const TICK_SETTLE_NS: u64 = 20_000_000;

/// A new process could not be inserted: the map is full, or (allocated on demand)
/// the kernel had no memory at hand. Its time is lost until an insert succeeds.
pub const ERR_MAP_FULL: u32 = 0;
/// Reading `next->pid`/`next->tgid` failed, or the offsets were not set.
pub const ERR_READ_TASK: u32 = 1;
/// The running task was not the one recorded at the CPU's last switch-in: the
/// kernel switched tasks without the tracepoint (see docs/EBPF.md).
pub const ERR_MISMATCH: u32 = 2;
/// A process exited while someone read, and its [`ExitRecord`] did not fit in the
/// ring ([`EXITS_MAP`]): its last unreported time is missing from the processes
/// list.
pub const ERR_EXIT_LOST: u32 = 3;
/// Number of error counters.
pub const ERR_COUNT: u32 = 4;

/// One CPU's part of a process's on-CPU time, packed in one u64 so that a reader
/// copying it never sees half an update and the program changes it with one add.
///
/// Bit 0 says whether a thread of the process is on this CPU now (a CPU runs one
/// task at a time, so one bit is enough); bits 1..64 hold, as a signed number, the
/// time of the finished slices minus the start of the running one. The program
/// changes a copy only by adding the deltas below (wrapping): opening a slice at
/// `start` sets the bit and subtracts `start`, closing it at `end` clears the bit and
/// adds `end`. The signed part stays within ±2^62 ns (146 years), so nothing
/// overflows into the bit.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessTime(pub u64);

impl ProcessTime {
    /// What opening a slice at `start_ns` adds.
    pub const fn open_delta(start_ns: u64) -> u64 {
        1u64.wrapping_sub(start_ns.wrapping_mul(2))
    }

    /// What closing the running slice at `end_ns` adds.
    pub const fn close_delta(end_ns: u64) -> u64 {
        end_ns.wrapping_mul(2).wrapping_sub(1)
    }

    /// What a finished stretch of `ns` adds, whether or not a slice is running.
    pub const fn finished_delta(ns: u64) -> u64 {
        ns.wrapping_mul(2)
    }

    /// Whether a thread of the process is on this CPU.
    pub const fn running(self) -> bool {
        self.0 & 1 == 1
    }

    /// This CPU's part of the process's cumulative on-CPU ns at `now_ns`
    /// (CLOCK_MONOTONIC).
    pub const fn at(self, now_ns: u64) -> u64 {
        let base = (self.0 as i64 >> 1) as u64;
        if self.running() { base.wrapping_add(now_ns) } else { base }
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
    /// CLOCK_MONOTONIC minus the run queue's task clock (the clock of
    /// `se.exec_start`), as last measured on this CPU; 0 until measured.
    pub clock_offset_ns: u64,
}

/// One process as `PROGRAM_PROCESSES` writes it: what `/proc/PID/stat` would say of
/// it, plus its on-CPU time from `PROCESS_TIME_MAP` at the instant it was written.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessRecord {
    pub tgid: u32,
    /// The tgid of `real_parent`: the process that forked it, or adopted it when
    /// that one exited first; 0 for pid 1 and kernel threads' parent.
    pub ppid: u32,
    /// `task_struct.start_time`: with the tgid, names the process across pid reuse.
    pub start_time_ns: u64,
    /// Cumulative on-CPU ns (the sum of [`ProcessTime::at`] the write over CPUs); 0
    /// if never seen running.
    pub cpu_ns: u64,
    /// Resident pages, summed as `get_mm_rss()` does; 0 for kernel threads.
    pub rss_pages: u64,
    /// `task_struct.comm` of the group leader, NUL-padded.
    pub comm: [u8; 16],
}

/// A process that exited, as the `sched_process_free` program writes it to
/// [`EXITS_MAP`] when its group leader is freed: everything of it has run, so its
/// total is final.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitRecord {
    pub tgid: u32,
    /// The tgid of `real_parent` when it was freed: the process that reaped it.
    pub ppid: u32,
    /// `task_struct.start_time`, as in [`ProcessRecord`].
    pub start_time_ns: u64,
    /// Its final on-CPU ns since the program was loaded (all its threads).
    pub cpu_ns: u64,
    /// `task_struct.comm` of the group leader, NUL-padded.
    pub comm: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(transparent)] over a u64, valid for any bit pattern.
    unsafe impl aya::Pod for super::ProcessTime {}
    // SAFETY: as above.
    // SAFETY: #[repr(C)], Copy, made only of integers, with no padding.
    unsafe impl aya::Pod for super::CpuSlot {}
    // SAFETY: as above (the comm bytes are integers too).
    unsafe impl aya::Pod for super::ProcessRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the deltas as the program does: wrapping adds to one u64.
    fn apply(deltas: &[u64]) -> ProcessTime {
        ProcessTime(deltas.iter().fold(0, |value, delta| value.wrapping_add(*delta)))
    }

    #[test]
    fn a_running_slice_counts_up_to_the_reading_instant() {
        // A slice of 5 ns (10..15), then one running since t=100.
        let time = apply(&[ProcessTime::open_delta(10), ProcessTime::close_delta(15), ProcessTime::open_delta(100)]);
        assert!(time.running());
        assert_eq!(time.at(100), 5);
        assert_eq!(time.at(130), 35);
    }

    #[test]
    fn a_closed_slice_counts_its_length_whatever_the_reading_instant() {
        let time = apply(&[ProcessTime::open_delta(1_000), ProcessTime::close_delta(1_250)]);
        assert!(!time.running());
        assert_eq!(time.at(5_000), 250);
        assert_eq!(time.at(u64::MAX), 250);
    }

    #[test]
    fn finished_stretches_add_while_a_slice_runs() {
        let time = apply(&[ProcessTime::open_delta(500), ProcessTime::finished_delta(40)]);
        assert!(time.running());
        assert_eq!(time.at(600), 140);
    }

    #[test]
    fn late_clocks_and_long_totals_survive_the_packing() {
        // A clock 100 years after boot and 50 years of finished time: the signed part
        // (total minus start) is far from zero either way.
        const YEAR_NS: u64 = 365 * 24 * 3600 * 1_000_000_000;
        let start = 100 * YEAR_NS;
        let time = apply(&[
            ProcessTime::open_delta(1),
            ProcessTime::close_delta(1 + 50 * YEAR_NS),
            ProcessTime::open_delta(start),
        ]);
        assert_eq!(time.at(start + 7), 50 * YEAR_NS + 7);
        let closed = ProcessTime(time.0.wrapping_add(ProcessTime::close_delta(start + 9)));
        assert_eq!(closed.at(0), 50 * YEAR_NS + 9);
    }

    #[test]
    fn records_have_no_padding() {
        assert_eq!(core::mem::size_of::<ProcessTime>(), 8);
        assert_eq!(core::mem::size_of::<CpuSlot>(), 40);
        assert_eq!(core::mem::size_of::<ProcessRecord>(), 48);
        assert_eq!(core::mem::size_of::<ExitRecord>(), 40);
    }
}
