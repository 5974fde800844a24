//! The disks answer (`get_disks`): each real mounted filesystem once, with its
//! size and free space.

use std::path::PathBuf;

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use super::metrics::read_logged;
use crate::collect::disks::{is_partition, parse_mountinfo, real_mounts, statvfs};
use crate::collect::temperature::disk_temperature;
use crate::config::Collection;
use crate::protocol::answer::Disk;
use crate::protocol::framing::json_frame;

pub struct DisksCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    temperature: bool,
}

impl DisksCollector {
    pub fn new(collection: &Collection) -> Self {
        Self {
            proc_root: collection.proc_root.clone(),
            sys_root: collection.sys_root.clone(),
            temperature: collection.temperature,
        }
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
                    temperature: self.temperature_of(&mount.source),
                    name: mount.source,
                    total: space.total,
                    available: space.available,
                })
            })
            .collect()
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
}
