//! The fallback CPU-time source: utime+stime from `/proc/PID/stat`, which the scan
//! has already read. Its resolution is one clock tick (10 ms at USER_HZ=100), so
//! over a 1 s interval a reading is good to about one percent of a CPU.

use super::{CpuSourceKind, CpuTimeError, CpuTimeSource, Fallback, ScannedCpu};

pub struct ProcCpuTime {
    ns_per_tick: u64,
    /// Why the eBPF source is not used.
    reason: Option<Fallback>,
}

impl ProcCpuTime {
    pub fn new(ticks_per_second: u64) -> Self {
        Self { ns_per_tick: 1_000_000_000 / ticks_per_second.max(1), reason: None }
    }

    /// Records why this source was chosen over the eBPF one.
    pub fn because(self, reason: Fallback) -> Self {
        Self { reason: Some(reason), ..self }
    }
}

impl CpuTimeSource for ProcCpuTime {
    fn kind(&self) -> CpuSourceKind {
        CpuSourceKind::Proc
    }

    fn fallback(&self) -> Option<&Fallback> {
        self.reason.as_ref()
    }

    fn cumulative_ns(&mut self, procs: &[ScannedCpu], out: &mut Vec<u64>) -> Result<(), CpuTimeError> {
        out.clear();
        out.extend(procs.iter().map(|p| p.ticks.saturating_mul(self.ns_per_tick)));
        Ok(())
    }

    fn retain_live(&mut self, _live: &[u32]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_become_nanoseconds_at_the_clock_rate() {
        let mut source = ProcCpuTime::new(100);
        let mut out = Vec::new();
        let procs = [ScannedCpu { pid: 1, ticks: 3 }, ScannedCpu { pid: 7, ticks: 250 }];
        source.cumulative_ns(&procs, &mut out).unwrap();
        assert_eq!(out, vec![30_000_000, 2_500_000_000]);
    }
}
