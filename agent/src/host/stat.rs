//! A zero-copy parser of `/proc/PID/stat` (proc(5)), the hot path of the
//! processes list: it runs once per process per request, so it borrows the name
//! from the buffer and parses only the fields the agent uses.

/// The fields of `/proc/PID/stat` the agent uses. Times are in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat<'a> {
    pub pid: u32,
    /// The command name (`comm`), at most 15 bytes, not necessarily UTF-8.
    pub comm: &'a [u8],
    /// R, S, D, Z, T, t, X, I ...
    pub state: u8,
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u32,
    /// Ticks after boot at which the process started; with the pid, it names a
    /// process uniquely even when the pid is reused.
    pub start_time: u64,
    pub vsize: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl Stat<'_> {
    /// The command name as text (see [`comm_name`]).
    pub fn name(&self) -> String {
        comm_name(self.comm)
    }
}

/// A command name as text; names are bytes to the kernel, so invalid UTF-8 is
/// replaced rather than rejected.
pub fn comm_name(comm: &[u8]) -> String {
    String::from_utf8_lossy(comm).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatError {
    #[error("no command name in parentheses")]
    NoCommand,
    #[error("field {0} is missing or not a number")]
    Field(usize),
}

/// Parses the content of `/proc/PID/stat`.
///
/// The command name may itself hold spaces and parentheses (`(a) (b)`), so it runs
/// from the first `(` to the LAST `)`; the numeric fields follow.
pub fn parse_stat(bytes: &[u8]) -> Result<Stat<'_>, StatError> {
    let open = bytes.iter().position(|&b| b == b'(').ok_or(StatError::NoCommand)?;
    let close = bytes.iter().rposition(|&b| b == b')').filter(|&c| c > open).ok_or(StatError::NoCommand)?;
    let pid = parse_number(bytes[..open].trim_ascii()).ok_or(StatError::Field(1))?;
    let comm = &bytes[open + 1..close];
    let mut fields = bytes[close + 1..].split(|&b| b == b' ').filter(|f| !f.is_empty());
    // Field numbers below are proc(5)'s, 1-based; `fields` starts at field 3.
    let state = fields.next().and_then(|f| f.first().copied()).ok_or(StatError::Field(3))?;
    let mut cursor = Cursor { fields, at: 4 };
    let ppid = cursor.take_at(4)?;
    let utime = cursor.take_at(14)?;
    let stime = cursor.take_at(15)?;
    let num_threads = cursor.take_at(20)?;
    let start_time = cursor.take_at(22)?;
    let vsize = cursor.take_at(23)?;
    let rss_pages = cursor.take_at(24)?;
    Ok(Stat {
        pid: pid as u32,
        comm,
        state,
        ppid: ppid as u32,
        utime,
        stime,
        num_threads: num_threads as u32,
        start_time,
        vsize,
        rss_pages,
    })
}

/// Walks the numeric fields forward, skipping the ones not asked for.
struct Cursor<I> {
    fields: I,
    at: usize,
}

impl<'a, I: Iterator<Item = &'a [u8]>> Cursor<I> {
    fn take_at(&mut self, field: usize) -> Result<u64, StatError> {
        let skip = field - self.at;
        self.at = field + 1;
        self.fields.nth(skip).and_then(parse_number).ok_or(StatError::Field(field))
    }
}

