//! Disk temperatures: SATA/SAS disks through the `drivetemp` hwmon driver
//! (Documentation/hwmon/drivetemp.rst) and NVMe drives through the hwmon the nvme
//! driver registers on each controller (its `temp1` is the "Composite" temperature).
//! A partition reports the temperature of the disk holding it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::hwmon;
use crate::collect::probe::{JudgedAt, Probed, REPROBE_AFTER};

/// The temperature sensors of the mounted disks, each looked for on first use and
/// kept. A disk without one (a virtual disk, device-mapper, no drivetemp module) is
/// looked at again only every [`REPROBE_AFTER`], and reads touch no file in between.
#[derive(Debug)]
pub struct DiskTemperatures {
    sys_root: PathBuf,
    /// By block device name (`sda1`, `nvme0n1p2`).
    sensors: HashMap<String, Probed<PathBuf>>,
    judged: JudgedAt,
}

impl DiskTemperatures {
    pub fn new(sys_root: &Path) -> Self {
        Self { sys_root: sys_root.to_path_buf(), sensors: HashMap::new(), judged: JudgedAt::default() }
    }

    /// True when reading the temperatures of these mount sources touches no file: none
    /// of them has a sensor and no search is due. A sensor read may wait (drivetemp
    /// asks the drive), and a source seen for the first time is searched.
    pub fn never_waits<'a>(&mut self, sources: impl IntoIterator<Item = &'a str>) -> bool {
        let now = self.judged.judge();
        sources
            .into_iter()
            .filter_map(block_device)
            .all(|name| self.sensors.get(name).is_some_and(|sensor| sensor.is_idle_at(now)))
    }

    /// The reads of one collection, all at the instant `never_waits` judged.
    pub fn reads(&mut self) -> DiskTemperatureReads<'_> {
        let now = self.judged.take();
        DiskTemperatureReads { temperatures: self, now }
    }

    fn read_at(&mut self, source: &str, now: Instant) -> Option<f32> {
        let name = block_device(source)?;
        let sys_root = &self.sys_root;
        let find = || find_sensor(sys_root, name);
        let probed = match self.sensors.get_mut(name) {
            Some(probed) => probed,
            None => self.sensors.entry(name.to_owned()).or_insert_with(|| Probed::first(now, REPROBE_AFTER, find)),
        };
        let result = match hwmon::read_millidegrees(probed.get(now, find)?) {
            // The hwmon device was renumbered or its driver unloaded: search again now.
            Err(e) if e.is_gone() => {
                probed.probe(now, find);
                hwmon::read_millidegrees(probed.found()?)
            }
            other => other,
        };
        result
            // Expected now and then (a drive in standby may refuse the query), so not a warning.
            .inspect_err(|e| tracing::debug!(disk = name, error = %e, "disk temperature unreadable"))
            .ok()
    }
}

/// Temperatures read for one collection.
pub struct DiskTemperatureReads<'a> {
    temperatures: &'a mut DiskTemperatures,
    now: Instant,
}

impl DiskTemperatureReads<'_> {
    /// The temperature of the disk behind a mount source (`/dev/sda`, `/dev/nvme0n1p2`;
    /// a partition reports its disk's), or `None` when the source is not a block
    /// device or its disk has no readable sensor.
    pub fn read(&mut self, source: &str) -> Option<f32> {
        self.temperatures.read_at(source, self.now)
    }
}

/// The block device a mount source names: `/dev/sda1` → `sda1`; `None` for
/// anything else (`tmpfs`, `server:/export`, `overlay`).
fn block_device(source: &str) -> Option<&str> {
    source.strip_prefix("/dev/")
}

