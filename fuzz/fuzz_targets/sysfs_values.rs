//! sysfs attributes: hwmon and thermal-zone millidegrees, hwmon entry names,
//! DRM PCI ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::collect::temperature;
use socktop_agent::fuzzing;

fuzz_target!(|text: &str| {
    let _ = temperature::parse_millidegrees(text);
    let _ = fuzzing::parse_pci_id(text);
    let _ = fuzzing::hwmon_number(text, "temp", "_input");
});
