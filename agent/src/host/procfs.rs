//! Thin, allocation-free access to `/proc` for the scan that runs on every
//! processes request: the pid list by getdents64(2) on a directory fd kept open,
//! and `/proc/PID/stat` opened relative to it (openat(2)) and read again in place
//! with pread(2). procfs regenerates a stat file on every read at offset 0
//! (`seq_read_iter` in fs/seq_file.c restarts when the offset moves back), so a
//! kept fd gives fresh figures without a path walk, an allocation and a close per
//! process; once the process is gone the kept fd reads ESRCH, even if its pid has
//! been reused (the fd pins the old `struct pid`).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags, SeekFrom};

/// An open procfs root.
pub struct ProcDir {
    dir: File,
}

/// Enough for every `/proc` listing in a few getdents64 calls.
const DIRENT_BUFFER: usize = 32 * 1024;

impl ProcDir {
    pub fn open(root: &Path) -> io::Result<ProcDir> {
        let dir = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(root)?;
        Ok(ProcDir { dir })
    }

    /// Every numeric entry (a process, threads folded in) into `pids`, in the
    /// order procfs lists them, which is ascending. `buffer` is reused between calls.
    pub fn list_pids(&self, buffer: &mut Vec<u8>, pids: &mut Vec<u32>) -> io::Result<()> {
        pids.clear();
        buffer.resize(DIRENT_BUFFER, 0);
        // Rewinding restarts the listing.
        rustix::fs::seek(&self.dir, SeekFrom::Start(0))?;
        let fd = self.dir.as_raw_fd();
        loop {
            // rustix offers getdents64 only behind its own entry iterator, which
            // would parse the entries a second way from `parse_dirent_pids` (the
            // fuzzed parser).
            // SAFETY: `fd` is our open directory; the kernel writes at most
            // `buffer.len()` bytes into `buffer`.
            let read = unsafe { libc::syscall(libc::SYS_getdents64, fd, buffer.as_mut_ptr(), buffer.len()) };
            match read {
                0 => return Ok(()),
                n if n < 0 => return Err(io::Error::last_os_error()),
                n => parse_dirent_pids(&buffer[..n as usize], pids),
            }
        }
    }

    /// Opens `PID/stat` relative to the root.
    pub fn open_stat(&self, pid: u32) -> io::Result<File> {
        let mut path = [0u8; 24];
        let len = stat_path(pid, &mut path);
        let path = CStr::from_bytes_with_nul(&path[..=len]).map_err(io::Error::other)?;
        let fd = rustix::fs::openat(&self.dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }
}

/// Writes `PID/stat` and a NUL into `out`; returns the length without the NUL.
fn stat_path(pid: u32, out: &mut [u8; 24]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = pid;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        out[i] = *d;
    }
    out[len..len + 5].copy_from_slice(b"/stat");
    out[len + 5] = 0;
    len + 5
}

