//! Reading and updating a process's per-CPU counters (`ProcessTime`).

use agent_common::cputime::{CPU_NS_UNSUMMED, ERR_MAP_FULL, MAX_CPUS, ProcessTime};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, generated::bpf_map_lookup_percpu_elem},
};

use crate::{
    globals::{PERCPU_LOOKUP, POSSIBLE_CPUS},
    maps::{TimeMap, count_error},
};

/// `EEXIST` from include/uapi/asm-generic/errno-base.h, negated as helpers return it.
pub(crate) const NEG_EEXIST: i32 = -17;

/// `tgid`'s cumulative on-CPU ns now: its copies summed over CPUs; 0 without an
/// entry. `CPU_NS_UNSUMMED` on a kernel without `bpf_map_lookup_percpu_elem`
/// (before 5.19), where user space sums the copies: `PERCPU_LOOKUP` is read-only,
/// so the verifier of such a kernel never sees the call it does not know.
#[inline(always)]
pub(crate) fn process_cpu_ns<M: TimeMap>(tgid: u32) -> u64 {
    if PERCPU_LOOKUP.load() == 0 {
        return CPU_NS_UNSUMMED;
    }
    let map = core::ptr::from_ref(M::map()).cast_mut().cast();
    let key = (&raw const tgid).cast();
    let mut total = 0u64;
    let mut running = 0u64;
    for cpu in 0..POSSIBLE_CPUS.load().min(MAX_CPUS) {
        // SAFETY: `map` is this program's map and `key` a u32 as it expects. A null
        // answer means no entry (for any CPU) or a CPU id past the possible ones.
        let time = unsafe { bpf_map_lookup_percpu_elem(map, key, cpu) }.cast::<ProcessTime>();
        if time.is_null() {
            break;
        }
        // SAFETY: a map value pointer, valid for this run; one aligned u64, which the
        // CPU that owns it writes whole.
        let time = unsafe { core::ptr::read_volatile(time) };
        // At instant 0: the closed time less the running slice's start, if any.
        total = total.wrapping_add(time.at(0));
        running += u64::from(time.running());
    }
    // The clock (~30 ns here) is read only for a process with a thread on a CPU,
    // as it was before the copies were per CPU.
    if running > 0 {
        // SAFETY: a helper call without arguments.
        total = total.wrapping_add(running.wrapping_mul(unsafe { bpf_ktime_get_ns() }));
    }
    total
}

/// Ends a running slice of `tgid` at `at`.
#[inline(always)]
pub(crate) fn close_slice<M: TimeMap>(tgid: u32, at: u64) {
    // No entry: it was deleted because the process is gone. Recreating it here
    // would close a slice it never opened, so the slice's tail is dropped instead.
    if let Some(time) = M::map().get_ptr_mut(tgid) {
        add(time, ProcessTime::close_delta(at));
    }
}

/// Adds a finished stretch of `ns` to `tgid`.
#[inline(always)]
pub(crate) fn charge<M: TimeMap>(tgid: u32, ns: u64) {
    if !update_or_insert::<M>(tgid, ProcessTime::finished_delta(ns)) {
        count_error(ERR_MAP_FULL);
    }
}

/// Adds `delta` to this CPU's copy of `tgid`'s entry, inserting the entry if needed
/// (the other CPUs' copies start at zero). False when it cannot be inserted: the
/// map is full, or, allocated on demand, the kernel had no memory at hand.
#[inline(always)]
pub(crate) fn update_or_insert<M: TimeMap>(tgid: u32, delta: u64) -> bool {
    if let Some(time) = M::map().get_ptr_mut(tgid) {
        add(time, delta);
        return true;
    }
    match M::map().insert(tgid, ProcessTime(delta), u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        // Another CPU inserted the same process between our lookup and insert.
        Err(NEG_EEXIST) => match M::map().get_ptr_mut(tgid) {
            Some(time) => {
                add(time, delta);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// Adds `delta` to this CPU's copy. A plain read and write: only this CPU writes
/// the copy, from the switch handler or from `resync`, and neither can interrupt the
/// other (see `on_switch`); readers on other CPUs copy the u64 whole.
#[inline(always)]
pub(crate) fn add(time: *mut ProcessTime, delta: u64) {
    // SAFETY: `time` points to this CPU's value in the map, 8-byte aligned, alive for
    // the program's run.
    unsafe { core::ptr::write_volatile(time, ProcessTime(core::ptr::read_volatile(time).0.wrapping_add(delta))) };
}
