//! The sensors phase: what the GPU and temperature collectors add to a metrics
//! and a disks request, each setting of them on freshly started agents.

use super::agent::{Binaries, Caches, Sensors};
use super::client::Kind;
use super::cpu::cpu_per_request;
use super::report::{Section, Table};
use super::{Agents, Pair, Plan, machine, progress, thousands};

/// CPU time per uncached metrics and disks request (the answers the GPU and
/// temperature collectors add to) with one setting of those collectors, with the
/// host's own processes.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, sensors: Sensors, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start_with(binaries, Caches::Off, sensors).await?;
    let kinds = [Kind::Metrics, Kind::Disks];
    let mut cost: [Pair; 2] = Default::default();
    for repeat in 0..plan.repeats {
        progress(format_args!("CPU per request, {}, {}/{}", sensors.name(), repeat + 1, plan.repeats));
        for agent in agents.in_turn(repeat) {
            for (i, kind) in kinds.into_iter().enumerate() {
                let measured = cpu_per_request(agent, kind, plan.cpu_budget, plan.cpu_min_requests).await?;
                cost[i].push(agent.which, measured.cpu_us);
            }
        }
    }
    let processes = thousands(machine::process_count());
    for (i, kind) in kinds.into_iter().enumerate() {
        let label = format!("CPU per `{}`, uncached, {processes} processes, {}", kind.request(), sensors.name());
        table.push(cost[i].row(Section::Cpu, label, "µs"));
    }
    Ok(())
}
