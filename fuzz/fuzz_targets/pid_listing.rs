//! How the processes scan lists pids: getdents64 records of `/proc`, and the
//! last pid of `/proc/loadavg`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::host::procfs;

fuzz_target!(|data: &[u8]| {
    let mut pids = Vec::new();
    procfs::parse_dirent_pids(data, &mut pids);
    // A record is at least 20 bytes.
    assert!(pids.len() <= data.len() / 20);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = procfs::parse_last_pid(text);
    }
});
