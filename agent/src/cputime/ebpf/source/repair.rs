//! The repair of untraced switches while someone reads: `repair_tick` and
//! `repair_idle`, or the `resync` timer, attached on the first reading after
//! idle and detached when the agent goes idle, with the exit records switched
//! on and off alongside.

use std::time::{Duration, Instant};

use agent_common::cputime::{IDLE_TRACEPOINT, RESYNC_PERIOD_NS, TICK_SETTLE_NS, TICK_TRACEPOINT};
use aya::programs::perf_event::{PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::{PerfEvent, ProgramError, RawTracePoint};
use aya::util::online_cpus;

use super::EbpfCpuTime;

/// What repairs untraced switches while someone reads (see the program's
/// `repair_current`).
pub(super) enum RepairLinks {
    None,
    /// `repair_tick` on the scheduler tick and `repair_idle` on idle entry.
    Tick {
        tick: RawTracePointLinkId,
        idle: Option<RawTracePointLinkId>,
    },
    /// `resync` on a CPU-clock timer, one link per CPU.
    Timer(Vec<PerfEventLinkId>),
}

impl EbpfCpuTime {
    /// Attaches `resync` on every online CPU unless it is attached, and makes sure
    /// every CPU's record of its running task was checked since: until then a CPU
    /// may run a task not counted yet (one that came on untraced while nothing
    /// repaired). Attaching runs this thread on every CPU, and each of those
    /// switches checks its CPU's record at once; for a CPU it did not run on, this
    /// waits until the repair has run everywhere (two ticks, or two timer periods,
    /// after attaching). Either way the next reading already sees every CPU.
    pub fn resume_resync(&mut self) -> Result<(), ProgramError> {
        let since = self.attach_resync()?;
        if self.settled {
            return Ok(());
        }
        if let Some(wait) = self.settled_by_repair(since).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(())
    }

    /// Attaches `resync` on every online CPU unless it is attached; returns when it
    /// was attached.
    pub(super) fn attach_resync(&mut self) -> Result<Instant, ProgramError> {
        if let Some(since) = self.resync_since {
            return Ok(since);
        }
        let attached = if self.repair_on_ticks { self.attach_tick_repair() } else { self.attach_timer_repair() };
        if let Err(error) = attached {
            self.detach_repair();
            return Err(error);
        }
        let since = Instant::now();
        self.resync_since = Some(since);
        self.want_exits(true);
        // Past the repair's own settling time the visits would buy nothing.
        self.settled = switch_on_every_cpu(self.settled_by_repair(since));
        Ok(since)
    }

    /// When the repair attached at `since` has run on every busy CPU.
    fn settled_by_repair(&self, since: Instant) -> Instant {
        let settle_ns = if self.repair_on_ticks { TICK_SETTLE_NS } else { 2 * RESYNC_PERIOD_NS };
        since + Duration::from_nanos(settle_ns)
    }

    /// Tells the `sched_process_free` program whether to record exits: only while
    /// someone reads them, so the ring holds no records from before a session.
    fn want_exits(&mut self, wanted: bool) {
        if wanted && let Err(error) = self.exits.map() {
            tracing::warn!("mapping the eBPF exit records: {error}");
        }
        if let Err(error) = self.exits_wanted.set(0, u32::from(wanted), 0) {
            tracing::warn!("switching the eBPF exit records {}: {error}", if wanted { "on" } else { "off" });
        }
        if !wanted {
            self.exits.unmap();
        }
    }

    /// The repair on the scheduler tick and idle entry: kernel work done anyway.
    fn attach_tick_repair(&mut self) -> Result<(), ProgramError> {
        let [tick_program, idle_program] = self.memory.tick_repair_programs();
        let tick: &mut RawTracePoint =
            self.ebpf.program_mut(tick_program).ok_or(ProgramError::NotLoaded)?.try_into()?;
        self.repair_links = RepairLinks::Tick { tick: tick.attach(TICK_TRACEPOINT)?, idle: None };
        let idle: &mut RawTracePoint =
            self.ebpf.program_mut(idle_program).ok_or(ProgramError::NotLoaded)?.try_into()?;
        let idle_link = idle.attach(IDLE_TRACEPOINT)?;
        if let RepairLinks::Tick { idle, .. } = &mut self.repair_links {
            *idle = Some(idle_link);
        }
        Ok(())
    }

    /// The repair on a CPU-clock timer on every online CPU, which wakes idle CPUs.
    fn attach_timer_repair(&mut self) -> Result<(), ProgramError> {
        let cpus = online_cpus().map_err(|(_, error)| ProgramError::IOError(error))?;
        let program: &mut PerfEvent =
            self.ebpf.program_mut(self.memory.resync_program()).ok_or(ProgramError::NotLoaded)?.try_into()?;
        let mut links = Vec::new();
        for cpu in cpus {
            let config = PerfEventConfig::Software(SoftwareEvent::CpuClock);
            let scope = PerfEventScope::AllProcessesOneCpu { cpu };
            match program.attach(config, scope, SamplePolicy::Period(RESYNC_PERIOD_NS), false) {
                Ok(link) => links.push(link),
                Err(error) => {
                    self.repair_links = RepairLinks::Timer(links);
                    return Err(error);
                }
            }
        }
        self.repair_links = RepairLinks::Timer(links);
        Ok(())
    }

    /// Detaches the repair and stops the exit records; the next reading attaches
    /// them again.
    pub fn pause_resync(&mut self) {
        if self.resync_since.take().is_some() {
            self.want_exits(false);
        }
        self.detach_repair();
    }

    fn detach_repair(&mut self) {
        let report = |result: Result<(), ProgramError>| {
            if let Err(error) = result {
                tracing::debug!("detaching the repair of untraced switches: {error}");
            }
        };
        match std::mem::replace(&mut self.repair_links, RepairLinks::None) {
            RepairLinks::None => {}
            RepairLinks::Tick { tick, idle } => {
                let [tick_program, idle_program] = self.memory.tick_repair_programs();
                if let Some(program) = self.ebpf.program_mut(tick_program) {
                    report(<&mut RawTracePoint>::try_from(program).and_then(|program| program.detach(tick)));
                }
                if let (Some(idle), Some(program)) = (idle, self.ebpf.program_mut(idle_program)) {
                    report(<&mut RawTracePoint>::try_from(program).and_then(|program| program.detach(idle)));
                }
            }
            RepairLinks::Timer(links) => {
                if let Some(program) = self.ebpf.program_mut(self.memory.resync_program())
                    && let Ok(program) = <&mut PerfEvent>::try_from(program)
                {
                    for link in links {
                        report(program.detach(link));
                    }
                }
            }
        }
    }
}

/// Makes every online CPU switch tasks once, now (the `sched_switch` program checks
/// the CPU's record at each switch), unless `deadline` comes first: true when each
/// one did.
fn switch_on_every_cpu(deadline: Instant) -> bool {
    let cpus = match online_cpus() {
        Ok(cpus) => cpus,
        Err((_, error)) => {
            tracing::debug!("listing the online CPUs to switch on: {error}");
            return false;
        }
    };
    match crate::host::every_cpu::switch_on_every_cpu(&cpus, deadline) {
        Ok(missed) if missed.is_empty() => true,
        Ok(missed) => {
            tracing::debug!("could not run on CPUs {missed:?}: the first reading waits for the repair there");
            false
        }
        Err(error) => {
            tracing::debug!("switching on every CPU: {error}; the first reading waits for the repair");
            false
        }
    }
}
