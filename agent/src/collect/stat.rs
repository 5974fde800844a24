//! Parser for `/proc/PID/stat` and `/proc/PID/task/TID/stat`, the one-line record of a
//! process's scheduler state and counters (proc(5), "/proc/pid/stat").
//!
//! The command name (field 2) is the only free-form field: it is whatever the process
//! set with `prctl(PR_SET_NAME)` or its executable's name, and may contain spaces and
//! parentheses. The kernel prints it as `(%s)` and every field after it is numeric, so
//! the name runs from the first `(` to the LAST `)` in the line.

use thiserror::Error;

/// The fields of a stat line that the agent uses. Field numbers are proc(5)'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// (1) pid: the process ID (for a task file, the thread ID).
    pub pid: u32,
    /// (2) comm: the command name, lossily decoded from bytes.
    pub comm: String,
    /// (3) state: one letter, see [`state_label`].
    pub state: u8,
    /// (4) ppid.
    pub ppid: u32,
    /// (14) utime, in clock ticks (`sysconf(_SC_CLK_TCK)`).
    pub utime: u64,
    /// (15) stime, in clock ticks.
    pub stime: u64,
    /// (20) num_threads.
    pub num_threads: u32,
    /// (22) starttime: clock ticks after boot at which the process started.
    pub starttime: u64,
    /// (23) vsize: virtual memory size in bytes.
    pub vsize: u64,
    /// (24) rss: resident set size in pages.
    pub rss_pages: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatError {
    #[error("stat is empty")]
    Empty,
    #[error("stat has no `(comm)` field")]
    NoComm,
    #[error("stat field {field} ({name}) is missing")]
    Missing { field: usize, name: &'static str },
    #[error("stat field {field} ({name}) is not a number: {value:?}")]
    NotNumber {
        field: usize,
        name: &'static str,
        value: String,
    },
}

/// Parses one stat line. Trailing fields the agent does not use may be absent or extra
/// (their number has grown with kernel versions), so only fields up to (24) are required.
pub fn parse_stat(bytes: &[u8]) -> Result<Stat, StatError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StatError::Empty);
    }
    let open = bytes
        .iter()
        .position(|&b| b == b'(')
        .ok_or(StatError::NoComm)?;
    let close = bytes
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(StatError::NoComm)?;
    if close < open {
        return Err(StatError::NoComm);
    }
    let pid = number(&bytes[..open], 1, "pid")?;
    let comm = String::from_utf8_lossy(&bytes[open + 1..close]).into_owned();
    let rest = Fields::new(&bytes[close + 1..]);
    let state = *rest.get(3, "state")?.first().ok_or(StatError::Missing {
        field: 3,
        name: "state",
    })?;
    Ok(Stat {
        pid: narrow(pid, 1, "pid")?,
        comm,
        state,
        ppid: narrow(rest.number(4, "ppid")?, 4, "ppid")?,
        utime: rest.number(14, "utime")?,
        stime: rest.number(15, "stime")?,
        num_threads: narrow(rest.number(20, "num_threads")?, 20, "num_threads")?,
        starttime: rest.number(22, "starttime")?,
        vsize: rest.number(23, "vsize")?,
        rss_pages: rest.signed_clamped(24, "rss")?,
    })
}

/// The words after the `)`, indexed by proc(5) field number (the first is field 3).
struct Fields<'a> {
    words: Vec<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Field (24) is the last one read; splitting stops there.
    fn new(after_comm: &'a [u8]) -> Self {
        let words = after_comm
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .take(24 - 2)
            .collect();
        Self { words }
    }

    fn get(&self, field: usize, name: &'static str) -> Result<&'a [u8], StatError> {
        self.words
            .get(field - 3)
            .copied()
            .ok_or(StatError::Missing { field, name })
    }

    fn number(&self, field: usize, name: &'static str) -> Result<u64, StatError> {
        number(self.get(field, name)?, field, name)
    }

    /// rss is printed as a signed long; a negative value (never seen in practice) is 0.
    fn signed_clamped(&self, field: usize, name: &'static str) -> Result<u64, StatError> {
        let word = self.get(field, name)?;
        match word.strip_prefix(b"-") {
            Some(magnitude) => number(magnitude, field, name).map(|_| 0),
            None => number(word, field, name),
        }
    }
}

fn number(word: &[u8], field: usize, name: &'static str) -> Result<u64, StatError> {
    let text = std::str::from_utf8(word).unwrap_or("").trim();
    text.parse().map_err(|_| StatError::NotNumber {
        field,
        name,
        value: String::from_utf8_lossy(word).into_owned(),
    })
}

