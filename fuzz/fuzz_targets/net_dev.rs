//! `/proc/net/dev`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::network;

fuzz_target!(|text: &str| {
    let _ = network::parse_net_dev(text);
});
