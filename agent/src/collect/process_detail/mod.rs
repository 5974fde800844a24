//! The answer to `get_process_metrics:PID`: one process read from /proc/PID in detail,
//! with its threads and direct children.
//!
//! A process may exit while its files are read. The files the answer cannot do without
//! (stat, status) turn that into [`DetailError::NotFound`]; the others leave their field
//! empty. `cpu_usage` is left 0: it is a rate, and the agent's CPU-time source fills it.

mod files;
mod status;
mod tasks;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::host::clock::HostClock;
use crate::host::read_capped;
use crate::host::stat::{Stat, StatError, parse_stat, state_name};
use files::{count_entries, optional, read_link, read_required, read_small_text};
pub use status::{IoBytes, ProcStatus, command_line, parse_io, parse_statm_shared_pages, parse_status};

/// One process in detail (`get_process_metrics:PID`); serialises as the socktop
/// answer's `process` object.
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

/// One thread of a [`ProcessDetail`].
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

/// At most this many threads are listed, lowest TIDs first (`thread_count` still says
/// how many there are): a process with 10,000 threads must not make a huge answer.
pub const MAX_THREADS_LISTED: usize = 1024;
/// At most this many children are listed, lowest pids first.
pub const MAX_CHILDREN_LISTED: usize = 1024;
/// Command lines are cut here (the kernel allows up to ARG_MAX, often 2 MiB).
pub const MAX_COMMAND_BYTES: u64 = 32 * 1024;

#[derive(Debug, Error)]
pub enum DetailError {
    /// No such process, or it exited while being read.
    #[error("no process with pid {0}")]
    NotFound(u32),
    #[error("cannot read /proc/{pid}/{file}: {source}")]
    Read { pid: u32, file: &'static str, source: std::io::Error },
    #[error("cannot parse /proc/{pid}/stat: {source}")]
    Stat { pid: u32, source: StatError },
}

/// Reads process `pid` under `proc_root` (normally /proc), with its threads and its
/// direct children (each without threads or children of its own).
pub fn read_process_detail(proc_root: &Path, pid: u32, clock: &HostClock) -> Result<ProcessDetail, DetailError> {
    let dir = proc_root.join(pid.to_string());
    let mut detail = read_one(&dir, pid, clock)?;
    detail.threads = tasks::threads(&dir, pid, clock, MAX_THREADS_LISTED);
    let children = tasks::child_pids(proc_root, &dir, pid, MAX_THREADS_LISTED, MAX_CHILDREN_LISTED);
    detail.child_processes = children.into_iter().filter_map(|child| read_child(proc_root, child, clock)).collect();
    Ok(detail)
}

/// A child that exited since it was listed is left out.
fn read_child(proc_root: &Path, pid: u32, clock: &HostClock) -> Option<ProcessDetail> {
    match read_one(&proc_root.join(pid.to_string()), pid, clock) {
        Ok(detail) => Some(detail),
        Err(DetailError::NotFound(_)) => None,
        Err(err) => {
            tracing::debug!(pid, %err, "child process unreadable");
            None
        }
    }
}

/// Everything but threads and children.
fn read_one(dir: &Path, pid: u32, clock: &HostClock) -> Result<ProcessDetail, DetailError> {
    let stat_bytes = read_required(dir, "stat", pid)?;
    let stat = parse_stat(&stat_bytes).map_err(|source| DetailError::Stat { pid, source })?;
    let status = parse_status(&String::from_utf8_lossy(&read_required(dir, "status", pid)?));
    // /proc/TID exists for every thread although only leaders are listed in /proc; a
    // thread is not a process, so asking for one is answered like an unknown pid.
    if status.tgid.is_some_and(|tgid| tgid != pid) {
        return Err(DetailError::NotFound(pid));
    }
    let cmdline = optional(pid, "cmdline", read_capped(&dir.join("cmdline"), MAX_COMMAND_BYTES));
    let io = optional(pid, "io", read_small_text(&dir.join("io"))).and_then(|text| parse_io(&text));
    Ok(ProcessDetail {
        pid,
        command: command_line(&cmdline.unwrap_or_default(), &stat.name()),
        shared_mem_bytes: shared_bytes(dir, pid, &status, clock),
        fd_count: optional(pid, "fd", count_entries(&dir.join("fd"))),
        user_id: status.uid.unwrap_or_default(),
        group_id: status.gid.unwrap_or_default(),
        read_bytes: io.map(|io| io.read),
        write_bytes: io.map(|io| io.write),
        working_directory: optional(pid, "cwd", read_link(&dir.join("cwd"))),
        executable_path: optional(pid, "exe", read_link(&dir.join("exe"))),
        ..from_stat(&stat, clock)
    })
}

/// The fields that come from stat alone.
fn from_stat(stat: &Stat<'_>, clock: &HostClock) -> ProcessDetail {
    ProcessDetail {
        pid: stat.pid,
        name: stat.name(),
        mem_bytes: clock.pages_to_bytes(stat.rss_pages),
        virtual_mem_bytes: stat.vsize,
        thread_count: stat.num_threads,
        status: state_name(stat.state).to_owned(),
        // proc(5): ppid 0 means no parent (init, kthreadd) or one outside our pid namespace.
        parent_pid: (stat.ppid != 0).then_some(stat.ppid),
        start_time: clock.start_to_unix(stat.start_time),
        cpu_time_user: clock.ticks_to_micros(stat.utime),
        cpu_time_system: clock.ticks_to_micros(stat.stime),
        ..ProcessDetail::default()
    }
}

/// RssFile + RssShmem from status; on kernels before 4.5, statm's shared pages.
fn shared_bytes(dir: &Path, pid: u32, status: &ProcStatus, clock: &HostClock) -> Option<u64> {
    status.shared_bytes.or_else(|| {
        let statm = optional(pid, "statm", read_small_text(&dir.join("statm")))?;
        parse_statm_shared_pages(&statm).map(|pages| clock.pages_to_bytes(pages))
    })
}
