//! `journalctl --output=json` output, one JSON object per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::journal;

fuzz_target!(|text: &str| {
    let parsed = journal::parse_journal_json(text, 100);
    let _ = parsed;
});
