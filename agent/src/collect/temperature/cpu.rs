//! The CPU package temperature: one sensor chosen once among the hwmon chips and
//! thermal zones, then only that file is re-read.
//!
//! Ranking, best first: the die/package sensor of a CPU driver (k10temp and zenpower
//! `Tdie`/`Tctl`, coretemp `Package id N`), the SoC sensor of ARM boards (`cpu_thermal`,
//! `soc_thermal`), the `x86_pkg_temp` and CPU thermal zones, single cores, and last the
//! ACPI zone (`acpitz`), which on many boards is a motherboard sensor, not the CPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::hwmon::{self, SensorReadError};
use super::hwmon_temps::{self, HwmonInputs, HwmonSensor, HwmonTemperatures};
use crate::collect::probe::{JudgedAt, Probed, REPROBE_AFTER};

/// A sensor found by discovery: its file, what it is, and how well it represents the
/// CPU package.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    path: PathBuf,
    description: String,
    score: u32,
}

/// How well a hwmon input represents the CPU package; `None` when it is not a CPU
/// sensor at all (a GPU, a disk, a NIC...).
fn hwmon_score(chip: &str, label: Option<&str>) -> Option<u32> {
    match (chip, label) {
        // Tctl is a fan-control value, offset from the die temperature on some parts
        // (Documentation/hwmon/k10temp.rst); Tdie is the die itself where reported.
        ("k10temp" | "zenpower", Some("Tdie")) => Some(100),
        ("k10temp" | "zenpower", Some("Tctl")) => Some(95),
        ("k10temp" | "zenpower", _) => Some(40),
        ("coretemp", Some(l)) if l.starts_with("Package id") => Some(100),
        ("coretemp", _) => Some(40),
        // The thermal core names a zone's hwmon after the zone type, '-' becoming '_'.
        ("cpu_thermal" | "soc_thermal" | "cpu0_thermal" | "cpu-thermal", _) => Some(90),
        ("acpitz", _) => Some(10),
        _ => None,
    }
}

/// How well a thermal zone type represents the CPU package.
fn zone_score(zone_type: &str) -> Option<u32> {
    match zone_type {
        "x86_pkg_temp" => Some(80),
        "cpu-thermal" | "cpu_thermal" | "soc-thermal" | "soc_thermal" | "cpu0-thermal" => Some(80),
        "acpitz" => Some(10),
        _ => None,
    }
}

/// The CPU candidates among the hwmon inputs, in hwmon order.
fn hwmon_candidates(inputs: &[HwmonSensor]) -> Vec<Candidate> {
    inputs
        .iter()
        .filter_map(|input| {
            let chip = input.driver.as_deref()?;
            let score = hwmon_score(chip, input.label.as_deref())?;
            let label = input.label.as_deref().unwrap_or("");
            Some(Candidate {
                description: format!("hwmon {chip} temp{} {label}", input.index),
                path: input.input.clone(),
                score,
            })
        })
        .collect()
}

/// The CPU candidates among the thermal zones, in zone order.
fn zone_candidates(sys_root: &Path) -> Vec<Candidate> {
    hwmon::numbered_entries(&sys_root.join("class/thermal"), "thermal_zone")
        .into_iter()
        .filter_map(|(_, dir)| {
            let zone_type = hwmon::read_attribute(&dir.join("type"))?;
            Some(Candidate {
                score: zone_score(&zone_type)?,
                description: format!("thermal zone {zone_type}"),
                path: dir.join("temp"),
            })
        })
        .collect()
}

/// The best candidate that can be read now; the first one wins a tie.
fn best_candidate(sys_root: &Path, hwmon_inputs: &[HwmonSensor]) -> Option<Candidate> {
    let mut candidates = hwmon_candidates(hwmon_inputs);
    candidates.extend(zone_candidates(sys_root));
    // Stable sort: on a tie hwmon comes before zones and lower numbers first.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.score));
    candidates.into_iter().find(|c| match hwmon::read_millidegrees(&c.path) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(sensor = %c.description, error = %e, "skipping unreadable CPU sensor");
            false
        }
    })
}

/// The CPU package temperature sensor, and every hwmon temperature input found by
/// the same discovery (for the Prometheus scrape, which reads them itself). Looked
/// for when built; on a host without a CPU sensor (a VM, a container without
/// `/sys/class/hwmon`) it is looked for again only every [`REPROBE_AFTER`], and
/// reads touch no file in between.
#[derive(Debug)]
pub struct CpuTemperature {
    sys_root: PathBuf,
    sensor: Probed<Candidate>,
    /// Every hwmon temperature input, as of the last discovery.
    hwmon: Arc<HwmonInputs>,
    judged: JudgedAt,
    read_failures: u64,
    /// Whether the last read failed, so a broken sensor warns once, not every poll.
    failing: bool,
}

