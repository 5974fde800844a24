//! The Prometheus text exposition format 0.0.4 of one scrape (`GET /metrics`).
//!
//! Host series keep node_exporter 1.5's names, labels and help texts, so its
//! dashboards and alerts work unchanged; the rest are `socktop_*`. Per-process
//! series are bounded: per command name up to a cap (the rest summed into
//! `comm="other"`), and only the top N processes by CPU carry a `pid` label.
//! docs/PROMETHEUS.md lists every series.

use std::fmt::Write as _;

use crate::collect::cpu::{CPU_MODES, CpuStat};
use crate::collect::disks::Disk;
use crate::collect::gpu::GpuReading;
use crate::collect::memory::MemoryInfo;
use crate::collect::network::Network;
use crate::collect::process_groups::{CommTotals, TopProcess};
use crate::collect::temperature::hwmon_temps::HwmonReading;

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape exports.
#[derive(Debug, Clone, Copy)]
pub struct Scrape<'a> {
    pub host: HostFigures<'a>,
    pub processes: ProcessFigures<'a>,
    pub agent: &'a AgentHealth,
}

/// The host's figures, with node_exporter's names.
#[derive(Debug, Clone, Copy)]
pub struct HostFigures<'a> {
    pub cpu: &'a CpuStat,
    /// `USER_HZ`: the unit of `/proc/stat`'s counters.
    pub ticks_per_second: u64,
    pub boot_time_unix: u64,
    pub memory: &'a MemoryInfo,
    pub networks: &'a [Network],
    /// Real filesystems, as the disks answer lists them.
    pub filesystems: &'a [Disk],
    pub gpus: &'a [GpuReading],
    /// Every hwmon temperature input.
    pub hwmon: &'a [HwmonReading<'a>],
}

/// Per-process figures, bounded.
#[derive(Debug, Clone, Copy)]
pub struct ProcessFigures<'a> {
    pub comms: &'a [CommTotals],
    pub top: &'a [TopProcess],
}

/// The agent's own state.
#[derive(Debug, Clone, Default)]
pub struct AgentHealth {
    pub version: &'static str,
    /// `ebpf` or `proc`.
    pub cpu_source: &'static str,
    /// Why the source is `proc`, when it fell back.
    pub fallback_reason: Option<String>,
    /// The eBPF program's error counters by kind (`map_full`, ...); empty on /proc.
    pub ebpf_errors: Vec<(&'static str, u64)>,
    /// Seconds this scrape took to collect.
    pub scrape_seconds: f64,
    /// Processes listed and schedstat files read by this scrape.
    pub processes: u64,
    pub schedstat_reads: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// Writes families; a family's `# HELP`/`# TYPE` lines are written with its first
/// sample, so a family without samples (no GPU) leaves no trace.
struct Writer {
    out: String,
    pending: Option<(&'static str, &'static str, Kind)>,
}

impl Writer {
    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind) {
        self.pending = Some((name, help, kind));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        if let Some((family, help, kind)) = self.pending.take() {
            let kind = if kind == Kind::Counter { "counter" } else { "gauge" };
            let _ = writeln!(self.out, "# HELP {family} {help}\n# TYPE {family} {kind}");
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(text, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &'static str, help: &'static str, kind: Kind, value: impl Value) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }
}

/// A sample value in the format's notation.
trait Value {
    fn write(self, out: &mut String);
}

impl Value for u64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust prints the shortest text that reads back as the same f64.
            let _ = write!(out, "{self}");
        }
    }
}

