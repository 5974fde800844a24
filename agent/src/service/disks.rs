//! The disks answer (`get_disks`): each real mounted filesystem once, with its
//! size and free space.

use std::ffi::CString;
use std::path::PathBuf;

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use crate::collect::disks::{Mount, is_partition, parse_mountinfo, real_mounts, statfs_may_wait, statvfs_c};
use crate::collect::temperature::disk_temperature;
use crate::config::Collection;
use crate::host::procfs::KeptFile;
use crate::protocol::answer::Disk;
use crate::protocol::framing::json_frame;

pub struct DisksCollector {
    /// Kept open: it tells of mount changes by POLLPRI, so it is read and parsed
    /// again only then, not on every request.
    mountinfo: KeptFile,
    sys_root: PathBuf,
    temperature: bool,
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
            temperature: collection.temperature,
            mounts: Vec::new(),
        }
    }

    pub fn sample(&mut self) -> Vec<Disk> {
        self.refresh_mounts();
        self.mounts
            .iter()
            .filter_map(|known| {
                let space = statvfs_c(&known.path)
                    .inspect_err(|e| tracing::debug!(mount = %known.mount.mount_point, error = %e, "statvfs failed"))
                    .ok()
                    .filter(|space| space.total > 0)?;
                Some(Disk {
                    is_partition: known.is_partition,
                    temperature: self.temperature_of(&known.mount.source),
                    name: known.mount.source.clone(),
                    total: space.total,
                    available: space.available,
                })
            })
            .collect()
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

    fn temperature_of(&self, source: &str) -> Option<f32> {
        let device = source.strip_prefix("/dev/")?;
        if !self.temperature {
            return None;
        }
        disk_temperature(&self.sys_root, device)
    }
}

impl Collect for DisksCollector {
    fn collect(&mut self) -> Message {
        json_frame(&self.sample())
    }

    /// Local filesystems answer statfs from memory; network and FUSE ones, and
    /// disk temperature sensors, may wait.
    fn never_waits(&mut self) -> bool {
        self.refresh_mounts();
        !self.temperature && self.mounts.iter().all(|known| !statfs_may_wait(&known.mount.fs_type))
    }
}
