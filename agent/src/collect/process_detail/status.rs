//! Parsers for the small text files of /proc/PID that the detail needs besides stat:
//! `status`, `statm`, `io` and `cmdline` (layouts in proc(5)).

/// The fields of /proc/PID/status the detail uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Thread group ID: equals the pid for a process, differs for a thread's own ID.
    pub tgid: Option<u32>,
    /// Real user ID, the first of the four `Uid:` values (real, effective, saved, fs).
    pub uid: Option<u32>,
    /// Real group ID, the first `Gid:` value.
    pub gid: Option<u32>,
    /// `RssFile` + `RssShmem` in bytes (Linux 4.5+); absent for kernel threads and zombies.
    pub shared_bytes: Option<u64>,
}

pub fn parse_status(text: &str) -> ProcStatus {
    let mut status = ProcStatus::default();
    let (mut rss_file, mut rss_shmem) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Tgid" => status.tgid = first_number(value),
            "Uid" => status.uid = first_number(value),
            "Gid" => status.gid = first_number(value),
            "RssFile" => rss_file = kib(value),
            "RssShmem" => rss_shmem = kib(value),
            _ => {}
        }
    }
    status.shared_bytes = rss_file.zip(rss_shmem).map(|(file, shmem)| file.saturating_add(shmem));
    status
}

fn first_number<T: std::str::FromStr>(value: &str) -> Option<T> {
    value.split_whitespace().next()?.parse().ok()
}

/// Memory lines read `   1696 kB`; the kernel's "kB" is KiB.
fn kib(value: &str) -> Option<u64> {
    first_number::<u64>(value).map(|k| k.saturating_mul(1024))
}

/// The third value of /proc/PID/statm: resident shared pages (file-backed + shmem), the
/// fallback for kernels without RssFile in status.
pub fn parse_statm_shared_pages(text: &str) -> Option<u64> {
    text.split_whitespace().nth(2)?.parse().ok()
}

/// `read_bytes` and `write_bytes` of /proc/PID/io: bytes the process caused to be
/// fetched from or sent to the storage layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoBytes {
    pub read: u64,
    pub write: u64,
}

pub fn parse_io(text: &str) -> Option<IoBytes> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(IoBytes { read: field("read_bytes")?, write: field("write_bytes")? })
}

/// /proc/PID/cmdline holds the arguments, each ending in NUL. Processes that rewrite
/// their argv (setproctitle) may leave one long string, or trailing NULs; empty words
/// from those are dropped. Empty for kernel threads and zombies, which are shown as
/// `[name]` as ps(1) does.
pub fn command_line(cmdline: &[u8], name: &str) -> String {
    let words: Vec<_> =
        cmdline.split(|&b| b == 0).filter(|word| !word.is_empty()).map(String::from_utf8_lossy).collect();
    if words.is_empty() { format!("[{name}]") } else { words.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/proc/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn user_process_status() {
        let status = parse_status(&fixture("status_user"));
        assert_eq!(status.tgid, Some(18544));
        assert_eq!((status.uid, status.gid), (Some(0), Some(0)));
        assert_eq!(status.shared_bytes, Some(1696 * 1024), "RssFile 1696 kB + RssShmem 0 kB");
    }

    #[test]
    fn kernel_threads_and_zombies_have_no_rss_lines() {
        for name in ["status_kthread", "status_zombie"] {
            let status = parse_status(&fixture(name));
            assert_eq!(status.shared_bytes, None, "{name}");
            assert_eq!(status.uid, Some(0), "{name}");
        }
        assert_eq!(parse_status(&fixture("status_zombie")).tgid, Some(18814));
    }

    #[test]
    fn real_ids_are_the_first_of_four() {
        let text = "Name:\tpasswd\nTgid:\t4242\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n\
                    RssFile:\t  12 kB\nRssShmem:\t   3 kB\n";
        let status = parse_status(text);
        assert_eq!((status.tgid, status.uid, status.gid), (Some(4242), Some(1000), Some(1000)));
        assert_eq!(status.shared_bytes, Some(15 * 1024));
    }

    #[test]
    fn garbage_status_yields_nothing() {
        assert_eq!(parse_status(""), ProcStatus::default());
        assert_eq!(parse_status("Uid:\tmany\nRssFile: x kB\nTgid"), ProcStatus::default());
    }

    #[test]
    fn statm_shared_is_the_third_value() {
        assert_eq!(parse_statm_shared_pages(&fixture("statm")), Some(424));
        assert_eq!(parse_statm_shared_pages("0 0 0 0 0 0 0\n"), Some(0));
        assert_eq!(parse_statm_shared_pages("1 2"), None);
    }

    #[test]
    fn io_counters() {
        assert_eq!(parse_io(&fixture("io")), Some(IoBytes { read: 0, write: 0 }));
        let text = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\n\
                    cancelled_write_bytes: 4096\n";
        assert_eq!(parse_io(text), Some(IoBytes { read: 4096, write: 8192 }));
        assert_eq!(parse_io("rchar: 10\n"), None);
    }

    #[test]
    fn command_lines() {
        assert_eq!(command_line(b"sleep\x0030\x00", "sleep"), "sleep 30");
        assert_eq!(command_line(b"nginx: worker process\x00\x00\x00", "nginx"), "nginx: worker process");
        assert_eq!(command_line(b"", "kthreadd"), "[kthreadd]");
        assert_eq!(command_line(b"a\x00\x00b\x00", "a"), "a b");
        assert_eq!(command_line(b"caf\xe9\x00", "caf"), "caf\u{fffd}");
    }
}