/// Largest file read whole: far above any real procfs file (a mountinfo of
/// thousands of mounts is a few MiB), low enough that a wrong root (a file that
/// never ends, such as /dev/zero) costs an error, not the host's memory.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Reads the whole file from offset 0 into `buffer`, growing it when the file
/// does not fit; returns the length read. `buffer` keeps its size between calls.
/// A file over [`MAX_FILE_BYTES`] is an error, and `buffer` is given back.
pub fn read_from_start(file: &File, buffer: &mut Vec<u8>) -> io::Result<usize> {
    if buffer.is_empty() {
        buffer.resize(1024, 0);
    }
    loop {
        let read = file.read_at(buffer, 0)?;
        if read < buffer.len() {
            return Ok(read);
        }
        if buffer.len() >= MAX_FILE_BYTES {
            *buffer = Vec::new();
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        // A full buffer may be a cut file: read it again, whole, into a larger one.
        buffer.resize((buffer.len() * 2).min(MAX_FILE_BYTES), 0);
    }
}

/// A small file (such as `/proc/stat`) kept open and read again from the start on
/// every use, into a buffer that is kept too. A failed read closes it, so the next
/// use opens the path afresh. A file that starts failing is logged once, as a
/// warning, and once more when it reads again: not on every request.
pub struct KeptFile {
    path: PathBuf,
    file: Option<File>,
    buffer: Vec<u8>,
    failing: bool,
}

impl KeptFile {
    pub fn new(path: PathBuf) -> KeptFile {
        KeptFile { path, file: None, buffer: Vec::new(), failing: false }
    }

    /// Closes the file and drops the buffer; the next read opens it again.
    pub fn close(&mut self) {
        self.file = None;
        self.buffer = Vec::new();
    }

    /// Whether the file says its content changed since it was last read or
    /// asked, by POLLPRI (`/proc/PID/mountinfo` does, on any mount or unmount:
    /// proc(5)). True when it is not open yet; other files never say so.
    pub fn signals_change(&self) -> bool {
        let Some(file) = &self.file else { return true };
        let mut poll = [PollFd::new(file, PollFlags::PRI)];
        let no_wait = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        let ready = rustix::event::poll(&mut poll, Some(&no_wait)).unwrap_or(0);
        ready > 0 && poll[0].revents().intersects(PollFlags::PRI | PollFlags::ERR)
    }

    /// The whole file as text; errors name the path. procfs files are ASCII but
    /// for names (mount points, interface names) that may hold any byte: bytes
    /// that are not UTF-8 read as `?`, so the rest of the file still counts.
    pub fn read(&mut self) -> io::Result<&str> {
        let length = self.read_bytes();
        match &length {
            Err(e) if !self.failing => {
                tracing::warn!("{e} (said once; the answers leave this part out until it reads again)");
                self.failing = true;
            }
            Ok(_) if self.failing => {
                tracing::info!("{} reads again", self.path.display());
                self.failing = false;
            }
            _ => {}
        }
        let text = &mut self.buffer[..length?];
        replace_invalid_utf8(text);
        std::str::from_utf8(text).map_err(io::Error::other)
    }

    fn read_bytes(&mut self) -> io::Result<usize> {
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(File::open(&self.path).map_err(|e| path_error(&self.path, e))?),
        };
        match read_from_start(file, &mut self.buffer) {
            Ok(length) => Ok(length),
            Err(e) => {
                self.file = None;
                Err(path_error(&self.path, e))
            }
        }
    }
}

/// Overwrites every byte of an invalid UTF-8 sequence with `?`.
fn replace_invalid_utf8(text: &mut [u8]) {
    let mut at = 0;
    while let Err(e) = std::str::from_utf8(&text[at..]) {
        let bad_start = at + e.valid_up_to();
        let bad_end = e.error_len().map_or(text.len(), |len| bad_start + len);
        text[bad_start..bad_end].fill(b'?');
        at = bad_end;
    }
}

fn path_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The pid most recently handed out in the reader's pid namespace: the last
/// field of `/proc/loadavg` ("0.00 0.01 0.05 1/123 4567", proc(5)). While it does
/// not move, no process (or thread) was created, so a listing of `/proc` would
/// find no pid that the previous one did not.
pub fn parse_last_pid(loadavg: &str) -> Option<u32> {
    loadavg.split_ascii_whitespace().nth(4)?.parse().ok()
}

/// Whether the procfs at `root` shows this process's own pid namespace, so that
/// its `loadavg` speaks of the same pids as its listing (`loadavg` always shows
/// the reader's namespace; a host's procfs mounted in a container does not).
pub fn is_own_pid_namespace(root: &Path) -> bool {
    std::fs::read_link(root.join("self"))
        .is_ok_and(|target| target.as_os_str() == std::process::id().to_string().as_str())
}

/// Appends the pids named by the `linux_dirent64` records in `bytes`
/// (getdents64(2): u64 inode, i64 offset, u16 record length, u8 type, name, NUL).
pub fn parse_dirent_pids(bytes: &[u8], pids: &mut Vec<u32>) {
    const NAME_AT: usize = 19;
    let mut at = 0;
    while let Some(record) = bytes.get(at..) {
        let Some(&[lo, hi]) = record.get(16..18) else { return };
        let length = usize::from(u16::from_ne_bytes([lo, hi]));
        if length <= NAME_AT || length > record.len() {
            return;
        }
        let name = &record[NAME_AT..length];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(pid) = parse_pid(name) {
            pids.push(pid);
        }
        at += length;
    }
}

fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.iter().try_fold(0u32, |acc, &d| acc.checked_mul(10)?.checked_add(u32::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirent(name: &str) -> Vec<u8> {
        // Records are padded to 8 bytes, as the kernel does.
        let length = (19 + name.len() + 1).div_ceil(8) * 8;
        let mut record = vec![0u8; length];
        record[16..18].copy_from_slice(&(length as u16).to_ne_bytes());
        record[18] = 4;
        record[19..19 + name.len()].copy_from_slice(name.as_bytes());
        record
    }

    #[test]
    fn numeric_entries_are_pids_and_others_are_skipped() {
        let bytes: Vec<u8> =
            ["self", "1", "4194304", "net", "12a", "99999999999", "42"].iter().flat_map(|n| dirent(n)).collect();
        let mut pids = Vec::new();
        parse_dirent_pids(&bytes, &mut pids);
        assert_eq!(pids, [1, 4_194_304, 42]);
    }

    #[test]
    fn a_truncated_record_ends_the_parse_without_panicking() {
        let mut bytes = dirent("7");
        bytes.extend_from_slice(&dirent("8")[..10]);
        let mut pids = Vec::new();
        parse_dirent_pids(&bytes, &mut pids);
        assert_eq!(pids, [7]);
    }

    #[test]
    fn the_last_pid_is_the_fifth_field_of_loadavg() {
        assert_eq!(parse_last_pid("0.52 0.58 0.59 2/467 123456\n"), Some(123_456));
        assert_eq!(parse_last_pid("0.52 0.58"), None);
    }

    #[test]
    fn the_real_proc_is_this_process_own_namespace() {
        assert!(is_own_pid_namespace(Path::new("/proc")));
        assert!(!is_own_pid_namespace(tempfile::tempdir().unwrap().path()));
    }

    #[test]
    fn stat_paths_are_nul_terminated() {
        let mut out = [0u8; 24];
        let len = stat_path(4_294_967_295, &mut out);
        assert_eq!(&out[..=len], b"4294967295/stat\0");
        let len = stat_path(0, &mut out);
        assert_eq!(&out[..=len], b"0/stat\0");
    }

    #[test]
    fn the_real_proc_lists_this_process_and_rereads_its_stat_in_place() {
        let dir = ProcDir::open(Path::new("/proc")).unwrap();
        let (mut buffer, mut pids) = (Vec::new(), Vec::new());
        dir.list_pids(&mut buffer, &mut pids).unwrap();
        assert!(pids.contains(&std::process::id()));
        assert!(pids.is_sorted(), "procfs lists pids in ascending order");
        let stat = dir.open_stat(std::process::id()).unwrap();
        let mut content = Vec::new();
        let first = read_from_start(&stat, &mut content).unwrap();
        assert!(content[..first].starts_with(format!("{} (", std::process::id()).as_bytes()));
        let again = read_from_start(&stat, &mut content).unwrap();
        assert!(again > 0, "a second pread at offset 0 reads the file again");
    }

    #[test]
    fn kept_files_see_new_content_and_reopen_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meminfo");
        std::fs::write(&path, "one").unwrap();
        let mut kept = KeptFile::new(path.clone());
        assert_eq!(kept.read().unwrap(), "one");
        std::fs::write(&path, "two, longer").unwrap();
        assert_eq!(kept.read().unwrap(), "two, longer");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "three").unwrap();
        // The kept file is the old (deleted) inode until a read fails; this one does not.
        assert_eq!(kept.read().unwrap(), "two, longer");
        let mut missing = KeptFile::new(dir.path().join("absent"));
        assert!(missing.read().is_err());
    }

    #[test]
    fn mountinfo_signals_a_change_only_after_a_mount() {
        let mut mountinfo = KeptFile::new(PathBuf::from("/proc/self/mountinfo"));
        assert!(mountinfo.signals_change(), "not read yet");
        assert!(mountinfo.read().unwrap().contains(" / "));
        assert!(!mountinfo.signals_change());
        let mut regular = KeptFile::new(PathBuf::from("/proc/self/stat"));
        regular.read().unwrap();
        assert!(!regular.signals_change());
    }

    #[test]
    fn files_larger_than_the_buffer_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        let mut buffer = Vec::new();
        assert_eq!(read_from_start(&File::open(&path).unwrap(), &mut buffer).unwrap(), 5000);
    }

    #[test]
    fn a_file_that_never_ends_is_an_error_not_all_memory() {
        let mut kept = KeptFile::new(PathBuf::from("/dev/zero"));
        let error = kept.read().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge, "{error}");
        assert!(kept.buffer.capacity() < MAX_FILE_BYTES, "the buffer is given back");
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_question_marks_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mountinfo");
        std::fs::write(&path, b"1 2 0:1 / /mnt/caf\xe9 rw - ext4 /dev/sda1 rw\n3 4 0:2 / / rw - ext4 /dev/sda2 rw\n")
            .unwrap();
        let mut kept = KeptFile::new(path);
        let text = kept.read().unwrap();
        assert!(text.starts_with("1 2 0:1 / /mnt/caf? rw"), "{text}");
        assert!(text.ends_with("/dev/sda2 rw\n"), "{text}");
    }
}
