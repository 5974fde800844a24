//! Host access, the bottom room: the files of `/proc` (kept open and re-read in
//! place, listed by getdents64), the parser of `/proc/PID/stat`, the host's
//! clock and units, the agent's own heap and open-files limit, and a way to make
//! every CPU switch tasks at once. The syscalls the agent makes itself go
//! through rustix where it has them. The CPU-time sources and the collectors above both build on it;
//! it imports no other room of the agent.

pub mod clock;
pub mod every_cpu;
pub mod heap;
pub mod limits;
pub mod procfs;
pub mod schedstat;
pub mod stat;

use std::io::{self, Read};
use std::path::Path;

use clock::{ClockError, HostClock};

/// Facts about the host the collectors need, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub cpus: usize,
    pub clock: HostClock,
}

impl HostFacts {
    pub fn read(proc_root: &Path) -> Result<Self, ClockError> {
        // Online CPUs of the host, not this process's affinity mask: CPU shares are
        // of the whole machine even when the agent is pinned to one CPU.
        // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = usize::try_from(online).unwrap_or(1).max(1);
        Ok(Self { cpus, clock: HostClock::from_proc(proc_root)? })
    }
}

/// Reads at most `cap` bytes of a file, so a huge file (a long command line, a
/// wrong root) cannot make a huge read.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(cap).read_to_end(&mut out)?;
    Ok(out)
}

/// The most a sysfs attribute holds: its show() fills one page
/// (Documentation/filesystems/sysfs.rst).
const SYSFS_ATTRIBUTE_BYTES: u64 = 4096;

/// A sysfs attribute as text, read no further than a real one can be; bytes
/// that are not UTF-8 are replaced.
pub fn read_sysfs_attribute(path: &Path) -> io::Result<String> {
    let bytes = read_capped(path, SYSFS_ATTRIBUTE_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
