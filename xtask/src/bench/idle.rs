//! The idle phase: what an agent costs while nobody watches it, CPU and resident
//! memory, both agents measured side by side over the same window (idle agents do
//! not disturb each other).

use std::time::{Duration, Instant};

use super::agent::{Agent, Binaries, Caches};
use super::report::{Section, Table};
use super::{Agents, MIB, Pair, Plan, progress};

/// Idle CPU and idle RSS of both agents, side by side, caches on.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, Caches::On).await?;
    table
        .notes
        .push(format!("Our per-process CPU source: {}.", agents.ours.cpu_source().as_deref().unwrap_or("unknown")));
    let (mut cpu, mut rss) = (Pair::default(), Pair::default());
    for repeat in 0..plan.repeats {
        progress(format_args!("idle, {} s window {}/{}", plan.idle_window.as_secs(), repeat + 1, plan.repeats));
        let percent = idle_percent(&[&agents.ours, &agents.original], plan.idle_window).await?;
        for (agent, percent) in [&agents.ours, &agents.original].into_iter().zip(percent) {
            cpu.push(agent.which, percent);
            rss.push(agent.which, agent.rss_bytes()? as f64 / MIB);
        }
    }
    let window = plan.idle_window.as_secs();
    table.push(cpu.row(Section::Idle, format!("idle CPU, no client, over {window} s"), "% of a CPU"));
    table.push(rss.row(Section::Memory, "RSS idle", "MiB"));
    Ok(())
}

/// CPU use of each agent over `window` with no client, in % of one CPU. The
/// agents are measured side by side: idle agents do not disturb each other.
pub async fn idle_percent(agents: &[&Agent], window: Duration) -> anyhow::Result<Vec<f64>> {
    let before = agents.iter().map(|a| a.cpu_time()).collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let wall = started.elapsed().as_secs_f64();
    agents
        .iter()
        .zip(before)
        .map(|(agent, before)| Ok(agent.cpu_time()?.saturating_sub(before).as_secs_f64() / wall * 100.0))
        .collect()
}
