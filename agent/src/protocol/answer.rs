//! The JSON shapes of the socktop answers, with the exact field names the socktop
//! client decodes. Where the wire shape is the domain shape (a disk, a network
//! interface, a process detail, journal entries) the collectors' types serialise
//! as they are and are re-exported here; the shapes below exist for what only the
//! wire needs: empty fields the client requires, GPU aliases, error answers.

use std::time::UNIX_EPOCH;

use serde::Serialize;

pub use crate::collect::disks::Disk;
use crate::collect::gpu::GpuReading;
pub use crate::collect::journal::{JournalEntry, JournalResponse};
use crate::collect::metrics::MetricsSnapshot;
pub use crate::collect::network::Network;
pub use crate::collect::process_detail::{ProcessDetail, ThreadDetail};

/// The fast metrics answer (`get_metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Epoch milliseconds at which this snapshot was collected; cached answers keep it.
    pub sampled_at_ms: u64,
    /// Busy share of the whole machine, 0..100.
    pub cpu_total: f32,
    /// Busy share of each logical CPU, 0..100, in CPU order.
    pub cpu_per_core: Vec<f32>,
    pub mem_total: u64,
    pub mem_used: u64,
    pub swap_total: u64,
    pub swap_used: u64,
    pub hostname: String,
    pub cpu_temp_c: Option<f32>,
    /// Required by the client, although disks come from `get_disks`; always empty here.
    pub disks: Vec<Disk>,
    pub networks: Vec<Network>,
    /// Required by the client, although processes come from `get_processes`; always empty here.
    pub top_processes: Vec<TopProcess>,
    /// `null` when no GPU is found or GPU collection is off.
    pub gpus: Option<Vec<Gpu>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_count: Option<usize>,
}

impl From<&MetricsSnapshot> for Metrics {
    fn from(snapshot: &MetricsSnapshot) -> Self {
        let memory = snapshot.memory;
        let since_epoch = snapshot.sampled_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        Metrics {
            sampled_at_ms: since_epoch.as_millis() as u64,
            cpu_total: snapshot.cpu_total,
            cpu_per_core: snapshot.cpu_per_core.clone(),
            mem_total: memory.mem_total,
            mem_used: memory.mem_used,
            swap_total: memory.swap_total,
            swap_used: memory.swap_used,
            hostname: snapshot.hostname.clone(),
            cpu_temp_c: snapshot.cpu_temp_c,
            disks: Vec::new(),
            networks: snapshot.networks.clone(),
            top_processes: Vec::new(),
            gpus: snapshot.gpus.as_ref().map(|gpus| gpus.iter().map(Gpu::from).collect()),
            process_count: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopProcess {
    pub pid: u32,
    pub name: String,
    pub cpu_usage: f32,
    pub mem_bytes: u64,
}

/// One GPU. The client accepts several aliases per value but rejects an object that
/// carries two aliases of the same value, so each value appears under exactly one
/// client alias; `usage`, `memory_total` and `memory_used` are the README's names,
/// which the client ignores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    pub utilization_gpu_pct: Option<u32>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub temp_c: Option<f32>,
    pub usage: Option<u32>,
    pub memory_total: Option<u64>,
    pub memory_used: Option<u64>,
}

impl From<&GpuReading> for Gpu {
    /// Each value once under a name the client decodes and once under the README's
    /// name, which the client ignores (PROTOCOL.md, "Gpu object").
    fn from(reading: &GpuReading) -> Self {
        Gpu {
            name: reading.name.clone(),
            vendor: reading.vendor.map(str::to_owned),
            utilization_gpu_pct: reading.utilization_pct,
            mem_used_bytes: reading.mem_used_bytes,
            mem_total_bytes: reading.mem_total_bytes,
            temp_c: reading.temp_c,
            usage: reading.utilization_pct,
            memory_total: reading.mem_total_bytes,
            memory_used: reading.mem_used_bytes,
        }
    }
}

/// `get_process_metrics:PID`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMetricsResponse {
    pub process: ProcessDetail,
    /// Unix seconds at which the detail was collected.
    pub cached_at: u64,
}

/// The answer to a request that could not be served:
/// `{"error":"...","request":"...","pid":N}` (`pid` only for per-pid requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorAnswer {
    pub error: String,
    /// The request as received (truncated), or the request kind for per-pid failures.
    pub request: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// How much of a bad request is echoed back in the error answer.
const ECHO_LIMIT: usize = 128;

impl ErrorAnswer {
    /// An error answer to `request` (a command name, or what was received).
    pub fn new(error: impl Into<String>, request: impl Into<String>) -> Self {
        Self { error: error.into(), request: request.into(), pid: None }
    }

