//! `/proc/stat`: the CPU lines, their shares between two readings (split at a
//! NUL), and `btime`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::cpu;
use socktop_agent::host::clock;

fuzz_target!(|text: &str| {
    let (before, after) = text.split_once('\0').unwrap_or((text, text));
    let mut usage = cpu::CpuUsage::new(cpu::parse_proc_stat(before));
    let shares = usage.update(cpu::parse_proc_stat(after));
    for share in std::iter::once(shares.total).chain(shares.per_core) {
        assert!((0.0..=100.0).contains(&share), "share {share}");
    }
    let _ = clock::parse_btime(after);
});