impl CpuTemperature {
    /// Finds the sensor that best represents the CPU package, if there is one now.
    pub fn new(sys_root: &Path) -> Self {
        Self::at(sys_root, Instant::now())
    }

    fn at(sys_root: &Path, now: Instant) -> Self {
        let mut hwmon = Arc::default();
        Self {
            sys_root: sys_root.to_path_buf(),
            sensor: Probed::first(now, REPROBE_AFTER, || discover(sys_root, &mut hwmon)),
            hwmon,
            judged: JudgedAt::default(),
            read_failures: 0,
            failing: false,
        }
    }

    /// Reads the chosen sensor, in °C; `None` when there is none or it failed.
    pub fn read(&mut self) -> Option<f32> {
        let now = self.judged.take();
        self.read_at(now)
    }

    /// The hwmon temperature inputs as of the last discovery, to be read by whoever
    /// renders them (reading here would cost every metrics request those files).
    pub fn hwmon_temperatures(&self) -> HwmonTemperatures {
        HwmonTemperatures::of(&self.hwmon)
    }

    /// True when the next [`read`](Self::read) touches no file: no sensor, and the
    /// next search not due. A sensor read may wait (hwmon drivers query their chip
    /// over a bus), so with a sensor the answer is false.
    pub fn never_waits(&mut self) -> bool {
        let now = self.judged.judge();
        self.sensor.is_idle_at(now) && !self.hwmon.moved()
    }

    /// When the sensor's file has vanished (a driver reload renumbers hwmon devices)
    /// the sensor is searched again at once; so are all of them when a scrape found
    /// one of the other hwmon inputs gone.
    fn read_at(&mut self, now: Instant) -> Option<f32> {
        let Self { sys_root, sensor, hwmon, .. } = self;
        if hwmon.moved() {
            tracing::info!("hwmon devices changed; looking for temperature sensors again");
            sensor.probe(now, || discover(sys_root, hwmon));
        }
        let sensor = sensor.get(now, || discover(sys_root, hwmon))?;
        let result = match hwmon::read_millidegrees(&sensor.path) {
            Err(e) if e.is_gone() => self.rediscover_and_read(now, e),
            other => other,
        };
        match result {
            Ok(celsius) => {
                self.failing = false;
                Some(celsius)
            }
            Err(e) => {
                self.note_failure(&e);
                None
            }
        }
    }

    /// The file being read, for diagnostics; `None` while there is no sensor.
    pub fn sensor_path(&self) -> Option<&Path> {
        self.sensor.found().map(|sensor| sensor.path.as_path())
    }

    /// How many reads gave no temperature since discovery.
    pub fn read_failures(&self) -> u64 {
        self.read_failures
    }

    fn rediscover_and_read(&mut self, now: Instant, gone: SensorReadError) -> Result<f32, SensorReadError> {
        let Self { sys_root, sensor, hwmon, .. } = self;
        sensor.probe(now, || discover(sys_root, hwmon));
        let Some(sensor) = self.sensor.found() else {
            return Err(gone);
        };
        tracing::info!(sensor = %sensor.description, "CPU temperature sensor moved; using the new one");
        hwmon::read_millidegrees(&sensor.path)
    }

    fn note_failure(&mut self, error: &SensorReadError) {
        self.read_failures += 1;
        if self.failing {
            tracing::debug!(error = %error, failures = self.read_failures, "CPU temperature unreadable");
        } else {
            tracing::warn!(error = %error, "CPU temperature unreadable");
        }
        self.failing = true;
    }
}