fn narrow(value: u64, field: usize, name: &'static str) -> Result<u32, StatError> {
    u32::try_from(value).map_err(|_| StatError::NotNumber {
        field,
        name,
        value: value.to_string(),
    })
}

/// The label the socktop client shows for a state letter, as the original agent words
/// them. Letters from proc(5): some existed only in a range of kernel versions
/// (W "Waking" 2.6.33–3.13, K "Wakekill" 2.6.33–3.13, P "Parked" 3.9–3.13, I "Idle" 4.14+).
pub fn state_label(state: u8) -> &'static str {
    match state {
        b'R' => "Running",
        b'S' => "Sleeping",
        b'D' => "Disk Sleep",
        b'Z' => "Zombie",
        b'T' => "Stopped",
        b't' => "Tracing Stop",
        b'X' | b'x' => "Dead",
        b'K' => "Wakekill",
        b'W' => "Waking",
        b'P' => "Parked",
        b'I' => "Idle",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/proc/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    #[test]
    fn name_with_spaces_and_parentheses_ends_at_the_last_paren() {
        let stat = parse_stat(&fixture("stat_parens_spaces")).unwrap();
        assert_eq!(stat.pid, 18544);
        assert_eq!(stat.comm, "a b) (c");
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!((stat.utime, stat.stime), (0, 0));
        assert_eq!(stat.num_threads, 1);
        assert_eq!(stat.starttime, 46164);
        assert_eq!(stat.vsize, 2_990_080);
        assert_eq!(stat.rss_pages, 424);
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes_by_the_kernel() {
        let stat = parse_stat(&fixture("stat_truncated_name")).unwrap();
        assert_eq!(stat.comm, "a_twenty_char_n");
        assert_eq!(stat.comm.len(), 15);
        assert_eq!(stat.starttime, 46755);
    }

    #[test]
    fn kernel_worker_names_can_be_longer_than_fifteen() {
        let stat = parse_stat(&fixture("stat_kworker_long")).unwrap();
        assert_eq!(stat.comm, "kworker/u8:3-kvfree_rcu_reclaim");
        assert_eq!(state_label(stat.state), "Idle");
        assert_eq!(
            (stat.ppid, stat.stime, stat.vsize, stat.rss_pages),
            (2, 8, 0, 0)
        );
    }

    #[test]
    fn zombie_has_no_memory() {
        let stat = parse_stat(&fixture("stat_zombie")).unwrap();
        assert_eq!(state_label(stat.state), "Zombie");
        assert_eq!(
            (stat.pid, stat.ppid, stat.vsize, stat.rss_pages),
            (18814, 18812, 0, 0)
        );
    }

    #[test]
    fn nested_parentheses_and_a_closing_paren_at_the_end_of_the_name() {
        let line = b"77 ((x) (y))) R 5 0 0 0 -1 0 0 0 0 0 700 800 0 0 20 0 3 0 99 4096 -1\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "(x) (y))");
        assert_eq!((stat.utime, stat.stime, stat.num_threads), (700, 800, 3));
        assert_eq!(stat.rss_pages, 0, "a negative rss clamps to 0");
    }

    #[test]
    fn non_utf8_names_are_decoded_lossily() {
        let line = b"9 (a\xffb) S 1 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(line).unwrap().comm, "a\u{fffd}b");
    }

    #[test]
    fn empty_and_truncated_files_are_errors_not_panics() {
        assert_eq!(parse_stat(b""), Err(StatError::Empty));
        assert_eq!(parse_stat(b"\n"), Err(StatError::Empty));
        assert_eq!(parse_stat(b"12 no parens S 1"), Err(StatError::NoComm));
        assert_eq!(parse_stat(b"12 )x( S"), Err(StatError::NoComm));
        assert_eq!(
            parse_stat(b"12 (x) S 1 0 0 0 -1 0 0 0 0 0 5"),
            Err(StatError::Missing {
                field: 15,
                name: "stime"
            })
        );
        assert_eq!(
            parse_stat(b"12 (x)"),
            Err(StatError::Missing {
                field: 3,
                name: "state"
            })
        );
        assert!(matches!(
            parse_stat(b"x (x) S 1"),
            Err(StatError::NotNumber { field: 1, .. })
        ));
    }

    #[test]
    fn every_state_letter_has_a_label() {
        let letters = b"RSDZTtXxKWPI";
        let labels: Vec<_> = letters.iter().map(|&l| state_label(l)).collect();
        assert!(labels.iter().all(|l| *l != "Unknown"), "{labels:?}");
        assert_eq!(state_label(b'?'), "Unknown");
    }
}