/// One search for the sensor of the disk holding block device `name`, logged.
fn find_sensor(sys_root: &Path, name: &str) -> Option<PathBuf> {
    let sensor = whole_disk(sys_root, name).and_then(|disk| disk_sensor(sys_root, &disk));
    match &sensor {
        Some(path) => tracing::debug!(device = name, path = %path.display(), "disk temperature sensor"),
        None => tracing::debug!(device = name, retry_s = REPROBE_AFTER.as_secs(), "no disk temperature sensor"),
    }
    sensor
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
    use std::time::Duration;

    use super::super::hwmon::fake::write;
    use super::*;

    /// One read of a fresh collector, as the first collection after start does.
    fn disk_temperature(sys_root: &Path, source: &str) -> Option<f32> {
        DiskTemperatures::new(sys_root).reads().read(source)
    }

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
        assert_eq!(disk_temperature(dir.path(), "/dev/sda"), Some(33.0));
    }

    #[test]
    fn nvme_reports_composite() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "/dev/nvme0n1"), Some(40.85));
    }

    #[test]
    fn partitions_report_their_disk() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "/dev/sda1"), Some(33.0));
        assert_eq!(disk_temperature(dir.path(), "/dev/nvme0n1p2"), Some(40.85));
    }

    #[test]
    fn multipath_nvme_reads_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "block/nvme1n1/device/subsysnqn", "nqn.x\n");
        write(dir.path(), "class/nvme/nvme1/hwmon2/temp1_input", "36850\n");
        assert_eq!(disk_temperature(dir.path(), "/dev/nvme1n1"), Some(36.85));
    }

    #[test]
    fn disks_without_sensors_or_unknown_names_are_none() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        assert_eq!(disk_temperature(dir.path(), "/dev/vda"), None);
        assert_eq!(disk_temperature(dir.path(), "/dev/vda1"), None);
        assert_eq!(disk_temperature(dir.path(), "/dev/sdz"), None);
        assert_eq!(disk_temperature(dir.path(), "/dev/../block/sda"), None);
        assert_eq!(disk_temperature(dir.path(), "/dev/"), None);
        assert_eq!(disk_temperature(dir.path(), "sda"), None, "a mount source not under /dev is no disk");
    }

    #[test]
    fn a_sensor_that_appears_later_is_found_after_the_bound_not_before() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "block/sda/sda1/partition", "1\n");
        let mut disks = DiskTemperatures::new(dir.path());
        let start = Instant::now();
        assert!(!disks.never_waits(["/dev/sda1", "tmpfs"]), "a new disk is searched");
        assert_eq!(disks.read_at("/dev/sda1", start), None);
        // drivetemp loaded a second later. Had the collector looked before the bound,
        // it would have found the sensor.
        write(dir.path(), "block/sda/device/hwmon/hwmon3/name", "drivetemp\n");
        write(dir.path(), "block/sda/device/hwmon/hwmon3/temp1_input", "33000\n");
        for seconds in [1, 30, 59] {
            let now = start + Duration::from_secs(seconds);
            assert!(disks.sensors["sda1"].is_idle_at(now));
            assert_eq!(disks.read_at("/dev/sda1", now), None, "looked again after {seconds} s");
        }
        assert_eq!(disks.read_at("/dev/sda1", start + REPROBE_AFTER), Some(33.0));
        assert!(!disks.never_waits(["/dev/sda1"]), "drivetemp may wait on the drive");
    }

    #[test]
    fn never_waits_once_every_mounted_disk_was_searched_in_vain() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        let mut disks = DiskTemperatures::new(dir.path());
        assert!(disks.never_waits(["tmpfs", "server:/export"]), "only block devices have sensors");
        assert_eq!(disks.reads().read("/dev/vda1"), None);
        assert!(disks.never_waits(["/dev/vda1", "overlay"]));
        assert!(!disks.never_waits(["/dev/vda1", "/dev/sda1"]));
    }

    #[test]
    fn a_renumbered_sensor_is_found_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        disks(dir.path());
        let mut disks = DiskTemperatures::new(dir.path());
        assert_eq!(disks.reads().read("/dev/sda"), Some(33.0));
        std::fs::remove_dir_all(dir.path().join("block/sda/device/hwmon/hwmon3")).unwrap();
        write(dir.path(), "block/sda/device/hwmon/hwmon4/temp1_input", "34000\n");
        assert_eq!(disks.reads().read("/dev/sda"), Some(34.0));
    }

    #[test]
    fn nvme_controller_names() {
        assert_eq!(nvme_controller("nvme0n1"), Some("nvme0"));
        assert_eq!(nvme_controller("nvme12n3"), Some("nvme12"));
        assert_eq!(nvme_controller("nvmen1"), None);
        assert_eq!(nvme_controller("sda"), None);
    }
}
