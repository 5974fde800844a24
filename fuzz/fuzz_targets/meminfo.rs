//! `/proc/meminfo`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::memory;

fuzz_target!(|text: &str| {
    let info = memory::parse_meminfo(text);
    assert!(info.mem_used <= info.mem_total && info.swap_used <= info.swap_total, "{info:?}");
});
