//! Temperatures: the CPU package sensor (hwmon chips, thermal zones as fallback),
//! disk sensors (drivetemp, NVMe), and every hwmon temperature input for the
//! Prometheus scrape.
//!
//! Every sensor file read here holds an integer in millidegrees Celsius: hwmon
//! `temp*_input` (Documentation/hwmon/sysfs-interface.rst) and thermal-zone `temp`
//! (Documentation/driver-api/thermal/sysfs-api.rst). The sysfs root is passed in so
//! tests build fake trees and a containerised agent can read a host's `/sys`.

mod cpu;
mod disk;
pub(crate) mod hwmon;
pub mod hwmon_temps;

pub use cpu::CpuTemperature;
pub use disk::{DiskTemperatureReads, DiskTemperatures};

/// Parses a sysfs temperature ("45123\n") into degrees Celsius (45.123).
///
/// `None` for anything that is not an integer: the caller knows the file and logs it.
pub fn parse_millidegrees(text: &str) -> Option<f32> {
    let milli: i32 = text.trim().parse().ok()?;
    // An i32 of millidegrees is at most ±2.1 million: exact in f64, and f32 keeps
    // the three decimals for any temperature a sensor can report.
    Some((f64::from(milli) / 1000.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::parse_millidegrees;

    #[test]
    fn parses_millidegrees_with_newline() {
        assert_eq!(parse_millidegrees("45123\n"), Some(45.123));
        assert_eq!(parse_millidegrees("0"), Some(0.0));
    }

    #[test]
    fn parses_negative_millidegrees() {
        assert_eq!(parse_millidegrees("-5500\n"), Some(-5.5));
    }

    #[test]
    fn rejects_non_integers() {
        assert_eq!(parse_millidegrees(""), None);
        assert_eq!(parse_millidegrees("45.1"), None);
        assert_eq!(parse_millidegrees("N/A\n"), None);
    }
}