    /// An error answer to a per-pid request.
    pub fn for_pid(error: impl Into<String>, request: impl Into<String>, pid: u32) -> Self {
        Self { pid: Some(pid), ..Self::new(error, request) }
    }

    /// An error answer to a frame that is no request, echoing what was received
    /// (its first characters).
    pub fn unrecognised(error: impl Into<String>, received: &str) -> Self {
        let mut echo: String = received.chars().take(ECHO_LIMIT).collect();
        if echo.len() < received.len() {
            echo.push('…');
        }
        Self::new(error, echo)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn error_answers_escape_their_text_and_echo_a_bounded_request() {
        let answer = ErrorAnswer::unrecognised("bad \"quote\"", &format!("x\"{}", "y".repeat(500)));
        let json: serde_json::Value = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["error"], "bad \"quote\"");
        assert_eq!(json["request"].as_str().unwrap().chars().count(), ECHO_LIMIT + 1);
        assert!(json.get("pid").is_none());
        let per_pid = serde_json::to_value(ErrorAnswer::for_pid("gone", "get_process_metrics", 7)).unwrap();
        assert_eq!(per_pid, serde_json::json!({"error": "gone", "request": "get_process_metrics", "pid": 7}));
    }

    /// The client's view of a Gpu (socktop_connector 1.60.1, `GpuInfo`): serde rejects
    /// an object with two aliases of one field as a duplicate.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only decoding matters")]
    struct ClientGpu {
        name: Option<String>,
        vendor: Option<String>,
        #[serde(default, alias = "utilization_gpu_pct", alias = "gpu_util_pct", alias = "gpu_utilization")]
        utilization: Option<f32>,
        #[serde(default, alias = "mem_used_bytes", alias = "vram_used_bytes")]
        mem_used: Option<u64>,
        #[serde(default, alias = "mem_total_bytes", alias = "vram_total_bytes")]
        mem_total: Option<u64>,
        #[serde(default, alias = "temp_c", alias = "temperature_c")]
        temp: Option<f32>,
        // The README's names, which the real client ignores.
        usage: Option<u32>,
        memory_total: Option<u64>,
        memory_used: Option<u64>,
    }

    const ALIAS_GROUPS: [&[&str]; 4] = [
        &["utilization", "utilization_gpu_pct", "gpu_util_pct", "gpu_utilization"],
        &["mem_used", "mem_used_bytes", "vram_used_bytes"],
        &["mem_total", "mem_total_bytes", "vram_total_bytes"],
        &["temp", "temp_c", "temperature_c"],
    ];

    fn assert_one_alias_per_value(gpu: Gpu) {
        let json = serde_json::to_value(&gpu).unwrap();
        let object = json.as_object().unwrap();
        for group in ALIAS_GROUPS {
            let present = group.iter().filter(|name| object.contains_key(**name)).count();
            assert_eq!(present, 1, "{group:?} in {json}");
        }
        for readme in ["usage", "memory_total", "memory_used", "temp_c"] {
            assert!(object.contains_key(readme), "README field {readme} missing in {json}");
        }
        let text = serde_json::to_string(&gpu).unwrap();
        serde_json::from_str::<ClientGpu>(&text).unwrap_or_else(|e| panic!("client rejects {text}: {e}"));
    }

    #[test]
    fn gpu_serialises_one_alias_per_value() {
        let full = GpuReading {
            name: "AMD Radeon RX 7600".into(),
            vendor: Some("AMD"),
            utilization_pct: Some(12),
            mem_used_bytes: Some(1 << 30),
            mem_total_bytes: Some(8 << 30),
            temp_c: Some(48.5),
        };
        let json = serde_json::to_value(Gpu::from(&full)).unwrap();
        assert_eq!(json["utilization_gpu_pct"], 12);
        assert_eq!(json["usage"], 12);
        assert_eq!(json["mem_used_bytes"], json["memory_used"]);
        assert_eq!(json["mem_total_bytes"], json["memory_total"]);
        assert_one_alias_per_value(Gpu::from(&full));
        assert_one_alias_per_value(Gpu::from(&GpuReading { name: "bare".into(), ..GpuReading::default() }));
    }
}
