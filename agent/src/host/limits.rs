//! The agent's own limit on open files: every client holds a socket and the
//! processes scan keeps stat files open, so the soft limit (often 1024) is
//! raised to the hard one at start.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft limit on open files to the hard one; returns the soft limit
/// now in force (`u64::MAX` for no limit).
pub fn raise_open_files_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    // None is RLIM_INFINITY, above every number.
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    if soft < hard {
        match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
            Ok(()) => return hard,
            Err(error) => {
                tracing::debug!(error = %std::io::Error::from(error), "raising the open-files limit failed");
            }
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_and_reported() {
        let raised = raise_open_files_limit();
        // Read back from the kernel, in the units of /proc/self/limits.
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |text: &str| if text == "unlimited" { u64::MAX } else { text.parse().unwrap() };
        let (soft, hard) = (number(fields[3]), number(fields[4]));
        assert_eq!(soft, hard, "{line}");
        assert_eq!(raised, soft);
    }
}
