//! Every hwmon temperature input, named the way node_exporter's hwmon collector
//! names it, for the Prometheus scrape (`node_hwmon_temp_celsius{chip,sensor}`).
//!
//! The inputs are found by the same discovery as the CPU package sensor (one walk
//! of `class/hwmon`), and read only when a scrape renders a metrics snapshot, once
//! per snapshot: the socktop client, which polls metrics every 500 ms and shows only
//! the CPU temperature, makes the agent read no extra sensor file. That matters
//! because some hwmon reads are not cheap: coretemp reads an MSR on the core it
//! describes (an interrupt to that core), nvme sends an admin command to the drive.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::hwmon::{self, read_millidegrees};

/// At most this many inputs are exported: a two-socket server with coretemp has
/// one per core and package (130 on 2 x 64 cores); beyond, the rest are left out
/// (logged at discovery) so a strange host cannot flood a Prometheus server.
pub const MAX_HWMON_TEMPS: usize = 256;

/// One `tempN_input` of a hwmon chip, with node_exporter's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwmonSensor {
    /// node_exporter's `chip` label: derived from the parent device's path, stable
    /// across reboots, unlike `hwmonN` (see [`chip_labels`]).
    pub chip: String,
    /// The chip's `name` attribute cleaned to a label value (`node_hwmon_chip_names`).
    pub chip_name: Option<String>,
    /// `tempN`, node_exporter's `sensor` label.
    pub sensor: String,
    /// What the sensor measures (`tempN_label`), as the driver wrote it.
    pub label: Option<String>,
    /// The chip's `name` as written, for ranking CPU sensors.
    pub(crate) driver: Option<String>,
    pub(crate) index: u32,
    pub(crate) input: PathBuf,
}

/// The inputs of one discovery, shared by the snapshots taken until the next.
#[derive(Debug, Default)]
pub struct HwmonInputs {
    sensors: Vec<HwmonSensor>,
    /// Set when an input's file vanished (a driver reload renumbers hwmon
    /// devices): the collector then discovers again before its next sample.
    moved: AtomicBool,
}

impl HwmonInputs {
    /// The exported inputs among `found` (the first [`MAX_HWMON_TEMPS`]).
    pub(crate) fn new(mut found: Vec<HwmonSensor>) -> Self {
        if found.len() > MAX_HWMON_TEMPS {
            tracing::info!(found = found.len(), exported = MAX_HWMON_TEMPS, "more hwmon temperatures than exported");
            found.truncate(MAX_HWMON_TEMPS);
        }
        Self { sensors: found, moved: AtomicBool::new(false) }
    }

    pub(crate) fn moved(&self) -> bool {
        self.moved.load(Ordering::Relaxed)
    }

    fn read(&self) -> Vec<Option<f32>> {
        self.sensors
            .iter()
            .map(|sensor| match read_millidegrees(&sensor.input) {
                Ok(celsius) => Some(celsius),
                Err(e) => {
                    if e.is_gone() {
                        self.moved.store(true, Ordering::Relaxed);
                    }
                    tracing::debug!(error = %e, "hwmon temperature unreadable");
                    None
                }
            })
            .collect()
    }
}

/// The hwmon temperatures of one metrics snapshot: the inputs known when it was
/// taken, read by the first scrape that renders it.
#[derive(Debug, Clone, Default)]
pub struct HwmonTemperatures {
    inputs: Arc<HwmonInputs>,
    readings: OnceLock<Vec<Option<f32>>>,
}

impl PartialEq for HwmonTemperatures {
    fn eq(&self, other: &Self) -> bool {
        self.inputs.sensors == other.inputs.sensors && self.readings.get() == other.readings.get()
    }
}

/// One input and its value; `None` when it could not be read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HwmonReading<'a> {
    pub sensor: &'a HwmonSensor,
    pub celsius: Option<f32>,
}

impl HwmonTemperatures {
    pub(crate) fn of(inputs: &Arc<HwmonInputs>) -> Self {
        Self { inputs: Arc::clone(inputs), readings: OnceLock::new() }
    }

    /// Every input with its value, the files read by the first call. Reads sysfs
    /// files that may wait on a device: call it off the async workers.
    pub fn read(&self) -> Vec<HwmonReading<'_>> {
        let readings = self.readings.get_or_init(|| self.inputs.read());
        self.inputs.sensors.iter().zip(readings).map(|(sensor, &celsius)| HwmonReading { sensor, celsius }).collect()
    }
}

