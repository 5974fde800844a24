//! `/proc/PID/schedstat`: the scheduler's own counters of a process's main thread
//! (`proc_pid_schedstat` in fs/proc/base.c): time on a CPU, time spent runnable
//! but waiting in a run queue (`sched_info.run_delay`), and how many times it was
//! switched onto a CPU (`sched_info.pcount`).
//!
//! The kernel adds to the wait and the count only when the thread is switched in
//! (`sched_info_arrive` in kernel/sched/stats.h), so they cannot move while the
//! process gets no CPU time: a reader may skip processes whose CPU time did not
//! change and lose nothing.

use std::io::Read;
use std::path::Path;

/// One reading, in nanoseconds and switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    pub run_ns: u64,
    pub wait_ns: u64,
    /// Times switched onto a CPU.
    pub timeslices: u64,
}

/// Parses the file's one line, `run_ns wait_ns timeslices`.
pub fn parse_schedstat(text: &[u8]) -> Option<SchedStat> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let mut next = || fields.next()?.ok();
    Some(SchedStat { run_ns: next()?, wait_ns: next()?, timeslices: next()? })
}

/// Reads the file of `pid`; `None` when the process is gone or the file does not
/// parse. `buffer` is reused between calls.
pub fn read_schedstat(proc_root: &Path, pid: u32, buffer: &mut Vec<u8>) -> Option<SchedStat> {
    buffer.clear();
    let mut file = std::fs::File::open(proc_root.join(pid.to_string()).join("schedstat")).ok()?;
    file.read_to_end(buffer).ok()?;
    parse_schedstat(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_counters() {
        let stat = parse_schedstat(b"2384010293 18002110 412\n").unwrap();
        assert_eq!(stat, SchedStat { run_ns: 2_384_010_293, wait_ns: 18_002_110, timeslices: 412 });
    }

    #[test]
    fn short_or_garbled_files_are_none() {
        assert_eq!(parse_schedstat(b""), None);
        assert_eq!(parse_schedstat(b"1 2\n"), None);
        assert_eq!(parse_schedstat(b"1 x 3\n"), None);
    }

    /// This thread's CPU time from the kernel's thread clock.
    fn thread_cpu_ns() -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    #[test]
    fn this_thread_has_run_and_its_counters_only_grow() {
        let mut buffer = Vec::new();
        let root = Path::new("/proc");
        // The test runs on a thread of its own; /proc/TID names a thread too.
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        let first = read_schedstat(root, tid, &mut buffer).expect("own schedstat");
        // 20 ms of CPU time, however busy the host is.
        let until = thread_cpu_ns() + 20_000_000;
        while thread_cpu_ns() < until {}
        // Leaving the CPU brings the kernel's figures up to date.
        std::thread::yield_now();
        let second = read_schedstat(root, tid, &mut buffer).expect("own schedstat");
        assert!(first.timeslices > 0, "{first:?}");
        assert!(second.run_ns >= first.run_ns + 20_000_000, "{first:?} then {second:?}");
        assert!(second.wait_ns >= first.wait_ns && second.timeslices >= first.timeslices);
    }
}
