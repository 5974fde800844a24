//! Mounted real filesystems and their space (`get_disks`), from
//! `/proc/self/mountinfo` (proc(5)) and statvfs(3). Pseudo filesystems are left
//! out, and a filesystem mounted several times (bind mounts) is listed once, at its
//! first mount point.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::temperature::DiskTemperatures;
use super::{Collect, CollectError};
use crate::config::Collection;
use crate::host::procfs::KeptFile;

/// Every real mounted filesystem at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct DisksSnapshot {
    /// When it was read (wall clock).
    pub sampled_at: SystemTime,
    /// In mountinfo order.
    pub disks: Vec<Disk>,
}

/// One mounted filesystem; serialises as the socktop answer's disk object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    /// The filesystem's source (a device such as `/dev/sda1`, or a share).
    pub name: String,
    /// Bytes.
    pub total: u64,
    /// Bytes available to unprivileged users.
    pub available: u64,
    /// °C, when the disk has a sensor and temperatures are on.
    pub temperature: Option<f32>,
    pub is_partition: bool,
    /// Bytes free including the blocks reserved for root, where it is mounted and
    /// its type: Prometheus exports them with node_exporter's labels; the socktop
    /// answer has no field for them.
    #[serde(skip)]
    pub free: u64,
    #[serde(skip)]
    pub mount_point: String,
    #[serde(skip)]
    pub fs_type: String,
}

/// One line of mountinfo, reduced to what the disk list needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem, shared by all its bind mounts.
    pub device_id: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Filesystems that live on a block device or a network share and hold user data,
/// although their source is not a `/dev/` path.
const REAL_WITHOUT_DEVICE: &[&str] = &["zfs", "nfs", "nfs4", "cifs", "smb3", "overlay", "9p", "virtiofs"];

/// Read-only images that would only clutter the list (snap packages, live media).
const IMAGE_FILESYSTEMS: &[&str] = &["squashfs", "iso9660", "erofs"];

/// Parses mountinfo: `id parent major:minor root mount_point options [optional...] -
/// fs_type source super_options`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount_line).collect()
}

fn parse_mount_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut head = before.split(' ');
    let device_id = head.nth(2)?.to_owned();
    let mount_point = unescape_octal(head.nth(1)?);
    let mut tail = after.split(' ');
    let fs_type = tail.next()?.to_owned();
    let source = unescape_octal(tail.next()?);
    Some(Mount { device_id, mount_point, fs_type, source })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Three octal digits up to \377: `\521` is no byte (found by the
        // mountinfo fuzz target) and stays as it is.
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                u8::try_from(u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0')).ok()
            });
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a mount holds a real filesystem worth listing.
pub fn is_real_filesystem(mount: &Mount) -> bool {
    if IMAGE_FILESYSTEMS.contains(&mount.fs_type.as_str()) {
        return false;
    }
    mount.source.starts_with("/dev/") || REAL_WITHOUT_DEVICE.contains(&mount.fs_type.as_str())
}

/// The real filesystems, each once, in mount order.
pub fn real_mounts(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut seen = HashSet::new();
    mounts.into_iter().filter(|m| is_real_filesystem(m) && seen.insert(m.device_id.clone())).collect()
}

/// Size and free space of a mounted filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// Free to unprivileged users (`f_bavail`), as `df` shows it.
    pub available: u64,
    /// Free, including the blocks reserved for root (`f_bfree`).
    pub free: u64,
}

pub fn statvfs(mount_point: &str) -> std::io::Result<Space> {
    statvfs_c(&CString::new(mount_point).map_err(std::io::Error::other)?)
}

/// [`statvfs`] of a path already in C form, as the disks collector keeps them.
pub fn statvfs_c(path: &CStr) -> std::io::Result<Space> {
    let stat = rustix::fs::statvfs(path)?;
    let fragment = stat.f_frsize;
    Ok(Space { total: stat.f_blocks * fragment, available: stat.f_bavail * fragment, free: stat.f_bfree * fragment })
}

