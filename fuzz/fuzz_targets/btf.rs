//! The kernel's BTF: arbitrary bytes give offsets or an error, never a panic,
//! a hang or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::cputime::btf;

fuzz_target!(|data: &[u8]| {
    let _ = btf::parse_task_offsets(data);
    let _ = btf::parse_process_offsets(data);
});
