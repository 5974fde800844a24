//! The maps every program shares, and the error counters.

use agent_common::cputime::{CpuSlot, ERR_COUNT, EXITS_BYTES, MAX_PROCESSES, ProcessTime};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
};

use crate::globals::PREALLOCATED;

/// The process map, allocated as processes appear: a preallocated per-CPU map
/// takes 8 bytes per entry per possible CPU up front (256 KiB per CPU), whatever
/// the number of processes.
#[map]
pub(crate) static PROCESS_TIME: PerCpuHashMap<u32, ProcessTime> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, BPF_F_NO_PREALLOC);
/// The same, preallocated. User space shrinks the one not in use to one entry.
#[map]
pub(crate) static PROCESS_TIME_PREALLOC: PerCpuHashMap<u32, ProcessTime> =
    PerCpuHashMap::with_max_entries(MAX_PROCESSES, 0);

/// The process map in use. Before Linux 6.1 the verifier lets a perf-event program
/// (`resync`) use only preallocated hash maps, so the loader selects the
/// preallocated twin there. `PREALLOCATED` is read-only, so the verifier knows which
/// branch runs and drops the other: the choice costs nothing at run time.
#[inline(always)]
pub(crate) fn process_time() -> &'static PerCpuHashMap<u32, ProcessTime> {
    if PREALLOCATED.load() != 0 { &PROCESS_TIME_PREALLOC } else { &PROCESS_TIME }
}

/// The process map a program's code names. Before Linux 6.1 the verifier checks
/// every map a program references before it prunes dead branches: it refuses a
/// perf-event program that so much as names the map allocated on demand, and warns
/// (a kernel WARN with a stack trace, once per boot; fatal under `panic_on_warn`)
/// when a raw_tp program does. So the counting code is generic over this, and each
/// perf-event and raw_tp program has a `_prealloc` twin built naming only the
/// preallocated map, which the loader picks with it. tp_btf and iterator programs
/// are not checked and count in [`Selected`].
pub(crate) trait TimeMap {
    fn map() -> &'static PerCpuHashMap<u32, ProcessTime>;
}

/// The map user space selected (`PREALLOCATED`, see [`process_time`]).
pub(crate) struct Selected;

impl TimeMap for Selected {
    #[inline(always)]
    fn map() -> &'static PerCpuHashMap<u32, ProcessTime> {
        process_time()
    }
}

/// The preallocated map only.
pub(crate) struct PreallocatedOnly;

impl TimeMap for PreallocatedOnly {
    #[inline(always)]
    fn map() -> &'static PerCpuHashMap<u32, ProcessTime> {
        &PROCESS_TIME_PREALLOC
    }
}

#[map]
pub(crate) static CPU_SLOT: PerCpuArray<CpuSlot> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERR_COUNT, 0);
/// The final totals of processes that exited, for user space to hand to their
/// ancestors (see `on_free`).
#[map]
pub(crate) static EXITS: RingBuf = RingBuf::with_byte_size(EXITS_BYTES, 0);
/// One u32, non-zero while user space reads `EXITS` (a client is connected).
#[map]
pub(crate) static EXITS_WANTED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn count_error(index: u32) {
    if let Some(counter) = ERRORS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, this CPU only, no re-entry (see `on_switch`).
        unsafe { *counter += 1 };
    }
}
