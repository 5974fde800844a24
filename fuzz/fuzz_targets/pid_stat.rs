//! `/proc/PID/stat` as bytes: the command name up to the last `)`, then numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::host::stat;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(parsed) = stat::parse_stat(bytes) {
        let _ = parsed.name();
        let _ = stat::state_name(parsed.state);
    }
});
