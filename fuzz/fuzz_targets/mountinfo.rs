//! `/proc/self/mountinfo`, and the choice of real filesystems from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::disks;

fuzz_target!(|text: &str| {
    let _ = disks::real_mounts(disks::parse_mountinfo(text));
});
