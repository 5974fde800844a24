//! AMD and Intel GPUs from the DRM class: `/sys/class/drm/cardN/device` is the GPU's
//! PCI device, with its `vendor` and `device` ids (Documentation/ABI/testing/sysfs-bus-pci).
//!
//! amdgpu adds `gpu_busy_percent` (0..100), `mem_info_vram_total` and
//! `mem_info_vram_used` (bytes) to that directory (Documentation/gpu/amdgpu/thermal.rst
//! and driver-misc.rst); the GPU's hwmon gives the temperature in millidegrees
//! (Documentation/gpu/amdgpu/thermal.rst, `temp1` is "edge"; Intel's xe driver names
//! its package sensor "pkg"). Files a driver does not provide are left out at discovery
//! and read as `None`. NVIDIA cards (vendor 0x10de) are NVML's, so they are not
//! reported twice.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{Counters, GpuReading};
use crate::collect::temperature::hwmon::{self, numbered_entries, read_attribute};

const VENDOR_AMD: u16 = 0x1002;
const VENDOR_INTEL: u16 = 0x8086;
const VENDOR_NVIDIA: u16 = 0x10de;

/// Marketing names of common GPUs by (vendor, device) id, from the PCI ID repository.
/// Anything else is named "<vendor> GPU 0x<device>".
const KNOWN_NAMES: &[(u16, u16, &str)] = &[
    (VENDOR_AMD, 0x67df, "AMD Radeon RX 470/480/570/580/590"),
    (VENDOR_AMD, 0x731f, "AMD Radeon RX 5600/5700 (XT)"),
    (VENDOR_AMD, 0x73bf, "AMD Radeon RX 6800/6800 XT/6900 XT"),
    (VENDOR_AMD, 0x73df, "AMD Radeon RX 6700/6700 XT/6750 XT"),
    (VENDOR_AMD, 0x73ff, "AMD Radeon RX 6600/6600 XT"),
    (VENDOR_AMD, 0x744c, "AMD Radeon RX 7900 XT/XTX/GRE"),
    (VENDOR_AMD, 0x7480, "AMD Radeon RX 7600"),
    (VENDOR_AMD, 0x1638, "AMD Radeon Vega (Cezanne)"),
    (VENDOR_AMD, 0x1681, "AMD Radeon 680M"),
    (VENDOR_AMD, 0x15bf, "AMD Radeon 780M"),
    (VENDOR_AMD, 0x164e, "AMD Radeon Graphics (Raphael)"),
    (VENDOR_INTEL, 0x56a0, "Intel Arc A770"),
    (VENDOR_INTEL, 0x56a1, "Intel Arc A750"),
    (VENDOR_INTEL, 0x5690, "Intel Arc A770M"),
    (VENDOR_INTEL, 0x3e92, "Intel UHD Graphics 630"),
    (VENDOR_INTEL, 0x9bc5, "Intel UHD Graphics 630"),
    (VENDOR_INTEL, 0x4680, "Intel UHD Graphics 770"),
    (VENDOR_INTEL, 0xa780, "Intel UHD Graphics 770"),
    (VENDOR_INTEL, 0x46a6, "Intel Iris Xe Graphics"),
    (VENDOR_INTEL, 0x9a49, "Intel Iris Xe Graphics"),
    (VENDOR_INTEL, 0x5917, "Intel UHD Graphics 620"),
];

/// Parses a PCI id attribute ("0x1002\n").
pub(crate) fn parse_pci_id(text: &str) -> Option<u16> {
    u16::from_str_radix(text.trim().strip_prefix("0x")?, 16).ok()
}

fn vendor_name(vendor: u16) -> Option<&'static str> {
    match vendor {
        VENDOR_AMD => Some("AMD"),
        VENDOR_INTEL => Some("Intel"),
        _ => None,
    }
}

/// The name shown for a GPU: the table's, else "AMD GPU 0x73bf".
pub(crate) fn gpu_name(vendor: u16, device: u16) -> String {
    KNOWN_NAMES
        .iter()
        .find(|(v, d, _)| *v == vendor && *d == device)
        .map(|(_, _, name)| (*name).to_owned())
        .unwrap_or_else(|| format!("{} GPU {device:#06x}", vendor_name(vendor).unwrap_or("Unknown")))
}

/// One AMD or Intel GPU found at discovery, with the files that are re-read.
#[derive(Debug)]
pub(crate) struct DrmGpu {
    card: String,
    /// Name, vendor and VRAM size: fixed for the life of the device.
    fixed: GpuReading,
    busy_percent: Option<PathBuf>,
    vram_used: Option<PathBuf>,
    temperature: Option<PathBuf>,
}

