//! Memory and swap from `/proc/meminfo` (proc(5)). "Used" memory is
//! `MemTotal - MemAvailable`: what the kernel could not hand to a new program
//! without swapping, the figure `free` and the original agent show.

/// Bytes of memory and swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryInfo {
    pub mem_total: u64,
    pub mem_used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
    /// The raw fields behind the two figures above, which Prometheus exports
    /// under node_exporter's names (`node_memory_MemAvailable_bytes`, ...).
    pub mem_available: u64,
    pub mem_free: u64,
    pub buffers: u64,
    pub cached: u64,
    pub swap_free: u64,
}

/// Parses `/proc/meminfo`, whose values are in KiB despite the "kB" unit.
pub fn parse_meminfo(text: &str) -> MemoryInfo {
    let (mut total, mut available, mut free, mut swap_total, mut swap_free) = (0, None, 0, 0, 0);
    let (mut buffers, mut cached) = (0, 0);
    // Seven keys are wanted; they come in the first twenty lines of fifty-odd.
    let mut wanted = 7;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let kib = || value.split_ascii_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match key {
            "MemTotal" => total = kib(),
            "MemAvailable" => available = Some(kib()),
            "MemFree" => free = kib(),
            "Buffers" => buffers = kib(),
            "Cached" => cached = kib(),
            "SwapTotal" => swap_total = kib(),
            "SwapFree" => swap_free = kib(),
            _ => continue,
        }
        wanted -= 1;
        if wanted == 0 {
            break;
        }
    }
    // Kernels before 3.14 have no MemAvailable; MemFree is the closest figure.
    let available = available.unwrap_or(free);
    // Saturating: a value past u64::MAX / 1024 is no real machine's, but must
    // not overflow (found by the meminfo fuzz target).
    let bytes = |kib: u64| kib.saturating_mul(1024);
    MemoryInfo {
        mem_total: bytes(total),
        mem_used: bytes(total.saturating_sub(available)),
        swap_total: bytes(swap_total),
        swap_used: bytes(swap_total.saturating_sub(swap_free)),
        mem_available: bytes(available),
        mem_free: bytes(free),
        buffers: bytes(buffers),
        cached: bytes(cached),
        swap_free: bytes(swap_free),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_minus_available_in_bytes() {
        let info = parse_meminfo(include_str!("../../tests/fixtures/proc/meminfo"));
        assert_eq!(info.mem_total, 24_576_000 * 1024);
        assert_eq!(info.mem_used, (24_576_000 - 23_000_000) * 1024);
        assert_eq!(info.swap_total, 2_097_148 * 1024);
        assert_eq!(info.swap_used, (2_097_148 - 2_000_000) * 1024);
        assert_eq!(info.mem_available, 23_000_000 * 1024);
        assert_eq!(info.swap_free, 2_000_000 * 1024);
        assert_eq!((info.mem_free, info.buffers, info.cached), (22_000_000 * 1024, 120_000 * 1024, 900_000 * 1024));
    }

    #[test]
    fn old_kernels_without_memavailable_fall_back_to_memfree() {
        let info = parse_meminfo("MemTotal: 1000 kB\nMemFree: 400 kB\n");
        assert_eq!(info.mem_used, 600 * 1024);
    }

    #[test]
    fn a_total_too_large_for_bytes_saturates_instead_of_overflowing() {
        let info = parse_meminfo(include_str!("../../tests/fixtures/fuzz/meminfo-huge-total"));
        assert_eq!(info.mem_total, u64::MAX);
        assert!(info.mem_used <= info.mem_total);
    }

    #[test]
    fn empty_file_reads_as_zero() {
        assert_eq!(parse_meminfo(""), MemoryInfo::default());
    }
}
