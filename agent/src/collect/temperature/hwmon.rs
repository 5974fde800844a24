//! Walking sysfs sensor directories: numbered entries (`hwmonN`, `thermal_zoneN`),
//! the `tempN_input` files of a hwmon chip with their labels, and reading one of them.
//!
//! Attribute names follow Documentation/hwmon/sysfs-interface.rst: `name` is the chip,
//! `tempN_input` a reading in millidegrees Celsius, `tempN_label` what it measures.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::parse_millidegrees;
use crate::host::read_sysfs_attribute;

/// Why a sensor file gave no temperature.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SensorReadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {text:?}, not millidegrees")]
    Parse { path: PathBuf, text: String },
}

impl SensorReadError {
    /// The file is gone (a driver was unloaded, hwmon numbers changed).
    pub(crate) fn is_gone(&self) -> bool {
        matches!(self, SensorReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Reads a millidegree file into degrees Celsius.
pub(crate) fn read_millidegrees(path: &Path) -> Result<f32, SensorReadError> {
    let text = read_sysfs_attribute(path).map_err(|source| SensorReadError::Io { path: path.to_path_buf(), source })?;
    parse_millidegrees(&text)
        .ok_or_else(|| SensorReadError::Parse { path: path.to_path_buf(), text: text.trim().to_owned() })
}

/// A small attribute such as `name`, `type` or `tempN_label`, trimmed; `None` when absent.
pub(crate) fn read_attribute(path: &Path) -> Option<String> {
    match read_sysfs_attribute(path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "unreadable sysfs attribute");
            None
        }
    }
}

/// The names in `dir`; empty when it does not exist (a host without that class).
pub(crate) fn entry_names(dir: &Path) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot list sysfs directory");
            }
            return Vec::new();
        }
    };
    entries
        .filter_map(|entry| match entry {
            Ok(entry) => entry.file_name().into_string().ok(),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "skipping unreadable entry");
                None
            }
        })
        .collect()
}

/// The number in `name` after `prefix` and before `suffix` ("temp12_input" → 12).
pub(crate) fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Entries of `dir` named `prefix` + a number, sorted by that number so `hwmon10`
/// comes after `hwmon9`.
pub(crate) fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> =
        entry_names(dir).into_iter().filter_map(|name| Some((numbered(&name, prefix, "")?, dir.join(name)))).collect();
    found.sort_by_key(|(n, _)| *n);
    found
}

/// One `tempN_input` of a hwmon chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TempInput {
    pub index: u32,
    pub input: PathBuf,
    pub label: Option<String>,
}

/// The directory holding a hwmon device's attributes: the device itself on current
/// kernels, its `device/` for old drivers that registered them on the parent.
pub(crate) fn attribute_dir(hwmon: &Path) -> PathBuf {
    if hwmon.join("name").exists() || !hwmon.join("device/name").exists() {
        hwmon.to_path_buf()
    } else {
        hwmon.join("device")
    }
}

/// The `tempN_input` files of one hwmon device, by N, with their labels.
pub(crate) fn temp_inputs(hwmon: &Path) -> Vec<TempInput> {
    let dir = attribute_dir(hwmon);
    let mut inputs: Vec<TempInput> = entry_names(&dir)
        .into_iter()
        .filter_map(|name| {
            let index = numbered(&name, "temp", "_input")?;
            Some(TempInput {
                index,
                input: dir.join(&name),
                label: read_attribute(&dir.join(format!("temp{index}_label"))),
            })
        })
        .collect();
    inputs.sort_by_key(|t| t.index);
    inputs
}

/// The chip name of a hwmon device (`k10temp`, `amdgpu`, `nvme`...).
pub(crate) fn chip_name(hwmon: &Path) -> Option<String> {
    read_attribute(&attribute_dir(hwmon).join("name"))
}

/// The hwmon devices registered by the driver of `device`. A hwmon whose parent is a
/// bus device (PCI, SCSI) sits in a `hwmon/` glue directory; one whose parent is a
/// class device (an NVMe controller) sits directly in it (drivers/base/core.c,
/// `get_device_parent`). Both are searched.
pub(crate) fn hwmon_of_device(device: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        numbered_entries(&device.join("hwmon"), "hwmon").into_iter().map(|(_, path)| path).collect();
    found.extend(numbered_entries(device, "hwmon").into_iter().map(|(_, path)| path));
    found
}

