//! `/proc/PID/status`, `statm` and `io` (the text before a NUL), and `cmdline`
//! (the bytes after it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::process_detail as detail;

fuzz_target!(|bytes: &[u8]| {
    let split = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let (text, cmdline) = (String::from_utf8_lossy(&bytes[..split]), bytes.get(split + 1..).unwrap_or_default());
    let _ = detail::parse_status(&text);
    let _ = detail::parse_statm_shared_pages(&text);
    let _ = detail::parse_io(&text);
    // The name stands in for an empty command line (kernel threads).
    let _ = detail::command_line(cmdline, "kworker/0:1");
});