/// Every temperature input of every hwmon device under `sys_root`, in hwmon then
/// input order.
pub(crate) fn discover(sys_root: &Path) -> Vec<HwmonSensor> {
    let dirs: Vec<PathBuf> =
        hwmon::numbered_entries(&sys_root.join("class/hwmon"), "hwmon").into_iter().map(|(_, dir)| dir).collect();
    let labels = chip_labels(&dirs);
    let mut found = Vec::new();
    for (dir, chip) in dirs.iter().zip(labels) {
        let Some(chip) = chip else { continue };
        let driver = hwmon::chip_name(dir);
        let chip_name = driver.as_deref().map(clean_label).filter(|name| !name.is_empty());
        for input in hwmon::temp_inputs(dir) {
            found.push(HwmonSensor {
                chip: chip.clone(),
                chip_name: chip_name.clone(),
                sensor: format!("temp{}", input.index),
                label: input.label,
                driver: driver.clone(),
                index: input.index,
                input: input.input,
            });
        }
    }
    found
}

/// Lower case, every character other than `a-z0-9:_` turned into `_`, then `_`
/// trimmed from both ends: node_exporter's `cleanMetricName`.
fn clean_label(text: &str) -> String {
    let replaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':' || c == '_' { c } else { '_' })
        .collect();
    replaced.trim_matches('_').to_owned()
}

/// node_exporter's chip label of one hwmon device (collector/hwmon_linux.go,
/// `hwmonName`): the directory holding the parent device and the device's own name
/// (`/sys/devices/platform/coretemp.0` gives `platform_coretemp_0`,
/// `/sys/devices/pci0000:00/0000:00:18.3` gives `pci0000:00_0000:00:18_3`), or the
/// device name alone; without a parent device, the chip's `name`; else `hwmonN`.
fn base_chip_label(hwmon: &Path) -> Option<String> {
    if let Ok(device) = fs::canonicalize(hwmon.join("device")) {
        let cleaned = |path: Option<&Path>| {
            path.and_then(Path::file_name).map(|name| clean_label(&name.to_string_lossy())).unwrap_or_default()
        };
        let (kind, name) = (cleaned(device.parent()), cleaned(Some(&device)));
        if !name.is_empty() {
            return Some(if kind.is_empty() { name } else { format!("{kind}_{name}") });
        }
    }
    if let Some(name) = hwmon::read_attribute(&hwmon.join("name")).map(|n| clean_label(&n)).filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let real = fs::canonicalize(hwmon).ok()?;
    Some(clean_label(&real.file_name()?.to_string_lossy())).filter(|name| !name.is_empty())
}

