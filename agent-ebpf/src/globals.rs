//! Read-only globals user space sets before loading: the kernel's struct layout,
//! taken from its BTF (Rust eBPF has no CO-RE relocations), and facts of the host.
//! Read-only, so the verifier sees each as a constant and prunes on it.

use aya_ebpf::Global;

/// Offset of `pid` in `struct task_struct`, set by user space from the kernel's BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_PID_OFFSET: Global<u32> = Global::new(0);
/// Offset of `tgid` in `struct task_struct`, set by user space from the kernel's BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_TGID_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.sum_exec_runtime` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_SUM_EXEC_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.prev_sum_exec_runtime` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_PREV_SUM_EXEC_OFFSET: Global<u32> = Global::new(0);
/// Offset of `se.exec_start` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_EXEC_START_OFFSET: Global<u32> = Global::new(0);
/// Offset of `start_time` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_START_TIME_OFFSET: Global<u32> = Global::new(0);
/// Offset of `comm` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_COMM_OFFSET: Global<u32> = Global::new(0);
/// Offset of `mm` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_MM_OFFSET: Global<u32> = Global::new(0);
/// Offset of `real_parent` in `struct task_struct`, from BTF.
#[unsafe(no_mangle)]
pub(crate) static TASK_REAL_PARENT_OFFSET: Global<u32> = Global::new(0);
/// Offsets in `struct mm_struct` of the file, anon and shmem page counters, from BTF.
#[unsafe(no_mangle)]
pub(crate) static MM_RSS_OFFSETS: Global<[u32; 3]> = Global::new([0; 3]);
/// CLOCK_MONOTONIC ns just before loading: nothing before it is counted.
#[unsafe(no_mangle)]
pub(crate) static LOADED_AT_NS: Global<u64> = Global::new(0);
/// CPU ids the kernel may use (`nr_cpu_ids`), set by user space.
#[unsafe(no_mangle)]
pub(crate) static POSSIBLE_CPUS: Global<u32> = Global::new(0);
/// Non-zero: count in `PROCESS_TIME_PREALLOC` instead of `PROCESS_TIME`. Set by
/// user space where the verifier refuses the latter (see `process_time`).
#[unsafe(no_mangle)]
pub(crate) static PREALLOCATED: Global<u32> = Global::new(0);
/// Non-zero: read `mm_struct`'s resident-page counters with the probe-read helper
/// (before Linux 6.2, see `RSS_BY_PROBE_GLOBAL` in agent-common).
#[unsafe(no_mangle)]
pub(crate) static RSS_BY_PROBE: Global<u32> = Global::new(0);
/// Non-zero: the kernel has `bpf_map_lookup_percpu_elem` (Linux >= 5.19); zero makes
/// `process_cpu_ns` leave the sum to user space.
#[unsafe(no_mangle)]
pub(crate) static PERCPU_LOOKUP: Global<u32> = Global::new(0);
