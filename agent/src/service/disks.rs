//! The disks answer (`get_disks`): each real mounted filesystem once, with its
//! size and free space.

use std::path::{Path, PathBuf};

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use super::metrics::read_logged;
use crate::collect::disks::{is_partition, parse_mountinfo, real_mounts, statvfs};
use crate::protocol::answer::Disk;
use crate::protocol::framing::json_frame;

pub struct DisksCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
}

impl DisksCollector {
    pub fn new(proc_root: &Path, sys_root: &Path) -> Self {
        Self { proc_root: proc_root.to_path_buf(), sys_root: sys_root.to_path_buf() }
    }

    pub fn sample(&mut self) -> Vec<Disk> {
        let Some(mountinfo) = read_logged(&self.proc_root.join("self/mountinfo")) else { return Vec::new() };
        real_mounts(parse_mountinfo(&mountinfo))
            .into_iter()
            .filter_map(|mount| {
                let space = statvfs(&mount.mount_point)
                    .inspect_err(|e| tracing::debug!(mount = %mount.mount_point, error = %e, "statvfs failed"))
                    .ok()
                    .filter(|space| space.total > 0)?;
                Some(Disk {
                    is_partition: is_partition(&self.sys_root, &mount.source),
                    name: mount.source,
                    total: space.total,
                    available: space.available,
                    temperature: None,
                })
            })
            .collect()
    }
}

impl Collect for DisksCollector {
    fn collect(&mut self) -> Message {
        json_frame(&self.sample())
    }
}
