//! Reading the files of one /proc/PID directory, with the errors sorted into "the
//! process is gone" (the caller answers NotFound), "not permitted" (the field is absent)
//! and anything else (logged, then the field is absent).

use std::io;
use std::path::Path;

use super::DetailError;
use crate::host::read_capped;

/// Most bytes read of any file of a process's directory but `cmdline` (see
/// `MAX_COMMAND_BYTES`): the kernel writes a few KiB at most (stat, status, io,
/// a thread's children), while a file under a wrong or fake root may be anything.
pub(super) const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A file of a process's directory, at most [`MAX_FILE_BYTES`] of it.
pub(super) fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    read_capped(path, MAX_FILE_BYTES)
}

/// [`read_small`] as text; bytes that are not UTF-8 read as U+FFFD.
pub(super) fn read_small_text(path: &Path) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&read_small(path)?).into_owned())
}

/// Reads a file the answer cannot do without (stat, status). A process that exits
/// between listing and reading leaves ENOENT, or ESRCH for files whose open succeeded
/// but whose task is gone (proc(5) notes files of an exited process become unreadable).
pub(super) fn read_required(dir: &Path, file: &'static str, pid: u32) -> Result<Vec<u8>, DetailError> {
    read_small(&dir.join(file)).map_err(|source| {
        if is_gone(&source) { DetailError::NotFound(pid) } else { DetailError::Read { pid, file, source } }
    })
}

pub(super) fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// Turns the result of reading an optional field into `Option`. Refusals (EACCES/EPERM:
/// io, fd, cwd and exe need ptrace access, proc(5) "ptrace access mode checks") and
/// files that vanished with their process are expected; anything else is logged.
pub(super) fn optional<T>(pid: u32, what: &str, result: io::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied || is_gone(&err) => None,
        Err(err) => {
            tracing::debug!(pid, what, %err, "process detail field unavailable");
            None
        }
    }
}

/// Counts the entries of a directory such as /proc/PID/fd (one symlink per open fd).
pub(super) fn count_entries(path: &Path) -> io::Result<u32> {
    let mut count: u32 = 0;
    for entry in std::fs::read_dir(path)? {
        entry?;
        count = count.saturating_add(1);
    }
    Ok(count)
}

/// The target of a magic link such as /proc/PID/cwd, lossily as text.
pub(super) fn read_link(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_link(path)?.to_string_lossy().into_owned())
}

/// The numeric entries of a directory (/proc, /proc/PID/task), sorted ascending.
pub(super) fn numeric_entries(path: &Path) -> io::Result<Vec<u32>> {
    let mut ids: Vec<u32> =
        std::fs::read_dir(path)?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect();
    ids.sort_unstable();
    Ok(ids)
}