/// The temperature input of a device's hwmon that best represents it: the first input
/// whose label is in `preferred` (in that order), else the lowest-numbered input.
pub(crate) fn device_temp_input(device: &Path, preferred: &[&str]) -> Option<PathBuf> {
    let inputs: Vec<TempInput> = hwmon_of_device(device).iter().flat_map(|hwmon| temp_inputs(hwmon)).collect();
    preferred
        .iter()
        .find_map(|want| inputs.iter().find(|t| t.label.as_deref() == Some(*want)))
        .or_else(|| inputs.iter().min_by_key(|t| t.index))
        .map(|t| t.input.clone())
}

/// Fake sysfs trees for the collectors' tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::path::Path;

    /// Writes `content` at `root/rel`, creating the directories on the way.
    pub(crate) fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("a file path has a parent")).expect("mkdir");
        fs::write(path, content).expect("write fixture");
    }
}

#[cfg(test)]
mod tests {
    use super::fake::write;
    use super::*;

    #[test]
    fn numbered_accepts_only_digits_between_prefix_and_suffix() {
        assert_eq!(numbered("temp12_input", "temp", "_input"), Some(12));
        assert_eq!(numbered("temp_input", "temp", "_input"), None);
        assert_eq!(numbered("temp1_label", "temp", "_input"), None);
        assert_eq!(numbered("hwmon3", "hwmon", ""), Some(3));
        assert_eq!(numbered("card0-HDMI-A-1", "card", ""), None);
    }

    #[test]
    fn numbered_entries_sort_numerically() {
        let dir = tempfile::tempdir().unwrap();
        for n in [10, 2, 9] {
            write(dir.path(), &format!("hwmon{n}/name"), "x\n");
        }
        let order: Vec<u32> = numbered_entries(dir.path(), "hwmon").iter().map(|(n, _)| *n).collect();
        assert_eq!(order, vec![2, 9, 10]);
    }

    #[test]
    fn temp_inputs_carry_labels_and_sort_by_index() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hwmon0/name", "k10temp\n");
        write(dir.path(), "hwmon0/temp3_input", "40000\n");
        write(dir.path(), "hwmon0/temp1_input", "50000\n");
        write(dir.path(), "hwmon0/temp1_label", "Tctl\n");
        let inputs = temp_inputs(&dir.path().join("hwmon0"));
        assert_eq!(inputs.len(), 2);
        assert_eq!((inputs[0].index, inputs[0].label.as_deref()), (1, Some("Tctl")));
        assert_eq!((inputs[1].index, inputs[1].label.as_deref()), (3, None));
    }

    #[test]
    fn old_style_hwmon_reads_attributes_from_device() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hwmon0/device/name", "coretemp\n");
        write(dir.path(), "hwmon0/device/temp1_input", "61000\n");
        let hwmon = dir.path().join("hwmon0");
        assert_eq!(chip_name(&hwmon).as_deref(), Some("coretemp"));
        assert_eq!(temp_inputs(&hwmon).len(), 1);
    }

    #[test]
    fn read_millidegrees_reports_garbage_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "bad", "N/A\n");
        let bad = read_millidegrees(&dir.path().join("bad")).unwrap_err();
        assert!(matches!(bad, SensorReadError::Parse { .. }) && !bad.is_gone());
        assert!(read_millidegrees(&dir.path().join("missing")).unwrap_err().is_gone());
    }

    #[test]
    fn device_temp_input_prefers_labels_then_lowest_index() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("device");
        write(&device, "hwmon/hwmon4/temp2_input", "1\n");
        write(&device, "hwmon/hwmon4/temp3_input", "1\n");
        write(&device, "hwmon/hwmon4/temp3_label", "edge\n");
        assert_eq!(device_temp_input(&device, &["edge"]), Some(device.join("hwmon/hwmon4/temp3_input")));
        assert_eq!(device_temp_input(&device, &["pkg"]), Some(device.join("hwmon/hwmon4/temp2_input")));
    }
}
