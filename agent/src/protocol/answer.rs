//! Answer types, serialised to the exact JSON field names the socktop client decodes.

use serde::Serialize;

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

/// Cumulative byte counters of one network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    pub received: u64,
    pub transmitted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopProcess {
    pub pid: u32,
    pub name: String,
    pub cpu_usage: f32,
    pub mem_bytes: u64,
}

/// One mounted filesystem (`get_disks`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    pub name: String,
    pub total: u64,
    pub available: u64,
    pub temperature: Option<f32>,
    pub is_partition: bool,
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

/// `get_process_metrics:PID`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMetricsResponse {
    pub process: ProcessDetail,
    /// Unix seconds at which the detail was collected.
    pub cached_at: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessDetail {
    pub pid: u32,
    pub name: String,
    /// The full command line, arguments joined by spaces.
    pub command: String,
    /// Share of the whole machine, 0..100, same scale as the processes list.
    pub cpu_usage: f32,
    pub mem_bytes: u64,
    pub virtual_mem_bytes: u64,
    pub shared_mem_bytes: Option<u64>,
    pub thread_count: u32,
    pub fd_count: Option<u32>,
    /// "Running", "Sleeping", "Idle", "Zombie", ...
    pub status: String,
    pub parent_pid: Option<u32>,
    pub user_id: u32,
    pub group_id: u32,
    /// Unix seconds.
    pub start_time: u64,
    /// Microseconds.
    pub cpu_time_user: u64,
    /// Microseconds.
    pub cpu_time_system: u64,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub working_directory: Option<String>,
    pub executable_path: Option<String>,
    pub child_processes: Vec<ProcessDetail>,
    pub threads: Vec<ThreadDetail>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadDetail {
    pub tid: u32,
    pub name: String,
    /// Microseconds.
    pub cpu_time_user: u64,
    /// Microseconds.
    pub cpu_time_system: u64,
    pub status: String,
}

/// `get_journal_entries:PID`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JournalResponse {
    pub entries: Vec<JournalEntry>,
    pub total_count: u32,
    pub truncated: bool,
    /// Why `entries` is empty when the journal could not be read.
    pub notice: Option<String>,
    /// Unix seconds.
    pub cached_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JournalEntry {
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub timestamp_us: u64,
    /// "Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Info" or "Debug".
    pub priority: String,
    pub message: String,
    pub unit: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The answer to a request that could not be served.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorAnswer {
    pub error: String,
    /// The request as received (truncated), or the request kind for per-pid failures.
    pub request: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}
