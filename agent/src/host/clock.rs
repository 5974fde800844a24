//! The host constants needed to turn /proc counters into units: clock ticks per second
//! and page size (sysconf(3) `_SC_CLK_TCK`, `_SC_PAGESIZE`) and the boot time
//! (`btime` in /proc/stat, proc(5)). Read once at start-up.

use std::path::Path;

use rustix::time::ClockId;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClockError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("/proc/stat has no valid `btime` line")]
    NoBootTime,
}

/// Units of the host, so that collectors can convert ticks and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostClock {
    ticks_per_second: u64,
    boot_time_unix: u64,
    page_size: u64,
}

impl HostClock {
    /// Builds a clock from known values (tests, or a caller that read them already).
    /// Zero ticks or page size would divide by zero later, so they become 1.
    pub const fn new(ticks_per_second: u64, boot_time_unix: u64, page_size: u64) -> Self {
        Self { ticks_per_second: at_least_one(ticks_per_second), boot_time_unix, page_size: at_least_one(page_size) }
    }

    /// Reads sysconf for this kernel and `btime` from `<proc_root>/stat`.
    pub fn from_proc(proc_root: &Path) -> Result<Self, ClockError> {
        let path = proc_root.join("stat");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ClockError::Read { path: path.display().to_string(), source })?;
        let boot = parse_btime(&text).ok_or(ClockError::NoBootTime)?;
        Ok(Self::new(ticks_per_second(), boot, procfs::page_size()))
    }

    pub fn ticks_per_second(&self) -> u64 {
        self.ticks_per_second
    }

    /// Unix seconds at which the host booted.
    pub fn boot_time_unix(&self) -> u64 {
        self.boot_time_unix
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Clock ticks to nanoseconds, the unit of start times since boot.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000_000 / self.ticks_per_second)
    }

    /// Clock ticks to microseconds, the unit of the protocol's CPU times.
    pub fn ticks_to_micros(&self, ticks: u64) -> u64 {
        let micros = u128::from(ticks) * 1_000_000 / u128::from(self.ticks_per_second);
        u64::try_from(micros).unwrap_or(u64::MAX)
    }

    /// A `starttime` (ticks after boot) to Unix seconds.
    pub fn start_to_unix(&self, start_ticks: u64) -> u64 {
        self.boot_time_unix.saturating_add(start_ticks / self.ticks_per_second)
    }

    pub fn pages_to_bytes(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.page_size)
    }
}

const fn at_least_one(n: u64) -> u64 {
    if n == 0 { 1 } else { n }
}

/// The `btime SECONDS` line of /proc/stat: boot time in seconds since the epoch.
pub fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse().ok())
}

/// Wall-clock time since the Unix epoch, for the `sampled_at_ms` and `cached_at`
/// stamps of answers (zero if the clock is set before 1970).
pub fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Clock ticks per second of this kernel's /proc counters (`_SC_CLK_TCK`, USER_HZ).
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` and of
/// `task_struct.start_time`.
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::Monotonic)
}

/// CLOCK_BOOTTIME in ns: the clock of the start time in `/proc/PID/stat`.
pub fn boottime_ns() -> u64 {
    clock_ns(ClockId::Boottime)
}

fn clock_ns(clock: ClockId) -> u64 {
    let ts = rustix::time::clock_gettime(clock);
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  3357 0 4313 1362393 0 0 0 0 0 0\n\
        cpu0 1700 0 2100 681000 0 0 0 0 0 0\n\
        intr 114930548 113199788 3 0 5 263\n\
        ctxt 1990473\n\
        btime 1795606237\n\
        processes 2915\n\
        procs_running 1\n";

    #[test]
    fn boot_time_comes_from_the_btime_line() {
        assert_eq!(parse_btime(PROC_STAT), Some(1_795_606_237));
        assert_eq!(parse_btime("cpu 1 2 3\n"), None);
        assert_eq!(parse_btime("btime soon\n"), None);
    }

    #[test]
    fn conversions_use_the_host_units() {
        let clock = HostClock::new(100, 1_000, 4096);
        assert_eq!(clock.ticks_to_micros(250), 2_500_000);
        assert_eq!(clock.start_to_unix(46_164), 1_461);
        assert_eq!(clock.pages_to_bytes(424), 1_736_704);
        assert_eq!(HostClock::new(250, 0, 4096).ticks_to_micros(1), 4_000);
        assert_eq!(HostClock::new(0, 0, 0).ticks_to_micros(3), 3_000_000);
    }

    #[test]
    fn from_proc_reads_a_fake_tree_and_fails_cleanly_without_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(HostClock::from_proc(dir.path()), Err(ClockError::Read { .. })));
        std::fs::write(dir.path().join("stat"), "cpu 1 2\n").unwrap();
        assert!(matches!(HostClock::from_proc(dir.path()), Err(ClockError::NoBootTime)));
        std::fs::write(dir.path().join("stat"), PROC_STAT).unwrap();
        assert_eq!(HostClock::from_proc(dir.path()).unwrap().boot_time_unix(), 1_795_606_237);
    }

    #[test]
    fn the_real_host_matches_the_kernels_figures() {
        let clock = HostClock::from_proc(Path::new("/proc")).unwrap();
        // The kernel's own figures, from the auxiliary vector it hands each process.
        assert_eq!(clock.ticks_per_second(), rustix::param::clock_ticks_per_second());
        assert_eq!(clock.page_size(), rustix::param::page_size() as u64);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(clock.boot_time_unix() > 0 && clock.boot_time_unix() <= now);
    }
}
