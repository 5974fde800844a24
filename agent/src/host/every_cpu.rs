//! Makes every CPU switch tasks now, by running the calling thread once on each.
//!
//! The eBPF source needs this when it attaches its repair of untraced switches:
//! until each CPU's record of its running task has been checked once, a reading may
//! charge a task that left the CPU unseen. A context switch checks it (the
//! `sched_switch` program compares the task leaving with the one recorded), and
//! moving a thread onto a CPU is a switch there, at once, busy or idle, where
//! waiting for the scheduler's tick takes two ticks (20 ms at the slowest rate)
//! and an idle CPU may not tick at all.

use std::io;
use std::time::Instant;

use rustix::thread::CpuSet;

/// Moves the calling thread onto each of `cpus` in turn, then gives it back its
/// own affinity. Each CPU it lands on has switched to it, and the CPU it started
/// on (visited last) has switched away from it. A move onto a busy CPU waits for
/// the thread's turn there, so on a loaded host the visits stop at `deadline`.
/// Returns the CPUs it did not run on (outside the agent's cpuset, past
/// `CPU_SETSIZE`, the move failed, or the deadline came first); an error when the
/// thread's own affinity cannot be read, and nothing was visited.
pub fn switch_on_every_cpu(cpus: &[u32], deadline: Instant) -> io::Result<Vec<u32>> {
    let own = affinity()?;
    let here = current_cpu();
    // The CPU this thread runs on now switches when the thread leaves it; visiting
    // it first would be no move at all.
    let mut order: Vec<u32> = cpus.iter().copied().filter(|&cpu| Some(cpu) != here).collect();
    order.extend(cpus.iter().copied().filter(|&cpu| Some(cpu) == here));
    let mut missed = Vec::new();
    for &cpu in &order {
        let moved = Instant::now() < deadline && set_affinity(&only(cpu)).is_ok() && current_cpu() == Some(cpu);
        if !moved {
            missed.push(cpu);
        }
    }
    if order.len() == 1 && here == order.first().copied() {
        // A single CPU: the thread never left it. A sleep is a switch away.
        std::thread::sleep(std::time::Duration::from_micros(1));
    }
    set_affinity(&own)?;
    Ok(missed)
}

/// The calling thread's affinity mask.
fn affinity() -> io::Result<CpuSet> {
    Ok(rustix::thread::sched_getaffinity(None)?)
}

/// Restricts the calling thread to `set`; the kernel moves it onto one of those
/// CPUs before the call returns.
fn set_affinity(set: &CpuSet) -> io::Result<()> {
    Ok(rustix::thread::sched_setaffinity(None, set)?)
}

/// The set of one CPU (empty past `CPU_SETSIZE`, which the kernel refuses).
fn only(cpu: u32) -> CpuSet {
    let mut set = CpuSet::new();
    // `set` asserts its index is in range.
    if (cpu as usize) < CpuSet::MAX_CPU {
        set.set(cpu as usize);
    }
    set
}

fn current_cpu() -> Option<u32> {
    u32::try_from(rustix::thread::sched_getcpu()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Context switches of the calling thread so far, voluntary and not
    /// (getrusage(RUSAGE_THREAD)).
    fn switches() -> i64 {
        // SAFETY: rusage is plain integers, valid when zeroed; getrusage writes it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes only the struct it is given (rustix has no
        // getrusage for a thread).
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
        usage.ru_nvcsw + usage.ru_nivcsw
    }

    #[test]
    fn the_thread_runs_on_each_cpu_and_keeps_its_own_affinity() {
        let before = affinity().unwrap();
        let allowed: Vec<u32> = (0..CpuSet::MAX_CPU as u32).filter(|&cpu| before.is_set(cpu as usize)).collect();
        let switched_before = switches();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let missed = switch_on_every_cpu(&allowed, deadline).unwrap();
        assert!(missed.is_empty(), "every CPU this thread may use was visited: missed {missed:?}");
        // Leaving a CPU is a switch of this thread; a move onto another CPU is one
        // at least (the kernel's migration thread takes it off).
        let switched = switches() - switched_before;
        assert!(switched >= allowed.len() as i64 - 1, "{switched} switches for {} CPUs", allowed.len());
        assert_eq!(before, affinity().unwrap(), "the affinity is given back");
    }

    #[test]
    fn cpus_outside_the_set_or_past_the_deadline_are_reported_not_visited() {
        let later = Instant::now() + std::time::Duration::from_secs(10);
        let missed = switch_on_every_cpu(&[CpuSet::MAX_CPU as u32 + 7], later).unwrap();
        assert_eq!(missed, vec![CpuSet::MAX_CPU as u32 + 7]);
        let missed = switch_on_every_cpu(&[0], Instant::now()).unwrap();
        assert_eq!(missed, vec![0], "a deadline already passed visits nothing");
    }
}
