//! GPU and temperature sensors, seen through strace: the toggles stop every
//! access, hwmon inputs beyond the CPU's are read by scrapes only, and absent
//! sensors are not searched for on every request.

use std::time::Duration;

use e2e::ws::ask;
use e2e::{Agent, sysfs};

use super::raw_client;

/// Paths only the GPU and temperature collectors read.
const SENSOR_PATHS: [&str; 5] = ["/sys/class/hwmon", "/sys/class/thermal", "/sys/class/drm", "libnvidia-ml", "/hwmon"];

/// Runs the agent under strace, asks for metrics and disks, and returns the sensor
/// paths it touched.
async fn sensor_paths_touched(envs: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace");
    let agent = Agent::start_traced(&trace, &[], envs).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    ask(&mut ws, "get_metrics").await;
    ask(&mut ws, "get_disks").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ask(&mut ws, "get_metrics").await;
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    trace.lines().filter(|l| SENSOR_PATHS.iter().any(|p| l.contains(p))).map(str::to_owned).collect()
}

/// Whether strace runs here; where it does not, `test` is recorded as skipped.
fn strace_available(test: &str) -> bool {
    testkit::skip::needs_program(test, "strace", &["-V"], "strace").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_and_temperature_toggles_stop_all_sensor_access() {
    if !strace_available("gpu_and_temperature_toggles_stop_all_sensor_access") {
        return;
    }
    let on = sensor_paths_touched(&[]).await;
    assert!(!on.is_empty(), "with collection on the agent looks for sensors (the test can see it)");
    let off = sensor_paths_touched(&[("SOCKTOP_AGENT_GPU", "0"), ("SOCKTOP_AGENT_TEMP", "0")]).await;
    assert!(off.is_empty(), "toggled off, yet: {off:?}");
}

/// The hwmon inputs other than the CPU package sensor are for Prometheus: a
/// socktop client's metrics requests (every 500 ms) never read them, a scrape does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hwmon_temperatures_are_read_by_scrapes_not_by_metrics_requests() {
    if !strace_available("hwmon_temperatures_are_read_by_scrapes_not_by_metrics_requests") {
        return;
    }
    let sys = tempfile::tempdir().expect("tempdir");
    let coretemp = [("name", "coretemp\n"), ("temp1_input", "61000\n"), ("temp1_label", "Package id 0\n")];
    sysfs::fake_hwmon(sys.path(), "devices/platform/coretemp.0", "hwmon0", &coretemp);
    let nvme = [("name", "nvme\n"), ("temp1_input", "38850\n"), ("temp2_input", "41850\n")];
    sysfs::fake_hwmon(sys.path(), "devices/pci0000:00/0000:00:01.3/0000:01:00.0/nvme/nvme0", "hwmon1", &nvme);
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("trace");
    let sys_root = sys.path().to_str().expect("UTF-8 temp path");
    let agent = Agent::start_traced(&trace, &["--sys-root", sys_root], &[]).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    for _ in 0..5 {
        ask(&mut ws, "get_metrics").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A request that opens a file of its own marks the trace: the scrape follows it.
    let marker = "/proc/4194000/stat";
    ask(&mut ws, "get_process_metrics:4194000").await;
    let address = agent.address();
    let scraped = tokio::task::spawn_blocking(move || e2e::fleet::http_get(&address, "/metrics", &[])).await;
    assert_eq!(scraped.unwrap().expect("scrape").status, 200);
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    let (requests, scrape) = trace.split_once(marker).expect("the marker request is in the trace");
    let reads = |part: &str, input: &str| part.lines().filter(|l| l.contains(input) && l.contains("open")).count();
    assert!(reads(requests, "hwmon0/temp1_input") >= 5, "the CPU sensor is read per request (the test can see it)");
    for input in ["hwmon1/temp1_input", "hwmon1/temp2_input"] {
        assert_eq!(reads(requests, input), 0, "{input} read by metrics requests");
        assert_eq!(reads(scrape, input), 1, "{input} read once by the scrape");
    }
}

/// With GPU and temperature collection on (the defaults) and a sysfs without GPUs or
/// sensors, the agent searches once and then not per request: between two searches
/// (a minute apart) a request touches no sensor file and does not load NVML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_sensors_are_not_searched_on_every_request() {
    if !strace_available("absent_sensors_are_not_searched_on_every_request") {
        return;
    }
    let sys = tempfile::tempdir().expect("tempdir");
    for class in ["class/hwmon", "class/thermal", "class/drm", "class/block", "block"] {
        std::fs::create_dir_all(sys.path().join(class)).expect("fake sysfs");
    }
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("trace");
    let sys_root = sys.path().to_str().expect("UTF-8 temp path");
    let agent = Agent::start_traced(&trace, &["--sys-root", sys_root], &[]).expect("agent starts under strace");
    let mut ws = raw_client(&agent).await;
    ask(&mut ws, "get_metrics").await;
    ask(&mut ws, "get_disks").await;
    // A request that opens a file of its own, to mark the trace: what follows it
    // comes from the requests after the first ones.
    let marker = "/proc/4194000/stat";
    ask(&mut ws, "get_process_metrics:4194000").await;
    for _ in 0..20 {
        ask(&mut ws, "get_metrics").await;
        ask(&mut ws, "get_disks").await;
    }
    drop(agent);
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    let searched =
        ["class/hwmon", "class/thermal", "class/drm", "class/nvme", "block/"].map(|p| format!("{sys_root}/{p}"));
    let is_search = |line: &&str| line.contains("libnvidia-ml") || searched.iter().any(|p| line.contains(p.as_str()));
    let (before, after) = trace.split_once(marker).expect("the marker request is in the trace");
    assert!(before.lines().any(|l| is_search(&l)), "the first requests search (the test can see it)");
    let repeated: Vec<&str> = after.lines().filter(is_search).collect();
    assert!(repeated.is_empty(), "searched again within the bound: {repeated:?}");
}