/// The path when the file exists: a driver without that attribute is not an error.
fn existing(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

/// Every AMD and Intel GPU under `<sys_root>/class/drm`. Connector entries
/// (`card0-HDMI-A-1`) and render nodes do not match `cardN` and are skipped.
pub(crate) fn discover(sys_root: &Path, counters: &Counters) -> Vec<DrmGpu> {
    numbered_entries(&sys_root.join("class/drm"), "card")
        .into_iter()
        .filter_map(|(n, dir)| discover_card(&format!("card{n}"), &dir.join("device"), counters))
        .collect()
}

fn discover_card(card: &str, device: &Path, counters: &Counters) -> Option<DrmGpu> {
    // simpledrm and other platform framebuffers have no PCI vendor: not a GPU to report.
    let vendor = parse_pci_id(&read_attribute(&device.join("vendor"))?)?;
    if vendor == VENDOR_NVIDIA {
        tracing::debug!(card, "NVIDIA card in sysfs left to NVML");
        return None;
    }
    // A BMC's or a VM's display adapter (ASPEED, virtio, VMware) has no GPU metrics.
    let vendor_label = vendor_name(vendor)?;
    let device_id = read_attribute(&device.join("device")).and_then(|t| parse_pci_id(&t)).unwrap_or(0);
    let name = read_attribute(&device.join("product_name"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| gpu_name(vendor, device_id));
    tracing::debug!(card, name, "GPU found in sysfs");
    let fixed = GpuReading {
        name,
        vendor: Some(vendor_label),
        mem_total_bytes: existing(device.join("mem_info_vram_total"))
            .and_then(|path| read_number(card, &path, counters)),
        ..GpuReading::default()
    };
    Some(DrmGpu {
        card: card.to_owned(),
        fixed,
        busy_percent: existing(device.join("gpu_busy_percent")),
        vram_used: existing(device.join("mem_info_vram_used")),
        temperature: hwmon::device_temp_input(device, &["edge", "pkg"]),
    })
}

/// Reads an integer attribute; a failure is logged and counted. amdgpu refuses reads
/// while a discrete GPU is runtime-suspended rather than wake it, so failures are
/// expected on laptops and are not warnings.
fn read_number<T: std::str::FromStr>(card: &str, path: &Path, counters: &Counters) -> Option<T> {
    let result = crate::host::read_sysfs_attribute(path)
        .map_err(|e| e.to_string())
        .and_then(|text| text.trim().parse::<T>().map_err(|_| format!("not a number: {:?}", text.trim())));
    result
        .inspect_err(|error| {
            counters.sysfs_read_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(card, path = %path.display(), error, "GPU attribute unreadable");
        })
        .ok()
}

impl DrmGpu {
    /// Re-reads the changing values.
    pub(crate) fn read(&self, counters: &Counters) -> GpuReading {
        GpuReading {
            utilization_pct: self.number(self.busy_percent.as_deref(), counters),
            mem_used_bytes: self.number(self.vram_used.as_deref(), counters),
            temp_c: self.temperature.as_deref().and_then(|p| self.read_temperature(p, counters)),
            ..self.fixed.clone()
        }
    }

    fn number<T: std::str::FromStr>(&self, path: Option<&Path>, counters: &Counters) -> Option<T> {
        read_number(&self.card, path?, counters)
    }

    fn read_temperature(&self, path: &Path, counters: &Counters) -> Option<f32> {
        hwmon::read_millidegrees(path)
            .inspect_err(|e| {
                counters.sysfs_read_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(card = self.card, error = %e, "GPU temperature unreadable");
            })
            .ok()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::collect::temperature::hwmon::fake::write;

    /// An RX 6800 as card1, with its connectors, a render node and an ASPEED BMC
    /// adapter as card0.
    pub(crate) fn amd_card(root: &Path) {
        write(root, "class/drm/card0/device/vendor", "0x1a03\n");
        write(root, "class/drm/card0/device/device", "0x2000\n");
        let dev = "class/drm/card1/device";
        write(root, &format!("{dev}/vendor"), "0x1002\n");
        write(root, &format!("{dev}/device"), "0x73bf\n");
        write(root, &format!("{dev}/gpu_busy_percent"), "37\n");
        write(root, &format!("{dev}/mem_info_vram_total"), "17163091968\n");
        write(root, &format!("{dev}/mem_info_vram_used"), "1073741824\n");
        write(root, &format!("{dev}/hwmon/hwmon2/name"), "amdgpu\n");
        write(root, &format!("{dev}/hwmon/hwmon2/temp1_input"), "51000\n");
        write(root, &format!("{dev}/hwmon/hwmon2/temp1_label"), "edge\n");
        write(root, &format!("{dev}/hwmon/hwmon2/temp2_input"), "53000\n");
        write(root, &format!("{dev}/hwmon/hwmon2/temp2_label"), "junction\n");
        write(root, "class/drm/card1-HDMI-A-1/status", "connected\n");
        write(root, "class/drm/renderD128/dev", "226:128\n");
    }

    #[test]
    fn amd_card_reads_every_value() {
        let dir = tempfile::tempdir().unwrap();
        amd_card(dir.path());
        let counters = Counters::default();
        let gpus = discover(dir.path(), &counters);
        assert_eq!(gpus.len(), 1, "BMC adapter, connector and render node are not GPUs");
        let reading = gpus[0].read(&counters);
        assert_eq!(
            reading,
            GpuReading {
                name: "AMD Radeon RX 6800/6800 XT/6900 XT".into(),
                vendor: Some("AMD"),
                utilization_pct: Some(37),
                mem_used_bytes: Some(1_073_741_824),
                mem_total_bytes: Some(17_163_091_968),
                temp_c: Some(51.0),
            }
        );
        assert_eq!(counters.sysfs_read_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn values_are_re_read_on_each_collection() {
        let dir = tempfile::tempdir().unwrap();
        amd_card(dir.path());
        let counters = Counters::default();
        let gpus = discover(dir.path(), &counters);
        write(dir.path(), "class/drm/card1/device/gpu_busy_percent", "99\n");
        assert_eq!(gpus[0].read(&counters).utilization_pct, Some(99));
    }

    #[test]
    fn intel_card_without_amd_files_has_only_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/drm/card0/device/vendor", "0x8086\n");
        write(dir.path(), "class/drm/card0/device/device", "0x56a0\n");
        write(dir.path(), "class/drm/card0/device/hwmon/hwmon5/name", "xe\n");
        write(dir.path(), "class/drm/card0/device/hwmon/hwmon5/temp2_input", "44000\n");
        write(dir.path(), "class/drm/card0/device/hwmon/hwmon5/temp2_label", "pkg\n");
        write(dir.path(), "class/drm/card0/device/hwmon/hwmon5/temp3_input", "60000\n");
        write(dir.path(), "class/drm/card0/device/hwmon/hwmon5/temp3_label", "vram\n");
        let counters = Counters::default();
        let gpus = discover(dir.path(), &counters);
        let reading = gpus[0].read(&counters);
        assert_eq!(reading.name, "Intel Arc A770");
        assert_eq!(reading.vendor, Some("Intel"));
        assert_eq!((reading.utilization_pct, reading.mem_used_bytes, reading.mem_total_bytes), (None, None, None));
        assert_eq!(reading.temp_c, Some(44.0));
        assert_eq!(counters.sysfs_read_failures.load(Ordering::Relaxed), 0, "absent files are not failures");
    }

    #[test]
    fn nvidia_cards_are_left_to_nvml() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/drm/card0/device/vendor", "0x10de\n");
        write(dir.path(), "class/drm/card0/device/device", "0x2684\n");
        assert!(discover(dir.path(), &Counters::default()).is_empty());
    }

    #[test]
    fn unreadable_values_are_none_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        amd_card(dir.path());
        let counters = Counters::default();
        let gpus = discover(dir.path(), &counters);
        write(dir.path(), "class/drm/card1/device/gpu_busy_percent", "\n");
        std::fs::remove_file(dir.path().join("class/drm/card1/device/hwmon/hwmon2/temp1_input")).unwrap();
        let reading = gpus[0].read(&counters);
        assert_eq!((reading.utilization_pct, reading.temp_c), (None, None));
        assert_eq!(reading.mem_used_bytes, Some(1_073_741_824));
        assert_eq!(counters.sysfs_read_failures.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unknown_ids_get_a_fallback_name_and_product_name_wins() {
        assert_eq!(gpu_name(VENDOR_AMD, 0x1234), "AMD GPU 0x1234");
        assert_eq!(gpu_name(VENDOR_INTEL, 0x0042), "Intel GPU 0x0042");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/drm/card0/device/vendor", "0x1002\n");
        write(dir.path(), "class/drm/card0/device/device", "0x74a1\n");
        write(dir.path(), "class/drm/card0/device/product_name", "AMD Instinct MI300X\n");
        let gpus = discover(dir.path(), &Counters::default());
        assert_eq!(gpus[0].read(&Counters::default()).name, "AMD Instinct MI300X");
    }

    #[test]
    fn parses_pci_ids() {
        assert_eq!(parse_pci_id("0x1002\n"), Some(0x1002));
        assert_eq!(parse_pci_id("1002"), None);
        assert_eq!(parse_pci_id("0xzz"), None);
    }
}
