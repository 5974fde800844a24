//! What being watched costs each agent: its own CPU time while one client polls it
//! at the real client's intervals (metrics every 500 ms, processes every 2 s,
//! disks every 5 s), both agents at once, each with a client of its own, on a host
//! with a crowd of idle processes. This is the load a socktop TUI left open puts on
//! a host, where the CPU-per-request rows measure requests back to back.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::agent::{Agent, Binaries, Caches};
use super::client::{Client, Kind};
use super::crowd::Crowd;
use super::interrupts::poll_at_the_real_clients_intervals;
use super::report::{Section, Table};
use super::{Agents, Pair, Plan, progress, thousands};

/// Extra idle processes while the agents are watched.
const WATCHED_CROWD: usize = 1_000;

/// Both agents' CPU while each is polled at the real client's intervals, side by
/// side, on a host with `WATCHED_CROWD` extra idle processes.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    progress(format_args!("starting {} idle processes", thousands(WATCHED_CROWD)));
    let _crowd = Crowd::spawn(WATCHED_CROWD)?;
    let agents = Agents::start(binaries, Caches::On).await?;
    let window = plan.watched_window;
    let all = cpu_of_both(plan, &agents, &Kind::THE_REAL_CLIENTS, "all").await?;
    let label = format!(
        "CPU while one client polls at the real client's intervals, both agents at once, host + {} idle \
         processes, caches on, over {} s",
        thousands(WATCHED_CROWD),
        window.as_secs()
    );
    table.push(all.row(Section::Cpu, label, "% of a CPU"));
    for kind in Kind::THE_REAL_CLIENTS {
        let alone = cpu_of_both(plan, &agents, &[kind], kind.request()).await?;
        let label = format!("… `{}` alone, at its interval, same host, over {} s", kind.request(), window.as_secs());
        table.push(alone.row(Section::Cpu, label, "% of a CPU"));
    }
    Ok(())
}

/// Both agents' CPU over `plan.repeats` windows while each is asked for `kinds` at
/// the real client's intervals.
async fn cpu_of_both(plan: &Plan, agents: &Agents, kinds: &[Kind], what: &str) -> anyhow::Result<Pair> {
    let window = plan.watched_window;
    let mut cpu = Pair::default();
    for repeat in 0..plan.repeats {
        progress(format_args!("watched ({what}), {} s window {}/{}", window.as_secs(), repeat + 1, plan.repeats));
        let in_turn = agents.in_turn(repeat);
        let percent = cpu_percent(&in_turn, kinds, window).await?;
        for (agent, percent) in in_turn.into_iter().zip(percent) {
            cpu.push(agent.which, percent);
        }
    }
    Ok(cpu)
}

/// Lets the sessions settle before counting: the agents' first answers, the
/// repair attached for the session, the clients' first disks requests.
const SESSION_SETTLE: Duration = Duration::from_secs(3);

/// Each agent's CPU use over `window` while a client asks it for `kinds` at the
/// real client's intervals, in % of one CPU, in the order of `agents`.
async fn cpu_percent(agents: &[&Agent], kinds: &[Kind], window: Duration) -> anyhow::Result<Vec<f64>> {
    let mut stops = Vec::new();
    let mut pollers = Vec::new();
    for agent in agents {
        let client = Client::connect(agent.port).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        stops.push(stop);
        let kinds = kinds.to_vec();
        pollers.push(tokio::spawn(async move { poll_at_the_real_clients_intervals(client, &kinds, stopped).await }));
    }
    tokio::time::sleep(SESSION_SETTLE).await;
    let before = agents.iter().map(|a| a.cpu_time()).collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = agents.iter().map(|a| a.cpu_time()).collect::<anyhow::Result<Vec<_>>>()?;
    let wall = started.elapsed().as_secs_f64();
    for stop in stops {
        let _ = stop.send(());
    }
    for poller in pollers {
        poller.await.context("a polling client panicked")??;
    }
    Ok(after
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64() / wall * 100.0)
        .collect())
}
