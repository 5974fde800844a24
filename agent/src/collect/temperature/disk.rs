//! Disk temperatures: SATA/SAS disks through the `drivetemp` hwmon driver
//! (Documentation/hwmon/drivetemp.rst) and NVMe drives through the hwmon the nvme
//! driver registers on each controller (its `temp1` is the "Composite" temperature).
//! A partition reports the temperature of the disk holding it.

use std::path::{Path, PathBuf};

use super::hwmon;

/// The temperature of a block device in °C (`sda`, `/dev/nvme0n1p2`...), or `None` when
/// the disk has no readable sensor (no drivetemp module, a virtual disk, device-mapper).
pub fn disk_temperature(sys_root: &Path, block_device: &str) -> Option<f32> {
    let name = block_device.strip_prefix("/dev/").unwrap_or(block_device);
    let disk = whole_disk(sys_root, name)?;
    let input = disk_sensor(sys_root, &disk)?;
    match hwmon::read_millidegrees(&input) {
        Ok(celsius) => Some(celsius),
        Err(e) => {
            // Expected now and then (a drive in standby may refuse the query), so not a warning.
            tracing::debug!(disk = %disk, error = %e, "disk temperature unreadable");
            None
        }
    }
}

/// The whole disk `name` belongs to: itself when `/sys/block/<name>` exists, else the
/// disk whose directory holds `<name>` as a partition (`/sys/block/sda/sda1/partition`,
/// Documentation/ABI/stable/sysfs-block).
fn whole_disk(sys_root: &Path, name: &str) -> Option<String> {
    // A name is one path component; anything else could walk out of the tree.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let block = sys_root.join("block");
    if block.join(name).is_dir() {
        return Some(name.to_owned());
    }
    hwmon::entry_names(&block).into_iter().find(|disk| block.join(disk).join(name).join("partition").exists())
}

/// The controller of an NVMe namespace block device: "nvme0n1" → "nvme0".
fn nvme_controller(disk: &str) -> Option<&str> {
    let rest = disk.strip_prefix("nvme")?;
    let digits = rest.find('n')?;
    (digits > 0 && rest[..digits].bytes().all(|b| b.is_ascii_digit())).then(|| &disk[..4 + digits])
}

/// The temperature input of a whole disk: a hwmon under its device, or for NVMe under
/// its controller (with native multipath the namespace's `device` is the subsystem,
/// which has no hwmon).
fn disk_sensor(sys_root: &Path, disk: &str) -> Option<PathBuf> {
    let device = sys_root.join("block").join(disk).join("device");
    hwmon::device_temp_input(&device, &["Composite"]).or_else(|| {
        let controller = sys_root.join("class/nvme").join(nvme_controller(disk)?);
        hwmon::device_temp_input(&controller, &["Composite"])
    })
}

#[cfg(test)]
mod tests {
    use super::super::hwmon::fake::write;
    use super::*;

    /// A SATA disk `sda` with one partition and drivetemp loaded, an NVMe namespace
    /// whose hwmon hangs off the controller, and a virtual disk `vda` without a sensor.
    fn disks(root: &Path) {
        write(root, "block/sda/device/hwmon/hwmon3/name", "drivetemp\n");
        write(root, "block/sda/device/hwmon/hwmon3/temp1_input", "33000\n");
        write(root, "block/sda/sda1/partition", "1\n");
        write(root, "block/nvme0n1/device/hwmon1/name", "nvme\n");
        write(root, "block/nvme0n1/device/hwmon1/temp1_input", "40850\n");
        write(root, "block/nvme0n1/device/hwmon1/temp1_label", "Composite\n");
        write(root, "block/nvme0n1/device/hwmon1/temp2_input", "45850\n");
        write(root, "block/nvme0n1/device/hwmon1/temp2_label", "Sensor 1\n");
        write(root, "block/nvme0n1/nvme0n1p2/partition", "2\n");
        write(root, "block/vda/vda1/partition", "1\n");
    }

    #[test]
    fn drivetemp_sata_disk() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "sda"), Some(33.0));
        assert_eq!(disk_temperature(dir.path(), "/dev/sda"), Some(33.0));
    }

    #[test]
    fn nvme_reports_composite() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "nvme0n1"), Some(40.85));
    }

    #[test]
    fn partitions_report_their_disk() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "sda1"), Some(33.0));
        assert_eq!(disk_temperature(dir.path(), "/dev/nvme0n1p2"), Some(40.85));
    }

    #[test]
    fn multipath_nvme_reads_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "block/nvme1n1/device/subsysnqn", "nqn.x\n");
        write(dir.path(), "class/nvme/nvme1/hwmon2/temp1_input", "36850\n");
        assert_eq!(disk_temperature(dir.path(), "nvme1n1"), Some(36.85));
    }

    #[test]
    fn disks_without_sensors_or_unknown_names_are_none() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "vda"), None);
        assert_eq!(disk_temperature(dir.path(), "vda1"), None);
        assert_eq!(disk_temperature(dir.path(), "sdz"), None);
        assert_eq!(disk_temperature(dir.path(), "../block/sda"), None);
        assert_eq!(disk_temperature(dir.path(), ""), None);
    }

    #[test]
    fn nvme_controller_names() {
        assert_eq!(nvme_controller("nvme0n1"), Some("nvme0"));
        assert_eq!(nvme_controller("nvme12n3"), Some("nvme12"));
        assert_eq!(nvme_controller("nvmen1"), None);
        assert_eq!(nvme_controller("sda"), None);
    }
}