/// Parses an unsigned decimal; the rss field can be negative on some kernels for
/// kernel threads, which reads as 0.
fn parse_number(field: &[u8]) -> Option<u64> {
    let field = field.trim_ascii_end();
    if field.first() == Some(&b'-') {
        return field[1..].iter().all(u8::is_ascii_digit).then_some(0);
    }
    if field.is_empty() || field.len() > 20 {
        return None;
    }
    field.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The human-readable name of a state letter, as `ps` and the client show it.
pub fn state_name(state: u8) -> &'static str {
    match state {
        b'R' => "Running",
        b'S' => "Sleeping",
        b'D' => "Disk Sleep",
        b'Z' => "Zombie",
        b'T' => "Stopped",
        b't' => "Tracing Stop",
        b'X' | b'x' => "Dead",
        b'I' => "Idle",
        b'K' => "Wakekill",
        b'W' => "Waking",
        b'P' => "Parked",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/proc/stat_{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    #[test]
    fn parses_a_real_capture() {
        let bytes = fixture("bash");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!(stat.pid, 1234);
        assert_eq!(stat.comm, b"bash");
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.ppid, 1200);
        assert_eq!((stat.utime, stat.stime), (1523, 402));
        assert_eq!(stat.num_threads, 1);
        assert_eq!(stat.start_time, 88_776);
        assert_eq!(stat.vsize, 9_080_832);
        assert_eq!(stat.rss_pages, 1326);
    }

    #[test]
    fn names_with_spaces_and_parentheses_end_at_the_last_paren() {
        let bytes = fixture("tricky_name");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!(stat.comm, b"a) (b c) :(x");
        assert_eq!(stat.state, b'R');
        assert_eq!((stat.utime, stat.stime), (50, 7));
    }

    #[test]
    fn fifteen_byte_names_and_kernel_threads() {
        let line = b"77 (kworker/u16:3-) I 2 0 0 0 -1 69238880 0 0 0 0 0 12 0 0 20 0 1 0 305 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, b"kworker/u16:3-");
        assert_eq!(stat.state, b'I');
        assert_eq!(stat.rss_pages, 0);
    }

    #[test]
    fn real_capture_of_a_name_with_spaces_and_parentheses() {
        let bytes = fixture("parens_spaces");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!((stat.pid, stat.comm), (18544, &b"a b) (c"[..]));
        assert_eq!((stat.state, stat.ppid, stat.num_threads), (b'S', 1, 1));
        assert_eq!((stat.start_time, stat.vsize, stat.rss_pages), (46164, 2_990_080, 424));
    }

    #[test]
    fn real_capture_of_a_name_cut_to_fifteen_bytes() {
        let bytes = fixture("truncated_name");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!(stat.comm, b"a_twenty_char_n");
        assert_eq!(stat.start_time, 46755);
    }

    #[test]
    fn real_capture_of_a_kernel_worker_longer_than_fifteen_bytes() {
        let bytes = fixture("kworker_long");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!(stat.comm, b"kworker/u8:3-kvfree_rcu_reclaim");
        assert_eq!(state_name(stat.state), "Idle");
        assert_eq!((stat.ppid, stat.stime, stat.vsize, stat.rss_pages), (2, 8, 0, 0));
    }

    #[test]
    fn real_capture_of_a_zombie() {
        let bytes = fixture("zombie");
        let stat = parse_stat(&bytes).unwrap();
        assert_eq!(state_name(stat.state), "Zombie");
        assert_eq!((stat.pid, stat.ppid, stat.vsize, stat.rss_pages), (18814, 18812, 0, 0));
    }

    #[test]
    fn nested_parentheses_and_a_paren_closing_the_name() {
        let stat = parse_stat(b"77 ((x) (y))) R 5 0 0 0 -1 0 0 0 0 0 700 800 0 0 20 0 3 0 99 4096 -1\n").unwrap();
        assert_eq!(stat.comm, b"(x) (y))");
        assert_eq!((stat.utime, stat.stime, stat.num_threads, stat.rss_pages), (700, 800, 3, 0));
    }

    #[test]
    fn non_utf8_names_are_decoded_lossily() {
        let stat = parse_stat(b"9 (a\xffb) S 1 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 0").unwrap();
        assert_eq!(stat.name(), "a\u{fffd}b");
    }

    #[test]
    fn truncated_and_empty_files_are_errors_not_panics() {
        assert_eq!(parse_stat(b""), Err(StatError::NoCommand));
        assert_eq!(parse_stat(b"12 (x"), Err(StatError::NoCommand));
        assert_eq!(parse_stat(b"12 (x) S 1 2"), Err(StatError::Field(14)));
        assert_eq!(parse_stat(b"zz (x) S 1"), Err(StatError::Field(1)));
        assert_eq!(parse_stat(b"12 (x)"), Err(StatError::Field(3)));
    }

    #[test]
    fn numbers_overflowing_u64_are_rejected() {
        assert_eq!(parse_number(b"99999999999999999999"), None);
        assert_eq!(parse_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_number(b"-5"), Some(0));
        assert_eq!(parse_number(b"1x"), None);
    }

    #[test]
    fn state_letters_have_names() {
        assert_eq!(state_name(b'S'), "Sleeping");
        assert_eq!(state_name(b'?'), "Unknown");
    }
}