/// Label values escape backslash, double quote and line feed (the format's rule).
fn escape_label_value(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A family of one value per item: its name, help text and how to read the value.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// The f64 of the decimal an f32 prints as (45.123, not 45.12300109863281): the
/// value a sensor reported, in the format's notation.
fn shortest_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Renders one scrape.
pub fn encode(scrape: &Scrape<'_>) -> String {
    let mut w = Writer { out: String::with_capacity(16 * 1024), pending: None };
    write_host(&mut w, &scrape.host);
    write_hwmon(&mut w, scrape.host.hwmon);
    write_gpus(&mut w, scrape.host.gpus);
    write_comms(&mut w, scrape.processes.comms);
    write_top(&mut w, scrape.processes.top);
    write_agent(&mut w, scrape.agent);
    w.out
}

fn write_host(w: &mut Writer, host: &HostFigures<'_>) {
    w.family("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", Kind::Counter);
    let per_second = host.ticks_per_second.max(1) as f64;
    for (cpu, ticks) in &host.cpu.cores {
        let cpu = cpu.to_string();
        for (mode, value) in CPU_MODES.iter().zip(ticks.modes) {
            w.sample("node_cpu_seconds_total", &[("cpu", &cpu), ("mode", mode)], value as f64 / per_second);
        }
    }
    w.single("node_boot_time_seconds", "Node boot time, in unixtime.", Kind::Gauge, host.boot_time_unix);
    let memory = host.memory;
    for (name, help, value) in [
        ("node_memory_MemTotal_bytes", "Memory information field MemTotal_bytes.", memory.mem_total),
        ("node_memory_MemFree_bytes", "Memory information field MemFree_bytes.", memory.mem_free),
        ("node_memory_MemAvailable_bytes", "Memory information field MemAvailable_bytes.", memory.mem_available),
        ("node_memory_Buffers_bytes", "Memory information field Buffers_bytes.", memory.buffers),
        ("node_memory_Cached_bytes", "Memory information field Cached_bytes.", memory.cached),
        ("node_memory_SwapTotal_bytes", "Memory information field SwapTotal_bytes.", memory.swap_total),
        ("node_memory_SwapFree_bytes", "Memory information field SwapFree_bytes.", memory.swap_free),
    ] {
        w.single(name, help, Kind::Gauge, value);
    }
    let networks: [Family<Network, u64>; 2] = [
        ("node_network_receive_bytes_total", "Network device statistic receive_bytes.", |n| n.received),
        ("node_network_transmit_bytes_total", "Network device statistic transmit_bytes.", |n| n.transmitted),
    ];
    for (name, help, pick) in networks {
        w.family(name, help, Kind::Counter);
        for network in host.networks {
            w.sample(name, &[("device", &network.name)], pick(network));
        }
    }
    let filesystems: [Family<Disk, u64>; 3] = [
        ("node_filesystem_size_bytes", "Filesystem size in bytes.", |f| f.total),
        ("node_filesystem_free_bytes", "Filesystem free space in bytes.", |f| f.free),
        ("node_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes.", |f| f.available),
    ];
    for (name, help, pick) in filesystems {
        w.family(name, help, Kind::Gauge);
        for fs in host.filesystems {
            let labels = [("device", fs.name.as_str()), ("fstype", &fs.fs_type), ("mountpoint", &fs.mount_point)];
            w.sample(name, &labels, pick(fs));
        }
    }
}

/// node_exporter's hwmon series for temperature inputs: the same names, labels and
/// help texts, so its dashboards (which join on `node_hwmon_chip_names` and
/// `node_hwmon_sensor_label` to show readable names) work unchanged.
fn write_hwmon(w: &mut Writer, readings: &[HwmonReading<'_>]) {
    w.family("node_hwmon_chip_names", "Annotation metric for human-readable chip names", Kind::Gauge);
    let mut chips: Vec<(&str, &str)> =
        readings.iter().filter_map(|r| Some((r.sensor.chip.as_str(), r.sensor.chip_name.as_deref()?))).collect();
    chips.dedup();
    for (chip, chip_name) in chips {
        w.sample("node_hwmon_chip_names", &[("chip", chip), ("chip_name", chip_name)], 1u64);
    }
    w.family("node_hwmon_sensor_label", "Label for given chip and sensor", Kind::Gauge);
    for reading in readings {
        let sensor = reading.sensor;
        let Some(label) = &sensor.label else { continue };
        let labels = [("chip", sensor.chip.as_str()), ("sensor", &sensor.sensor), ("label", label)];
        w.sample("node_hwmon_sensor_label", &labels, 1u64);
    }
    w.family("node_hwmon_temp_celsius", "Hardware monitor for temperature (input)", Kind::Gauge);
    for reading in readings {
        let Some(celsius) = reading.celsius else { continue };
        let labels = [("chip", reading.sensor.chip.as_str()), ("sensor", &reading.sensor.sensor)];
        w.sample("node_hwmon_temp_celsius", &labels, shortest_f64(celsius));
    }
}

fn write_gpus(w: &mut Writer, gpus: &[GpuReading]) {
    let families: [Family<GpuReading, Option<f64>>; 4] = [
        ("socktop_gpu_utilization_ratio", "GPU busy share, 0 to 1.", |g| {
            g.utilization_pct.map(|pct| f64::from(pct) / 100.0)
        }),
        ("socktop_gpu_memory_used_bytes", "GPU memory in use, in bytes.", |g| g.mem_used_bytes.map(|b| b as f64)),
        ("socktop_gpu_memory_total_bytes", "GPU memory, in bytes.", |g| g.mem_total_bytes.map(|b| b as f64)),
        ("socktop_gpu_temperature_celsius", "GPU temperature, in degrees Celsius.", |g| g.temp_c.map(f64::from)),
    ];
    for (name, help, pick) in families {
        w.family(name, help, Kind::Gauge);
        for (index, gpu) in gpus.iter().enumerate() {
            let Some(value) = pick(gpu) else { continue };
            let index = index.to_string();
            let vendor = gpu.vendor.unwrap_or_default();
            w.sample(name, &[("gpu", &index), ("name", &gpu.name), ("vendor", vendor)], value);
        }
    }
}

/// A family of one value per item, with its type.
type TypedFamily<T> = (&'static str, &'static str, Kind, fn(&T) -> f64);

/// Writes each family with one sample per item, labelled by `labels`.
fn write_per_item<T, const N: usize>(
    w: &mut Writer,
    families: &[TypedFamily<T>],
    items: &[T],
    labels: impl Fn(&T) -> [(&'static str, String); N],
) {
    let labelled: Vec<_> = items.iter().map(|item| (labels(item), item)).collect();
    for &(name, help, kind, pick) in families {
        w.family(name, help, kind);
        for (labels, item) in &labelled {
            w.sample(name, &labels.each_ref().map(|(label, text)| (*label, text.as_str())), pick(item));
        }
    }
}

fn write_comms(w: &mut Writer, comms: &[CommTotals]) {
    let families: [TypedFamily<CommTotals>; 5] = [
        (
            "socktop_comm_cpu_seconds_total",
            "CPU time of the processes with this command name, exited ones included, in seconds.",
            Kind::Counter,
            |c| seconds(c.cpu_ns),
        ),
        (
            "socktop_comm_run_queue_wait_seconds_total",
            "Time the main threads of the processes with this command name spent runnable, waiting for a CPU.",
            Kind::Counter,
            |c| seconds(c.run_queue_wait_ns),
        ),
        (
            "socktop_comm_context_switches_total",
            "Times the main threads of the processes with this command name were switched onto a CPU.",
            Kind::Counter,
            |c| c.switches as f64,
        ),
        ("socktop_comm_processes", "Live processes with this command name.", Kind::Gauge, |c| c.processes as f64),
        (
            "socktop_comm_resident_memory_bytes",
            "Resident memory of the live processes with this command name, in bytes.",
            Kind::Gauge,
            |c| c.rss_bytes as f64,
        ),
    ];
    write_per_item(w, &families, comms, |comm| [("comm", comm.comm.clone())]);
}

fn write_top(w: &mut Writer, top: &[TopProcess]) {
    let families: [TypedFamily<TopProcess>; 3] = [
        (
            "socktop_top_process_cpu_ratio",
            "Share of the whole machine one of the processes using the most CPU used over the last interval, 0 to 1.",
            Kind::Gauge,
            |p| f64::from(p.cpu_percent) / 100.0,
        ),
        (
            "socktop_top_process_cpu_seconds_total",
            "CPU time of one of the processes using the most CPU, in seconds.",
            Kind::Counter,
            |p| seconds(p.cpu_ns),
        ),
        (
            "socktop_top_process_resident_memory_bytes",
            "Resident memory of one of the processes using the most CPU, in bytes.",
            Kind::Gauge,
            |p| p.rss_bytes as f64,
        ),
    ];
    write_per_item(w, &families, top, |p| [("pid", p.pid.to_string()), ("comm", p.comm.clone())]);
}

fn write_agent(w: &mut Writer, agent: &AgentHealth) {
    w.family("socktop_agent_build_info", "The agent's version; always 1.", Kind::Gauge);
    w.sample("socktop_agent_build_info", &[("version", agent.version)], 1u64);
    w.family(
        "socktop_agent_cpu_source",
        "Where per-process CPU time comes from, and why /proc when it fell back; always 1.",
        Kind::Gauge,
    );
    let reason = agent.fallback_reason.as_deref().unwrap_or_default();
    w.sample("socktop_agent_cpu_source", &[("source", agent.cpu_source), ("reason", reason)], 1u64);
    w.family(
        "socktop_agent_ebpf_errors_total",
        "Context switches the eBPF program could not count, by cause (map_full: its process map was full).",
        Kind::Counter,
    );
    for (kind, count) in &agent.ebpf_errors {
        w.sample("socktop_agent_ebpf_errors_total", &[("kind", kind)], *count);
    }
    w.single(
        "socktop_agent_scrape_collection_seconds",
        "Time this scrape took to collect, in seconds.",
        Kind::Gauge,
        agent.scrape_seconds,
    );
    w.single("socktop_agent_scrape_processes", "Processes this scrape listed.", Kind::Gauge, agent.processes);
    w.single(
        "socktop_agent_scrape_schedstat_reads",
        "Schedstat files this scrape read (only processes whose CPU time moved are read).",
        Kind::Gauge,
        agent.schedstat_reads,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::cpu::parse_proc_stat;
    use crate::collect::temperature::hwmon_temps::HwmonSensor;

    fn render(comms: &[CommTotals], gpus: &[GpuReading], agent: &AgentHealth) -> String {
        render_with_hwmon(comms, gpus, &[], agent)
    }

    fn render_with_hwmon(
        comms: &[CommTotals],
        gpus: &[GpuReading],
        hwmon: &[HwmonReading<'_>],
        agent: &AgentHealth,
    ) -> String {
        let cpu = parse_proc_stat("cpu  10 0 0 0 0 0 0 0\ncpu0 4705 150 1120 16250 520 0 23 7\n");
        let memory = MemoryInfo { mem_total: 2048, mem_available: 1024, ..MemoryInfo::default() };
        let networks = [Network { name: "eth0".into(), received: 5_000_000_000, transmitted: 9 }];
        let filesystems = [Disk {
            name: "/dev/vda".into(),
            total: 100,
            available: 40,
            temperature: None,
            is_partition: false,
            free: 50,
            mount_point: "/".into(),
            fs_type: "ext4".into(),
        }];
        let top =
            [TopProcess { pid: 42, comm: "busy".into(), cpu_ns: 1_500_000_000, cpu_percent: 50.0, rss_bytes: 4096 }];
        let scrape = Scrape {
            host: HostFigures {
                cpu: &cpu,
                ticks_per_second: 100,
                boot_time_unix: 1_700_000_000,
                memory: &memory,
                networks: &networks,
                filesystems: &filesystems,
                gpus,
                hwmon,
            },
            processes: ProcessFigures { comms, top: &top },
            agent,
        };
        encode(&scrape)
    }

    fn lines_of(text: &str, family: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(family)).map(str::to_owned).collect()
    }

    #[test]
    fn host_series_use_node_exporter_names_labels_and_base_units() {
        let text = render(&[], &[], &AgentHealth::default());
        let cpu = lines_of(&text, "node_cpu_seconds_total{");
        assert_eq!(cpu.len(), 8, "one series per mode of cpu0: {cpu:?}");
        assert!(cpu.contains(&r#"node_cpu_seconds_total{cpu="0",mode="user"} 47.05"#.to_owned()), "{cpu:?}");
        assert!(cpu.contains(&r#"node_cpu_seconds_total{cpu="0",mode="steal"} 0.07"#.to_owned()), "{cpu:?}");
        assert!(text.contains("\nnode_memory_MemAvailable_bytes 1024\n"));
        assert!(text.contains("\nnode_network_receive_bytes_total{device=\"eth0\"} 5000000000\n"));
        assert!(
            text.contains("\nnode_filesystem_avail_bytes{device=\"/dev/vda\",fstype=\"ext4\",mountpoint=\"/\"} 40\n")
        );
        assert!(text.contains("# TYPE node_cpu_seconds_total counter\n"));
        assert!(text.contains("# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.\n"));
    }

    #[test]
    fn every_family_is_announced_once_before_its_samples_and_empty_ones_not_at_all() {
        let text = render(&[], &[], &AgentHealth::default());
        assert!(!text.contains("socktop_gpu"), "no GPU, no GPU family");
        assert!(!text.contains("socktop_comm_"), "no names yet");
        let mut announced = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(announced.insert(rest.split(' ').next().unwrap().to_owned()), "twice: {line}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.contains(name), "{name} before its TYPE line");
            }
        }
    }

    #[test]
    fn per_name_series_and_the_top_list_carry_their_labels() {
        let comms = [CommTotals {
            comm: "web \"x\"\\y".into(),
            cpu_ns: 2_500_000_000,
            run_queue_wait_ns: 1_000_000,
            switches: 12,
            processes: 3,
            rss_bytes: 9000,
        }];
        let text = render(&comms, &[], &AgentHealth::default());
        assert!(text.contains("\nsocktop_comm_cpu_seconds_total{comm=\"web \\\"x\\\"\\\\y\"} 2.5\n"), "{text}");
        assert!(text.contains("\nsocktop_comm_run_queue_wait_seconds_total{comm=\"web \\\"x\\\"\\\\y\"} 0.001\n"));
        assert!(text.contains("\nsocktop_comm_processes{comm=\"web \\\"x\\\"\\\\y\"} 3\n"));
        assert!(text.contains("\nsocktop_top_process_cpu_ratio{pid=\"42\",comm=\"busy\"} 0.5\n"));
        assert!(text.contains("\nsocktop_top_process_cpu_seconds_total{pid=\"42\",comm=\"busy\"} 1.5\n"));
    }

    #[test]
    fn gpus_and_agent_health_have_their_series() {
        let gpu = GpuReading {
            name: "Radeon".into(),
            vendor: Some("amd"),
            utilization_pct: Some(37),
            mem_used_bytes: Some(1 << 30),
            mem_total_bytes: None,
            temp_c: Some(61.5),
        };
        let agent = AgentHealth {
            version: "0.1.0",
            cpu_source: "proc",
            fallback_reason: Some("needs root\nor CAP_BPF".into()),
            ebpf_errors: vec![("map_full", 3)],
            scrape_seconds: 0.25,
            processes: 71,
            schedstat_reads: 4,
        };
        let text = render(&[], &[gpu], &agent);
        assert!(text.contains("\nsocktop_gpu_utilization_ratio{gpu=\"0\",name=\"Radeon\",vendor=\"amd\"} 0.37\n"));
        assert!(text.contains("\nsocktop_gpu_temperature_celsius{gpu=\"0\",name=\"Radeon\",vendor=\"amd\"} 61.5\n"));
        assert!(!text.contains("socktop_gpu_memory_total_bytes{"), "unknown values are left out");
        assert!(text.contains("\nsocktop_agent_cpu_source{source=\"proc\",reason=\"needs root\\nor CAP_BPF\"} 1\n"));
        assert!(text.contains("\nsocktop_agent_ebpf_errors_total{kind=\"map_full\"} 3\n"));
        assert!(text.contains("\nsocktop_agent_build_info{version=\"0.1.0\"} 1\n"));
    }

    #[test]
    fn hwmon_temperatures_use_node_exporters_series() {
        let sensor = |chip: &str, chip_name: Option<&str>, index: u32, label: Option<&str>| HwmonSensor {
            chip: chip.into(),
            chip_name: chip_name.map(Into::into),
            sensor: format!("temp{index}"),
            label: label.map(Into::into),
            driver: chip_name.map(Into::into),
            index,
            input: std::path::PathBuf::new(),
        };
        let package = sensor("platform_coretemp_0", Some("coretemp"), 1, Some("Package id 0"));
        let core = sensor("platform_coretemp_0", Some("coretemp"), 2, Some("Core \"0\""));
        let nameless = sensor("hwmon9", None, 1, None);
        let readings = [
            HwmonReading { sensor: &package, celsius: Some(45.123) },
            HwmonReading { sensor: &core, celsius: None },
            HwmonReading { sensor: &nameless, celsius: Some(-5.5) },
        ];
        let text = render_with_hwmon(&[], &[], &readings, &AgentHealth::default());
        assert_eq!(
            lines_of(&text, "node_hwmon_chip_names{"),
            [r#"node_hwmon_chip_names{chip="platform_coretemp_0",chip_name="coretemp"} 1"#]
        );
        assert_eq!(
            lines_of(&text, "node_hwmon_sensor_label{"),
            [
                r#"node_hwmon_sensor_label{chip="platform_coretemp_0",sensor="temp1",label="Package id 0"} 1"#,
                r#"node_hwmon_sensor_label{chip="platform_coretemp_0",sensor="temp2",label="Core \"0\""} 1"#,
            ]
        );
        assert_eq!(
            lines_of(&text, "node_hwmon_temp_celsius{"),
            [
                r#"node_hwmon_temp_celsius{chip="platform_coretemp_0",sensor="temp1"} 45.123"#,
                r#"node_hwmon_temp_celsius{chip="hwmon9",sensor="temp1"} -5.5"#,
            ],
            "an unreadable input has no sample"
        );
        assert!(text.contains("# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input)\n"));
        assert!(!render(&[], &[], &AgentHealth::default()).contains("node_hwmon"), "no sensors, no families");
    }

    #[test]
    fn special_float_values_use_the_formats_spelling() {
        let mut out = String::new();
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e-7] {
            value.write(&mut out);
            out.push(' ');
        }
        assert_eq!(out, "NaN +Inf -Inf 0.0000001 ");
    }
}
