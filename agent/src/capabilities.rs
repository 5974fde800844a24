//! Least privilege after start-up. Once the eBPF programs are loaded, the TLS files
//! made and the socket bound, the agent keeps only the capabilities its requests
//! still use and gives up the others, so that a compromised agent can load no new
//! eBPF program and use none of root's other powers, and the programs it starts
//! (journalctl) gain nothing.
//!
//! Capabilities belong to threads: this runs on the main thread before the async
//! runtime starts the others, which inherit the reduced sets.

use std::fmt::Write as _;

use caps::{CapSet, Capability, CapsHashSet};
use socktop_agent::cputime::CpuSourceKind;

/// A capability the running agent may still use, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
}

/// A kernel release, major and minor (`6.18.44-foo` is `(6, 18)`).
pub type KernelVersion = (u32, u32);

/// The capabilities serving requests can still use. What start-up alone needed
/// (loading programs and creating maps, binding a low port, writing the TLS
/// files anywhere) is not among them.
pub fn run_time_needs(cpu_source: CpuSourceKind, kernel: Option<KernelVersion>) -> Vec<Need> {
    let mut needs = Vec::new();
    if cpu_source == CpuSourceKind::Ebpf {
        needs.push(Need { cap: Capability::CAP_PERFMON, why: "resync perf events, attached when a client connects" });
        // Linux 6.5 moved the unprivileged-BPF check out of bpf(2) itself into
        // the commands that load programs and create maps; before it, every call
        // (map reads, iterator links) needs CAP_BPF while unprivileged BPF is off.
        if kernel.is_none_or(|version| version < (6, 5)) {
            needs.push(Need { cap: Capability::CAP_BPF, why: "map reads and iterator links before Linux 6.5" });
        }
        // Before 5.8 neither of the two existed and tracing needed CAP_SYS_ADMIN.
        if kernel.is_none_or(|version| version < (5, 8)) {
            needs.push(Need { cap: Capability::CAP_SYS_ADMIN, why: "tracing before Linux 5.8" });
        }
    }
    needs.push(Need {
        cap: Capability::CAP_DAC_READ_SEARCH,
        why: "other users' /proc/PID/fd and io in process details, and their journal",
    });
    needs.push(Need {
        cap: Capability::CAP_SYS_PTRACE,
        why: "other users' /proc/PID/exe, cwd and io in process details",
    });
    needs
}

/// The capability programs started by the agent may inherit: journalctl reads other
/// users' journal files with it.
const INHERITED: Capability = Capability::CAP_DAC_READ_SEARCH;

/// What [`keep_only`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub kept: Vec<Need>,
    pub dropped: Vec<Capability>,
}

impl Outcome {
    /// One log line: what is kept and why, what was dropped.
    pub fn describe(&self) -> String {
        let mut line = String::from("capabilities after start-up: ");
        if self.kept.is_empty() {
            line.push_str("none kept");
        } else {
            let kept: Vec<String> = self.kept.iter().map(|need| format!("{} ({})", need.cap, need.why)).collect();
            let _ = write!(line, "kept {}", kept.join(", "));
        }
        let mut dropped: Vec<String> = self.dropped.iter().map(ToString::to_string).collect();
        dropped.sort();
        let _ = write!(line, "; dropped {}", if dropped.is_empty() { "none".to_owned() } else { dropped.join(", ") });
        line
    }
}

/// Reduces this thread's capabilities to those of `needs` it holds: permitted,
/// effective, the bounding set (when it may), inheritable and ambient (only
/// [`INHERITED`]); and sets no_new_privs so no program it starts gains more.
/// Returns None when it held no capability.
pub fn keep_only(needs: &[Need]) -> Result<Option<Outcome>, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    set_no_new_privs();
    if permitted.is_empty() {
        return Ok(None);
    }
    let kept: Vec<Need> = needs.iter().copied().filter(|need| permitted.contains(&need.cap)).collect();
    let keep: CapsHashSet = kept.iter().map(|need| need.cap).collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)?.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    let inherited: CapsHashSet = keep.iter().copied().filter(|cap| *cap == INHERITED).collect();
    caps::set(None, CapSet::Inheritable, &inherited)?;
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::set(None, CapSet::Ambient, &inherited)?;
    }
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    let dropped = permitted.difference(&keep).copied().collect();
    Ok(Some(Outcome { kept, dropped }))
}

fn set_no_new_privs() {
    if let Err(error) = rustix::thread::set_no_new_privs(true) {
        tracing::debug!("setting no_new_privs: {}", std::io::Error::from(error));
    }
}

/// The running kernel's release, from `/proc/sys/kernel/osrelease`.
pub fn kernel_version() -> Option<KernelVersion> {
    parse_kernel_version(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_kernel_version(release: &str) -> Option<KernelVersion> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(needs: &[Need]) -> Vec<Capability> {
        needs.iter().map(|need| need.cap).collect()
    }

    #[test]
    fn kernel_releases_parse_to_major_and_minor() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_kernel_version("6.5-rc1"), Some((6, 5)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn the_ebpf_source_keeps_only_perfmon_from_linux_6_5() {
        let needs = caps_of(&run_time_needs(CpuSourceKind::Ebpf, Some((6, 18))));
        assert!(needs.contains(&Capability::CAP_PERFMON));
        assert!(!needs.contains(&Capability::CAP_BPF) && !needs.contains(&Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn older_or_unknown_kernels_keep_cap_bpf() {
        for kernel in [Some((6, 4)), Some((5, 15)), None] {
            let needs = caps_of(&run_time_needs(CpuSourceKind::Ebpf, kernel));
            assert!(needs.contains(&Capability::CAP_BPF), "{kernel:?}");
        }
        let needs = caps_of(&run_time_needs(CpuSourceKind::Ebpf, Some((5, 4))));
        assert!(needs.contains(&Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn the_proc_source_needs_no_tracing_capability() {
        let needs = caps_of(&run_time_needs(CpuSourceKind::Proc, Some((6, 18))));
        assert_eq!(needs, [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE]);
    }

    #[test]
    fn the_log_line_names_what_was_kept_and_dropped() {
        let outcome = Outcome {
            kept: vec![Need { cap: Capability::CAP_PERFMON, why: "resync" }],
            dropped: vec![Capability::CAP_SYS_ADMIN, Capability::CAP_BPF],
        };
        assert_eq!(
            outcome.describe(),
            "capabilities after start-up: kept CAP_PERFMON (resync); dropped CAP_BPF, CAP_SYS_ADMIN"
        );
        assert_eq!(Outcome::default().describe(), "capabilities after start-up: none kept; dropped none");
    }
}