/// The chip label of each device in `dirs`. Several hwmon devices can share one
/// parent device (a laptop's WMI driver registers one for fans and one for
/// sensors), which would give their series the same labels; newer node_exporter
/// releases add the chip's cleaned `name` to each colliding label, or `hwmonN` when
/// that collides too, and so does this.
fn chip_labels(dirs: &[PathBuf]) -> Vec<Option<String>> {
    let bases: Vec<Option<(String, String)>> = dirs
        .iter()
        .map(|dir| Some((base_chip_label(dir)?, hwmon::read_attribute(&dir.join("name")).unwrap_or_default())))
        .collect();
    let count = |matches: &dyn Fn(&(String, String)) -> bool| bases.iter().flatten().filter(|b| matches(b)).count();
    dirs.iter()
        .zip(&bases)
        .map(|(dir, base)| {
            let (label, name) = base.as_ref()?;
            if count(&|(other, _)| other == label) < 2 {
                return Some(label.clone());
            }
            let mut suffix = clean_label(name);
            if suffix.is_empty() || count(&|(other, other_name)| other == label && other_name == name) > 1 {
                suffix = clean_label(&dir.file_name()?.to_string_lossy());
            }
            Some(format!("{label}_{suffix}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::super::hwmon::fake::write;
    use super::*;

    /// A hwmon device the way the kernel lays it out: under its parent device in
    /// `devices/`, linked from `class/hwmon/`, with a `device` link to its parent.
    fn hwmon_device(root: &Path, parent: &str, hwmon: &str, files: &[(&str, &str)]) {
        let dir = root.join(parent).join("hwmon").join(hwmon);
        for (name, content) in files {
            write(&dir, name, content);
        }
        symlink("../..", dir.join("device")).unwrap();
        fs::create_dir_all(root.join("class/hwmon")).unwrap();
        symlink(&dir, root.join("class/hwmon").join(hwmon)).unwrap();
    }

    fn labels_of(found: &[HwmonSensor]) -> Vec<(String, String, Option<String>)> {
        found.iter().map(|s| (s.chip.clone(), s.sensor.clone(), s.label.clone())).collect()
    }

    #[test]
    fn clean_label_follows_node_exporters_rule() {
        assert_eq!(clean_label("coretemp.0"), "coretemp_0");
        assert_eq!(clean_label("0000:00:18.3"), "0000:00:18_3");
        assert_eq!(clean_label("ASUS-NB-WMI\n"), "asus_nb_wmi");
        assert_eq!(clean_label("--"), "");
    }

    #[test]
    fn chips_are_named_after_their_parent_device_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        hwmon_device(
            root,
            "devices/platform/coretemp.0",
            "hwmon3",
            &[("name", "coretemp\n"), ("temp1_input", "61000\n"), ("temp1_label", "Package id 0\n")],
        );
        hwmon_device(
            root,
            "devices/pci0000:00/0000:00:18.3",
            "hwmon1",
            &[("name", "k10temp\n"), ("temp1_input", "49875\n"), ("temp1_label", "Tctl\n"), ("temp3_input", "1\n")],
        );
        // A thermal zone's hwmon has no parent device: named after the chip.
        write(root, "class/hwmon/hwmon0/name", "acpitz\n");
        write(root, "class/hwmon/hwmon0/temp1_input", "27800\n");
        let found = discover(root);
        assert_eq!(
            labels_of(&found),
            vec![
                ("acpitz".into(), "temp1".into(), None),
                ("pci0000:00_0000:00:18_3".into(), "temp1".into(), Some("Tctl".into())),
                ("pci0000:00_0000:00:18_3".into(), "temp3".into(), None),
                ("platform_coretemp_0".into(), "temp1".into(), Some("Package id 0".into())),
            ]
        );
        assert_eq!(found[3].chip_name.as_deref(), Some("coretemp"));
    }

    #[test]
    fn chips_sharing_a_parent_get_their_name_or_hwmon_number_added() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let wmi = "devices/platform/asus-nb-wmi";
        hwmon_device(root, wmi, "hwmon4", &[("name", "asus\n"), ("temp1_input", "40000\n")]);
        hwmon_device(root, wmi, "hwmon5", &[("name", "asus_custom_fan_curve\n"), ("temp1_input", "41000\n")]);
        let nameless = "devices/platform/twin";
        hwmon_device(root, nameless, "hwmon6", &[("temp1_input", "1000\n")]);
        hwmon_device(root, nameless, "hwmon7", &[("temp1_input", "2000\n")]);
        let chips: Vec<String> = discover(root).into_iter().map(|s| s.chip).collect();
        assert_eq!(
            chips,
            [
                "platform_asus_nb_wmi_asus",
                "platform_asus_nb_wmi_asus_custom_fan_curve",
                "platform_twin_hwmon6",
                "platform_twin_hwmon7"
            ]
        );
    }

    #[test]
    fn readings_are_taken_once_per_snapshot_by_the_first_reader() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        hwmon_device(
            root,
            "devices/platform/nct6775.656",
            "hwmon2",
            &[("name", "nct6798\n"), ("temp1_input", "30000\n")],
        );
        write(root, "class/hwmon/hwmon2/temp2_input", "garbage\n");
        let inputs = Arc::new(HwmonInputs::new(discover(root)));
        let snapshot = HwmonTemperatures::of(&inputs);
        // Collected but not read yet: what the file holds when a scrape reads is what it exports.
        write(root, "class/hwmon/hwmon2/temp1_input", "31500\n");
        let read: Vec<_> = snapshot.read().iter().map(|r| (r.sensor.sensor.clone(), r.celsius)).collect();
        assert_eq!(read, vec![("temp1".to_owned(), Some(31.5)), ("temp2".to_owned(), None)]);
        write(root, "class/hwmon/hwmon2/temp1_input", "33000\n");
        assert_eq!(snapshot.read()[0].celsius, Some(31.5), "one reading per snapshot");
        assert_eq!(HwmonTemperatures::of(&inputs).read()[0].celsius, Some(33.0));
        assert!(!inputs.moved());
        fs::remove_file(root.join("class/hwmon/hwmon2/temp1_input")).unwrap();
        assert_eq!(HwmonTemperatures::of(&inputs).read()[0].celsius, None);
        assert!(inputs.moved(), "a vanished input asks for a new discovery");
    }

    #[test]
    fn the_count_is_bounded() {
        let sensor = |index| HwmonSensor {
            chip: "c".into(),
            chip_name: None,
            sensor: format!("temp{index}"),
            label: None,
            driver: None,
            index,
            input: PathBuf::new(),
        };
        let inputs = HwmonInputs::new((0..MAX_HWMON_TEMPS as u32 + 10).map(sensor).collect());
        assert_eq!(inputs.sensors.len(), MAX_HWMON_TEMPS);
    }
}
