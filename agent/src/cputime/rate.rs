//! The one rule that turns two readings of a process's cumulative CPU time into
//! its share of the machine: the processes list and the per-process detail both
//! use it, so they agree.
//!
//! A reading names its process by pid and start time (ns since boot). The eBPF
//! iterator gives the start time to the nanosecond, `/proc/PID/stat` in clock
//! ticks (converted to ns, so truncated to a tick): two readings of one process by
//! the two paths differ by less than a tick, and the rule treats them as the same
//! process. Two processes with one pid would have to start within one tick of each
//! other, which pid reuse (the whole pid space in between) rules out.

use std::time::{Duration, Instant};

use super::cpu_percent;

/// One process's cumulative CPU time, read at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuReading {
    /// When the process started, in ns since boot.
    pub start_time_ns: u64,
    /// Cumulative on-CPU ns as the CPU-time source counts them.
    pub cpu_ns: u64,
    /// When the reading was taken.
    pub at: Instant,
}

/// Computes CPU shares on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRule {
    cpus: usize,
    /// Start times closer than this name the same process: one clock tick.
    start_resolution_ns: u64,
}

impl RateRule {
    /// A rule for a host with `cpus` logical CPUs whose /proc counts
    /// `ticks_per_second` clock ticks.
    pub fn new(cpus: usize, ticks_per_second: u64) -> Self {
        Self { cpus: cpus.max(1), start_resolution_ns: 1_000_000_000 / ticks_per_second.max(1) }
    }

    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Whether two start times (ns since boot) of one pid name the same process.
    pub fn is_same_process(&self, start_a_ns: u64, start_b_ns: u64) -> bool {
        start_a_ns.abs_diff(start_b_ns) < self.start_resolution_ns
    }

    /// The share of the whole machine, in percent (0..=100), that the process used
    /// between `before` and `now`; None when the two readings are of different
    /// processes (the pid was reused) or `now` is not later.
    pub fn share(&self, before: &CpuReading, now: &CpuReading) -> Option<f32> {
        if !self.is_same_process(before.start_time_ns, now.start_time_ns) {
            return None;
        }
        let wall = now.at.checked_duration_since(before.at).filter(|wall| *wall > Duration::ZERO)?;
        Some(cpu_percent(now.cpu_ns.saturating_sub(before.cpu_ns), wall, self.cpus))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(start_time_ns: u64, cpu_ns: u64, at: Instant) -> CpuReading {
        CpuReading { start_time_ns, cpu_ns, at }
    }

    #[test]
    fn one_busy_cpu_of_two_over_a_second_is_half_the_machine() {
        let rule = RateRule::new(2, 100);
        let start = Instant::now();
        let share = rule.share(&reading(5, 0, start), &reading(5, 1_000_000_000, start + Duration::from_secs(1)));
        assert_eq!(share, Some(50.0));
    }

    #[test]
    fn a_start_time_read_from_proc_matches_the_same_process_read_exactly() {
        // The iterator's 1.234567891 s and /proc's 123 ticks of 10 ms are one process;
        // starts more than a tick apart are two.
        let rule = RateRule::new(2, 100);
        assert!(rule.is_same_process(1_234_567_891, 123 * 10_000_000));
        assert!(rule.is_same_process(123 * 10_000_000, 1_234_567_891));
        assert!(!rule.is_same_process(1_234_567_891, 125 * 10_000_000));
        assert!(!rule.is_same_process(1_234_567_891, 122 * 10_000_000));
    }

    #[test]
    fn a_reused_pid_or_a_reading_not_later_has_no_share() {
        let rule = RateRule::new(2, 100);
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        assert_eq!(rule.share(&reading(5, 0, start), &reading(900_000_000, 10, later)), None);
        assert_eq!(rule.share(&reading(5, 0, later), &reading(5, 10, start)), None);
        assert_eq!(rule.share(&reading(5, 0, start), &reading(5, 10, start)), None);
    }
}
