//! The threads of a process (/proc/PID/task/TID) and its direct children.

use std::path::Path;

use super::ThreadDetail;
use super::files::{MAX_FILE_BYTES, numeric_entries, optional, read_small};
use crate::host::clock::HostClock;
use crate::host::stat::{parse_stat, state_name};

/// The first `max` threads by TID. Threads that exit while being read are left out.
pub(super) fn threads(dir: &Path, pid: u32, clock: &HostClock, max: usize) -> Vec<ThreadDetail> {
    let task_dir = dir.join("task");
    let tids = optional(pid, "task", numeric_entries(&task_dir)).unwrap_or_default();
    tids.into_iter().take(max).filter_map(|tid| thread(&task_dir.join(tid.to_string()), tid, clock)).collect()
}

/// One thread from its own stat file; its comm is the thread's name (set with
/// pthread_setname_np), which is what the client shows.
fn thread(dir: &Path, tid: u32, clock: &HostClock) -> Option<ThreadDetail> {
    let bytes = optional(tid, "task stat", read_small(&dir.join("stat")))?;
    let stat = match parse_stat(&bytes) {
        Ok(stat) => stat,
        Err(err) => {
            tracing::debug!(tid, %err, "unparsable task stat");
            return None;
        }
    };
    Some(ThreadDetail {
        tid,
        name: stat.name(),
        cpu_time_user: clock.ticks_to_micros(stat.utime),
        cpu_time_system: clock.ticks_to_micros(stat.stime),
        status: state_name(stat.state).to_owned(),
    })
}

/// The pids of the direct children, ascending, at most `max`.
///
/// /proc/PID/task/TID/children lists the children each thread forked (Linux 3.5+ with
/// CONFIG_PROC_CHILDREN, proc(5)); their union is the process's children. Without that
/// file, or for a process with so many threads that reading one file per thread costs
/// more than a scan, every process's stat is read and its ppid compared.
pub(super) fn child_pids(proc_root: &Path, dir: &Path, pid: u32, max_tasks: usize, max: usize) -> Vec<u32> {
    let task_dir = dir.join("task");
    let tids = optional(pid, "task", numeric_entries(&task_dir)).unwrap_or_default();
    let listed = if tids.len() <= max_tasks { from_children_files(&task_dir, &tids) } else { None };
    let mut children = listed.unwrap_or_else(|| scan_for_children(proc_root, pid));
    children.sort_unstable();
    children.dedup();
    children.truncate(max);
    children
}

/// None when the kernel has no children files (the first task lacks one).
fn from_children_files(task_dir: &Path, tids: &[u32]) -> Option<Vec<u32>> {
    let first = tids.first()?;
    if !task_dir.join(first.to_string()).join("children").exists() {
        return None;
    }
    let mut children = Vec::new();
    for tid in tids {
        let Ok(mut bytes) = read_small(&task_dir.join(tid.to_string()).join("children")) else {
            continue; // the thread exited; its children were reparented to another task
        };
        if bytes.len() as u64 == MAX_FILE_BYTES {
            // Cut short: the last pid may be cut too (the list is cut shorter anyway).
            let last_separator = bytes.iter().rposition(u8::is_ascii_whitespace).unwrap_or(0);
            bytes.truncate(last_separator);
        }
        let text = String::from_utf8_lossy(&bytes);
        children.extend(text.split_whitespace().filter_map(|word| word.parse::<u32>().ok()));
    }
    Some(children)
}

/// Every process whose stat names `pid` as its parent. /proc lists only thread-group
/// leaders, and a child's ppid is its parent's thread group, so threads need no care.
fn scan_for_children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let pids = optional(pid, "proc root", numeric_entries(proc_root)).unwrap_or_default();
    pids.into_iter()
        .filter(|&candidate| candidate != pid)
        .filter(|candidate| {
            let path = proc_root.join(candidate.to_string()).join("stat");
            read_small(&path).is_ok_and(|bytes| parse_stat(&bytes).is_ok_and(|s| s.ppid == pid))
        })
        .collect()
}
