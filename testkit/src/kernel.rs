//! What the kernel itself says about a process and the machine, read from /proc
//! (proc(5)): the ground truth the agent's answers are held against and the
//! figures the benches measure with. Parsers take the file's text, so fixtures
//! test them.

use std::time::Duration;

/// CPU time fields of `/proc/PID/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTimes {
    /// utime + stime: the process's own threads, exited ones included.
    pub own: u64,
    /// cutime + cstime: the children it waited for.
    pub reaped_children: u64,
}

/// utime, stime, cutime and cstime (fields 14 to 17), counted after the command
/// name, which ends at the last `)` (a name may hold spaces and parentheses).
pub fn parse_stat_times(stat: &str) -> Option<StatTimes> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11).map(|f| f.parse::<u64>().ok());
    let mut next = || fields.next().flatten();
    let (utime, stime, cutime, cstime) = (next()?, next()?, next()?, next()?);
    Some(StatTimes { own: utime + stime, reaped_children: cutime + cstime })
}

/// The CPU time fields of process `pid`.
pub fn stat_times(pid: u32) -> std::io::Result<StatTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_times(&stat).ok_or_else(|| invalid(format!("/proc/{pid}/stat: {stat:?}")))
}

/// utime + stime of process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> std::io::Result<u64> {
    Ok(stat_times(pid)?.own)
}

/// utime + stime of process `pid` as a duration.
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    Ok(ticks_to_duration(cpu_ticks(pid)?))
}

/// The first field of `/proc/PID/schedstat`: nanoseconds on a CPU, from the
/// scheduler's clock rather than the tick.
pub fn parse_schedstat_run_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().next()?.parse().ok()
}

/// Nanoseconds the main thread of `pid` has run, from the scheduler.
pub fn on_cpu_ns(pid: u32) -> std::io::Result<u64> {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    parse_schedstat_run_ns(&schedstat).ok_or_else(|| invalid(format!("/proc/{pid}/schedstat: {schedstat:?}")))
}

/// Busy ticks of the whole machine on the aggregate `cpu` line of `/proc/stat`:
/// user, nice, system, irq and softirq (not idle, iowait, steal, nor guest time,
/// which user and nice already hold).
pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find_map(|line| line.strip_prefix("cpu "))?;
    let fields: Vec<u64> = line.split_ascii_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied();
    Some(field(0)? + field(1)? + field(2)? + field(5)? + field(6)?)
}

/// Busy ticks of the whole machine since boot.
pub fn busy_ticks() -> std::io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_busy_ticks(&stat).ok_or_else(|| invalid("/proc/stat has no aggregate cpu line".to_owned()))
}

/// Busy time of the whole machine since boot: `/proc/stat`'s busy ticks, or, with
/// `SOCKTOP_TEST_BUSY_CLOCK=schedstat`, the scheduler's own run time of every CPU
/// (`rq_cpu_time` in `/proc/schedstat`, ns). `cargo xtask vm-test` sets the latter
/// under an emulator (QEMU's TCG), whose guests lose timer ticks, so /proc/stat's
/// tick samples miss busy time there (docs/EBPF.md, "Kernels in VMs").
pub fn busy_time() -> std::io::Result<Duration> {
    if busy_clock_is_schedstat() {
        let schedstat = std::fs::read_to_string("/proc/schedstat")?;
        return parse_schedstat_busy_ns(&schedstat)
            .map(Duration::from_nanos)
            .ok_or_else(|| invalid("/proc/schedstat has no cpu lines".to_owned()));
    }
    Ok(ticks_to_duration(busy_ticks()?))
}

/// Where [`busy_time`] reads, for messages: `/proc/stat` or `/proc/schedstat`.
pub fn busy_clock() -> &'static str {
    if busy_clock_is_schedstat() { "/proc/schedstat" } else { "/proc/stat" }
}

fn busy_clock_is_schedstat() -> bool {
    std::env::var("SOCKTOP_TEST_BUSY_CLOCK").as_deref() == Ok("schedstat")
}

/// The sum over `cpuN` lines of `/proc/schedstat` of their seventh field,
/// `rq_cpu_time` (Documentation/scheduler/sched-stats.rst); None without cpu lines.
pub fn parse_schedstat_busy_ns(schedstat: &str) -> Option<u64> {
    let mut cpus = schedstat.lines().filter(|line| line.starts_with("cpu")).peekable();
    cpus.peek()?;
    cpus.map(|cpu| cpu.split_ascii_whitespace().nth(7)?.parse::<u64>().ok()).sum()
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `RssAnon:`...) in bytes.
pub fn parse_status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(field))?;
    let kib: u64 = line.split_ascii_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size (VmRSS) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_bytes(&status, "VmRSS:").ok_or_else(|| invalid(format!("no VmRSS in /proc/{pid}/status")))
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of /proc's CPU times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads the configuration value asked for.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Clock ticks as a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second()))
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command name with spaces and parentheses: the fields count from the last `)`.
    const STAT: &str = "4242 (a (b) c) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 37 12 5 20 0 1 0 1000 1000000 100";

    #[test]
    fn cpu_times_are_counted_after_the_last_parenthesis() {
        assert_eq!(parse_stat_times(STAT), Some(StatTimes { own: 287, reaped_children: 17 }));
        assert_eq!(parse_stat_times("4242 (cut sho"), None);
        assert_eq!(parse_stat_times("4242 (x) S 1 2 3"), None);
    }

    #[test]
    fn the_busy_time_of_every_cpu_is_its_rq_cpu_time() {
        let schedstat = "version 15\ntimestamp 4300000000\n\
cpu0 0 0 100 40 50 20 1500000000 300000 60\n\
domain0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
cpu1 0 0 90 30 40 10 2500000000 200000 50\n";
        assert_eq!(parse_schedstat_busy_ns(schedstat), Some(4_000_000_000));
        assert_eq!(parse_schedstat_busy_ns("version 15\n"), None);
        assert_eq!(parse_schedstat_busy_ns("cpu0 1 2\n"), None);
    }

    #[test]
    fn the_schedstat_run_time_is_its_first_field() {
        assert_eq!(parse_schedstat_run_ns("123456789 4567 89\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_run_ns(""), None);
    }

    #[test]
    fn busy_ticks_are_user_nice_system_irq_softirq() {
        let stat = "cpu  100 20 30 4000 50 6 7 8 9 10\ncpu0 50 10 15 2000 25 3 3 4 4 5\nintr 1\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 20 + 30 + 6 + 7));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3 4 5 6 7\n"), None);
    }

    #[test]
    fn status_sizes_are_read_in_bytes() {
        let status = "Name:\tx\nVmRSS:\t    1234 kB\nRssAnon:\t  1000 kB\n";
        assert_eq!(parse_status_bytes(status, "VmRSS:"), Some(1234 * 1024));
        assert_eq!(parse_status_bytes(status, "RssAnon:"), Some(1000 * 1024));
        assert_eq!(parse_status_bytes(status, "RssFile:"), None);
    }
}
