//! Looking inside the eBPF source, for tests and measurements only (the
//! `testing` feature): loading a chosen twin or a small map, whether a process has
//! an entry, and the programs' run statistics.

use std::path::Path;
use std::time::Duration;

use aya::maps::MapError;
use aya::programs::ProgramError;

use super::load::{AttachKind, Choices, EbpfLoadError, MapMemory, load_with};
use super::source::EbpfCpuTime;
use crate::host::clock::HostClock;

/// Tests and measurements watch the host they run on, through its own procfs.
const HOST_PROC: &str = "/proc";

/// Loads and attaches one twin of the program, with the process map allocated on
/// demand unless the kernel wants it preallocated.
pub fn load_kind(kind: AttachKind) -> Result<EbpfCpuTime, EbpfLoadError> {
    load_on_host(Choices::detected(kind))
}

/// Loads and attaches one twin of the program with the process map's memory
/// chosen, not detected (tests run the preallocated twin on kernels that allow both).
pub fn load_with_memory(kind: AttachKind, memory: MapMemory) -> Result<EbpfCpuTime, EbpfLoadError> {
    load_on_host(Choices { memory: Some(memory), ..Choices::detected(kind) })
}

/// Loads and attaches one twin of the program with a process map of `capacity`
/// entries, to see it full on a host with more processes.
pub fn load_with_capacity(kind: AttachKind, capacity: u32) -> Result<EbpfCpuTime, EbpfLoadError> {
    load_on_host(Choices { capacity, ..Choices::detected(kind) })
}

/// Loads and attaches the tp_btf twin with the per-CPU sums left to user space, as
/// on kernels before 5.19 (the task iterator and the exit records then carry
/// `CPU_NS_UNSUMMED`), so that path is tested on every kernel.
pub fn load_summing_in_user_space() -> Result<EbpfCpuTime, EbpfLoadError> {
    load_on_host(Choices { sums_in_user_space: true, ..Choices::detected(AttachKind::BtfTracePoint) })
}

fn load_on_host(choices: Choices) -> Result<EbpfCpuTime, EbpfLoadError> {
    let proc_root = Path::new(HOST_PROC);
    let clock = HostClock::from_proc(proc_root).map_err(|error| EbpfLoadError::HostClock(error.to_string()))?;
    load_with(choices, proc_root, clock)
}

/// Run statistics of the attached program (while `kernel.bpf_stats_enabled` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time: Duration,
    pub run_count: u64,
}

impl EbpfCpuTime {
    pub fn attach_kind(&self) -> AttachKind {
        self.attach
    }

    pub fn map_memory(&self) -> MapMemory {
        self.memory
    }

    /// Whether the kernel deletes the entries of exited processes itself.
    pub fn kernel_cleanup(&self) -> bool {
        self.kernel_cleanup
    }

    /// Whether a map-full episode is open (see `map_full`).
    pub fn map_full_episode_open(&self) -> bool {
        self.map_full.is_open()
    }

    /// Whether the map holds an entry for `tgid`.
    pub fn is_tracked(&self, tgid: u32) -> Result<bool, MapError> {
        Ok(self.entry(tgid)?.is_some())
    }

    /// Run time and count of the switch program, the exit program, and the repair
    /// programs in use (`resync`, or the tick and idle ones), for measuring their
    /// cost.
    pub fn program_stats(&self) -> Result<Vec<(&'static str, ProgramStats)>, ProgramError> {
        let stats = |name: &'static str| -> Result<(&'static str, ProgramStats), ProgramError> {
            let info = self.ebpf.program(name).ok_or(ProgramError::NotLoaded)?.info()?;
            Ok((name, ProgramStats { run_time: info.run_time(), run_count: info.run_count() }))
        };
        let tick_repair = self.memory.tick_repair_programs();
        let repair: &[&'static str] = if self.repair_on_ticks { &tick_repair } else { &[self.memory.resync_program()] };
        [self.attach.program_name(self.memory), self.attach.free_program_name(self.memory)]
            .iter()
            .chain(repair)
            .map(|name| stats(name))
            .collect()
    }
}