/// Filesystems whose statfs may wait on a server or a user-space daemon.
const REMOTE_FILESYSTEMS: &[&str] =
    &["nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "ceph", "glusterfs", "lustre", "afs", "fuse"];

/// Whether asking a filesystem for its space can wait (network and FUSE
/// filesystems); local ones answer from in-memory counters.
pub fn statfs_may_wait(fs_type: &str) -> bool {
    let base = fs_type.split('.').next().unwrap_or(fs_type);
    REMOTE_FILESYSTEMS.contains(&base) || base == "fuseblk"
}

/// Whether `/dev/NAME` is a partition of a disk rather than a whole disk.
pub fn is_partition(sys_root: &Path, source: &str) -> bool {
    let Some(name) = source.strip_prefix("/dev/") else { return false };
    sys_root.join("class/block").join(name).join("partition").exists()
}

pub struct DisksCollector {
    /// Kept open: it tells of mount changes by POLLPRI, so it is read and parsed
    /// again only then, not on every request.
    mountinfo: KeptFile,
    sys_root: PathBuf,
    /// `None` when temperatures are off.
    temperatures: Option<DiskTemperatures>,
    /// The real filesystems as of the last mountinfo read.
    mounts: Vec<KnownMount>,
}

/// A mount and what does not change while it stays mounted.
struct KnownMount {
    mount: Mount,
    path: CString,
    is_partition: bool,
}

impl DisksCollector {
    pub fn new(collection: &Collection) -> Self {
        Self {
            mountinfo: KeptFile::new(collection.proc_root.join("self/mountinfo")),
            sys_root: collection.sys_root.clone(),
            temperatures: collection.temperature.then(|| DiskTemperatures::new(&collection.sys_root)),
            mounts: Vec::new(),
        }
    }

    pub fn sample(&mut self) -> DisksSnapshot {
        self.refresh_mounts();
        let mut temperatures = self.temperatures.as_mut().map(DiskTemperatures::reads);
        let disks = self
            .mounts
            .iter()
            .filter_map(|known| {
                let space = statvfs_c(&known.path)
                    .inspect_err(|e| tracing::debug!(mount = %known.mount.mount_point, error = %e, "statvfs failed"))
                    .ok()
                    .filter(|space| space.total > 0)?;
                Some(Disk {
                    is_partition: known.is_partition,
                    temperature: temperatures.as_mut().and_then(|t| t.read(&known.mount.source)),
                    name: known.mount.source.clone(),
                    total: space.total,
                    available: space.available,
                    free: space.free,
                    mount_point: known.mount.mount_point.clone(),
                    fs_type: known.mount.fs_type.clone(),
                })
            })
            .collect();
        DisksSnapshot { sampled_at: SystemTime::now(), disks }
    }

    /// Reads mountinfo again when it says the mounts changed (or was never read).
    fn refresh_mounts(&mut self) {
        if !self.mountinfo.signals_change() {
            return;
        }
        let mounts = match self.mountinfo.read() {
            Ok(text) => real_mounts(parse_mountinfo(text)),
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                Vec::new()
            }
        };
        self.mounts = mounts
            .into_iter()
            .filter_map(|mount| {
                let path = CString::new(mount.mount_point.as_str()).ok()?;
                let is_partition = is_partition(&self.sys_root, &mount.source);
                Some(KnownMount { mount, path, is_partition })
            })
            .collect();
    }
}

impl Collect for DisksCollector {
    type Snapshot = DisksSnapshot;

    fn collect(&mut self) -> Result<DisksSnapshot, CollectError> {
        Ok(self.sample())
    }

    /// Local filesystems answer statfs from memory; network and FUSE ones, and
    /// disk temperature sensors, may wait.
    fn never_waits(&mut self) -> bool {
        self.refresh_mounts();
        let sources = self.mounts.iter().map(|known| known.mount.source.as_str());
        self.temperatures.as_mut().is_none_or(|t| t.never_waits(sources))
            && self.mounts.iter().all(|known| !statfs_may_wait(&known.mount.fs_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<Mount> {
        parse_mountinfo(include_str!("../../tests/fixtures/proc/mountinfo"))
    }

    #[test]
    fn parses_device_mount_point_type_and_source() {
        let root = &mounts()[5];
        assert_eq!(
            root,
            &Mount {
                device_id: "254:0".into(),
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                source: "/dev/vda".into()
            }
        );
    }

    #[test]
    fn keeps_real_filesystems_once_and_drops_pseudo_ones() {
        let points: Vec<_> = real_mounts(mounts()).into_iter().map(|m| m.mount_point).collect();
        // /data/bind is a bind mount of /home (same 8:2); proc, tmpfs, cgroup,
        // squashfs snaps are out; nfs and zfs stay.
        assert_eq!(points, ["/", "/boot/efi", "/home", "/mnt/my disk", "/srv/nfs", "/tank"]);
    }

    #[test]
    fn octal_escapes_in_mount_points_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal(r"back\134slash"), r"back\slash");
        // An incomplete escape is kept as it is.
        assert_eq!(unescape_octal(r"end\04"), r"end\04");
    }

    #[test]
    fn statvfs_of_root_matches_libc_expectations() {
        let space = statvfs("/").unwrap();
        assert!(space.total > 0 && space.available <= space.total);
        assert!(statvfs("/no/such/mount/point").is_err());
    }

    #[test]
    fn network_and_fuse_filesystems_may_wait() {
        for fs_type in ["nfs4", "cifs", "fuse.sshfs", "fuseblk", "ceph"] {
            assert!(statfs_may_wait(fs_type), "{fs_type}");
        }
        for fs_type in ["ext4", "xfs", "btrfs", "zfs", "vfat", "overlay", "tmpfs"] {
            assert!(!statfs_may_wait(fs_type), "{fs_type}");
        }
    }

    #[test]
    fn partitions_are_told_from_whole_disks_by_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("class/block/sda1")).unwrap();
        std::fs::write(sys.path().join("class/block/sda1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(sys.path().join("class/block/sda")).unwrap();
        assert!(is_partition(sys.path(), "/dev/sda1"));
        assert!(!is_partition(sys.path(), "/dev/sda"));
        assert!(!is_partition(sys.path(), "tank"));
    }

    #[test]
    fn an_octal_escape_past_255_stays_as_written() {
        assert_eq!(unescape_octal("/with\\521space\\040x"), "/with\\521space x");
        let input = String::from_utf8_lossy(include_bytes!("../../tests/fixtures/fuzz/mountinfo-escape-past-255"));
        let mounts = parse_mountinfo(&input);
        assert!(mounts.iter().any(|m| m.mount_point.contains("\\521")), "{mounts:?}");
    }
}
