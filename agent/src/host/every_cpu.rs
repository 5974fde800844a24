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
fn affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit set, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most the size passed into `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Restricts the calling thread to `set`; the kernel moves it onto one of those
/// CPUs before the call returns.
fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: sched_setaffinity only reads the set passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The set of one CPU (empty past `CPU_SETSIZE`, which the kernel refuses).
fn only(cpu: u32) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit set, valid when zeroed; CPU_SET only
    // writes within it, for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if (cpu as usize) < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu as usize, &mut set);
        }
        set
    }
}

fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
    u32::try_from(unsafe { libc::sched_getcpu() }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Context switches of the calling thread so far, voluntary and not
    /// (getrusage(RUSAGE_THREAD)).
    fn switches() -> i64 {
        // SAFETY: rusage is plain integers, valid when zeroed; getrusage writes it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
        usage.ru_nvcsw + usage.ru_nivcsw
    }

    #[test]
    fn the_thread_runs_on_each_cpu_and_keeps_its_own_affinity() {
        let before = affinity().unwrap();
        let allowed: Vec<u32> = (0..libc::CPU_SETSIZE as u32)
            // SAFETY: CPU_ISSET only reads the set, for indices below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu as usize, &before) })
            .collect();
        let switched_before = switches();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let missed = switch_on_every_cpu(&allowed, deadline).unwrap();
        assert!(missed.is_empty(), "every CPU this thread may use was visited: missed {missed:?}");
        // Leaving a CPU is a switch of this thread; a move onto another CPU is one
        // at least (the kernel's migration thread takes it off).
        let switched = switches() - switched_before;
        assert!(switched >= allowed.len() as i64 - 1, "{switched} switches for {} CPUs", allowed.len());
        // SAFETY: CPU_EQUAL only reads both sets.
        assert!(unsafe { libc::CPU_EQUAL(&before, &affinity().unwrap()) }, "the affinity is given back");
    }

    #[test]
    fn cpus_outside_the_set_or_past_the_deadline_are_reported_not_visited() {
        let later = Instant::now() + std::time::Duration::from_secs(10);
        let missed = switch_on_every_cpu(&[libc::CPU_SETSIZE as u32 + 7], later).unwrap();
        assert_eq!(missed, vec![libc::CPU_SETSIZE as u32 + 7]);
        let missed = switch_on_every_cpu(&[0], Instant::now()).unwrap();
        assert_eq!(missed, vec![0], "a deadline already passed visits nothing");
    }
}