/// One search for the CPU sensor, logged; the hwmon inputs it walked through
/// replace `hwmon_inputs`.
fn discover(sys_root: &Path, hwmon_inputs: &mut Arc<HwmonInputs>) -> Option<Candidate> {
    let inputs = hwmon_temps::discover(sys_root);
    let found = best_candidate(sys_root, &inputs);
    *hwmon_inputs = Arc::new(HwmonInputs::new(inputs));
    match &found {
        Some(sensor) => {
            tracing::debug!(sensor = %sensor.description, path = %sensor.path.display(), "CPU temperature sensor");
        }
        None => tracing::debug!(
            root = %sys_root.display(),
            retry_s = REPROBE_AFTER.as_secs(),
            "no CPU temperature sensor found"
        ),
    }
    found
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use super::super::hwmon::fake::write;
    use super::*;

    /// An AMD desktop: a k10temp chip (Tctl and two CCDs), an amdgpu and an nvme chip,
    /// an `acpitz` zone.
    fn amd_desktop(root: &Path) {
        write(root, "class/hwmon/hwmon0/name", "nvme\n");
        write(root, "class/hwmon/hwmon0/temp1_input", "38850\n");
        write(root, "class/hwmon/hwmon0/temp1_label", "Composite\n");
        write(root, "class/hwmon/hwmon1/name", "amdgpu\n");
        write(root, "class/hwmon/hwmon1/temp1_input", "52000\n");
        write(root, "class/hwmon/hwmon1/temp1_label", "edge\n");
        write(root, "class/hwmon/hwmon2/name", "k10temp\n");
        write(root, "class/hwmon/hwmon2/temp3_input", "47250\n");
        write(root, "class/hwmon/hwmon2/temp3_label", "Tccd1\n");
        write(root, "class/hwmon/hwmon2/temp1_input", "49875\n");
        write(root, "class/hwmon/hwmon2/temp1_label", "Tctl\n");
        write(root, "class/hwmon/hwmon2/temp4_input", "45000\n");
        write(root, "class/hwmon/hwmon2/temp4_label", "Tccd2\n");
        write(root, "class/thermal/thermal_zone0/type", "acpitz\n");
        write(root, "class/thermal/thermal_zone0/temp", "16800\n");
    }

    #[test]
    fn picks_k10temp_tctl_among_several_chips() {
        let dir = tempfile::tempdir().unwrap();
        amd_desktop(dir.path());
        let mut cpu = CpuTemperature::new(dir.path());
        assert!(cpu.sensor_path().unwrap().ends_with("hwmon2/temp1_input"));
        assert_eq!(cpu.read(), Some(49.875));
    }

    #[test]
    fn picks_coretemp_package_over_cores() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "class/hwmon/hwmon0/name", "acpitz\n");
        write(root, "class/hwmon/hwmon0/temp1_input", "27800\n");
        write(root, "class/hwmon/hwmon3/name", "coretemp\n");
        write(root, "class/hwmon/hwmon3/temp2_input", "58000\n");
        write(root, "class/hwmon/hwmon3/temp2_label", "Core 0\n");
        write(root, "class/hwmon/hwmon3/temp1_input", "61000\n");
        write(root, "class/hwmon/hwmon3/temp1_label", "Package id 0\n");
        let mut cpu = CpuTemperature::new(root);
        assert!(cpu.sensor_path().unwrap().ends_with("hwmon3/temp1_input"));
        assert_eq!(cpu.read(), Some(61.0));
    }

    #[test]
    fn falls_back_to_the_package_thermal_zone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "class/thermal/thermal_zone0/type", "acpitz\n");
        write(root, "class/thermal/thermal_zone0/temp", "27800\n");
        write(root, "class/thermal/thermal_zone1/type", "x86_pkg_temp\n");
        write(root, "class/thermal/thermal_zone1/temp", "55000\n");
        let mut cpu = CpuTemperature::new(root);
        assert!(cpu.sensor_path().unwrap().ends_with("thermal_zone1/temp"));
        assert_eq!(cpu.read(), Some(55.0));
    }

    #[test]
    fn arm_board_uses_cpu_thermal_zone() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(dir.path(), "class/thermal/thermal_zone0/temp", "48686\n");
        assert_eq!(CpuTemperature::new(dir.path()).read(), Some(48.686));
    }

    #[test]
    fn no_sensor_at_all_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CpuTemperature::new(dir.path()).read(), None);
        // Non-CPU chips only (a disk and a GPU) are not a CPU temperature either.
        write(dir.path(), "class/hwmon/hwmon0/name", "drivetemp\n");
        write(dir.path(), "class/hwmon/hwmon0/temp1_input", "30000\n");
        let mut cpu = CpuTemperature::new(dir.path());
        assert_eq!(cpu.sensor_path(), None);
        assert_eq!(cpu.read(), None);
    }

    #[test]
    fn skips_a_sensor_that_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "class/hwmon/hwmon0/name", "coretemp\n");
        write(root, "class/hwmon/hwmon0/temp1_input", "\n");
        write(root, "class/hwmon/hwmon0/temp1_label", "Package id 0\n");
        write(root, "class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
        write(root, "class/thermal/thermal_zone0/temp", "50000\n");
        assert!(CpuTemperature::new(root).sensor_path().unwrap().ends_with("thermal_zone0/temp"));
    }

    #[test]
    fn rediscovers_when_the_sensor_file_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        amd_desktop(dir.path());
        let mut cpu = CpuTemperature::new(dir.path());
        // A k10temp reload: hwmon2 is gone and the chip comes back as hwmon5.
        std::fs::remove_dir_all(dir.path().join("class/hwmon/hwmon2")).unwrap();
        write(dir.path(), "class/hwmon/hwmon5/name", "k10temp\n");
        write(dir.path(), "class/hwmon/hwmon5/temp1_input", "51000\n");
        write(dir.path(), "class/hwmon/hwmon5/temp1_label", "Tctl\n");
        assert_eq!(cpu.read(), Some(51.0));
        assert!(cpu.sensor_path().unwrap().ends_with("hwmon5/temp1_input"));
        assert_eq!(cpu.read_failures(), 0);
    }

    #[test]
    fn counts_failed_reads() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
        write(dir.path(), "class/thermal/thermal_zone0/temp", "50000\n");
        let mut cpu = CpuTemperature::new(dir.path());
        write(dir.path(), "class/thermal/thermal_zone0/temp", "garbage\n");
        assert_eq!(cpu.read(), None);
        assert_eq!(cpu.read(), None);
        assert_eq!(cpu.read_failures(), 2);
        write(dir.path(), "class/thermal/thermal_zone0/temp", "50500\n");
        assert_eq!(cpu.read(), Some(50.5));
    }

    #[test]
    fn a_sensor_that_appears_later_is_found_after_the_bound_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let mut cpu = CpuTemperature::at(dir.path(), start);
        assert_eq!(cpu.read_at(start), None);
        // coretemp loaded a second later. Had the collector looked before the bound,
        // it would have found the sensor.
        write(dir.path(), "class/hwmon/hwmon0/name", "coretemp\n");
        write(dir.path(), "class/hwmon/hwmon0/temp1_input", "61000\n");
        write(dir.path(), "class/hwmon/hwmon0/temp1_label", "Package id 0\n");
        for seconds in [1, 30, 59] {
            let now = start + Duration::from_secs(seconds);
            assert!(cpu.sensor.is_idle_at(now));
            assert_eq!(cpu.read_at(now), None, "looked again after {seconds} s");
        }
        assert_eq!(cpu.read_at(start + REPROBE_AFTER), Some(61.0));
        assert!(!cpu.sensor.is_idle_at(start + REPROBE_AFTER), "a sensor read may wait on its chip");
        assert_eq!(cpu.read_failures(), 0);
    }

    #[test]
    fn a_sensor_that_goes_away_is_searched_again_only_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        amd_desktop(dir.path());
        let start = Instant::now();
        let mut cpu = CpuTemperature::at(dir.path(), start);
        assert_eq!(cpu.read_at(start), Some(49.875));
        // k10temp unloaded, acpitz gone too: no CPU sensor left.
        fs::remove_dir_all(dir.path().join("class/hwmon/hwmon2")).unwrap();
        fs::remove_dir_all(dir.path().join("class/thermal")).unwrap();
        let gone = start + Duration::from_secs(5);
        assert_eq!(cpu.read_at(gone), None);
        assert!(cpu.sensor.is_idle_at(gone + Duration::from_secs(1)), "nothing is read until the bound");
        write(dir.path(), "class/hwmon/hwmon7/name", "k10temp\n");
        write(dir.path(), "class/hwmon/hwmon7/temp1_input", "50000\n");
        write(dir.path(), "class/hwmon/hwmon7/temp1_label", "Tctl\n");
        assert_eq!(cpu.read_at(gone + Duration::from_secs(30)), None);
        assert_eq!(cpu.read_at(gone + REPROBE_AFTER), Some(50.0));
    }

    #[test]
    fn hwmon_inputs_come_from_the_same_discovery_and_follow_a_renumbering() {
        let dir = tempfile::tempdir().unwrap();
        amd_desktop(dir.path());
        let mut cpu = CpuTemperature::new(dir.path());
        let sensors = |cpu: &CpuTemperature| -> Vec<(String, Option<f32>)> {
            cpu.hwmon_temperatures().read().iter().map(|r| (r.sensor.chip.clone(), r.celsius)).collect()
        };
        let expected = [("nvme", 38.85), ("amdgpu", 52.0), ("k10temp", 49.875), ("k10temp", 47.25), ("k10temp", 45.0)];
        assert_eq!(sensors(&cpu), expected.map(|(chip, celsius)| (chip.to_owned(), Some(celsius))));
        // The nvme driver reloaded: hwmon0 is gone, the chip is back as hwmon8.
        fs::remove_dir_all(dir.path().join("class/hwmon/hwmon0")).unwrap();
        write(dir.path(), "class/hwmon/hwmon8/name", "nvme\n");
        write(dir.path(), "class/hwmon/hwmon8/temp1_input", "39000\n");
        assert_eq!(sensors(&cpu)[0], ("nvme".to_owned(), None), "a scrape finds it gone");
        assert!(!cpu.never_waits(), "the next sample discovers again");
        assert_eq!(cpu.read(), Some(49.875));
        assert_eq!(sensors(&cpu).last(), Some(&("nvme".to_owned(), Some(39.0))));
        assert!(cpu.sensor_path().unwrap().ends_with("hwmon2/temp1_input"));
    }

    #[test]
    fn never_waits_only_without_a_sensor() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CpuTemperature::new(dir.path()).never_waits());
        amd_desktop(dir.path());
        assert!(!CpuTemperature::new(dir.path()).never_waits());
    }
}
