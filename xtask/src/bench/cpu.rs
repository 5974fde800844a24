//! The CPU phase: CPU time per uncached request of each kind and the answers'
//! sizes, with the host's own processes and with crowds of extra idle ones. The
//! per-request measurement is shared with the sensors and scrape phases.

use std::time::{Duration, Instant};

use super::agent::{Agent, Binaries, Caches};
use super::client::{Client, Kind};
use super::crowd::Crowd;
use super::report::{Section, Table};
use super::{Agents, Pair, Plan, SETTLE, machine, progress, thousands};

/// CPU time per uncached request of each kind, with the host's processes and then
/// with each crowd of extra idle processes; answer sizes come with it.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, Caches::Off).await?;
    for extra in plan.crowds {
        let crowd = if extra > 0 {
            progress(format_args!("starting {} idle processes", thousands(extra)));
            Some(Crowd::spawn(extra)?)
        } else {
            None
        };
        tokio::time::sleep(SETTLE).await;
        let processes = machine::process_count();
        let mut cost: [Pair; 3] = Default::default();
        let mut size: [Pair; 3] = Default::default();
        for repeat in 0..plan.repeats {
            progress(format_args!("CPU per request, {processes} processes, {}/{}", repeat + 1, plan.repeats));
            for agent in agents.in_turn(repeat) {
                for (i, kind) in Kind::ALL.into_iter().enumerate() {
                    let measured = cpu_per_request(agent, kind, plan.cpu_budget, plan.cpu_min_requests).await?;
                    cost[i].push(agent.which, measured.cpu_us);
                    size[i].push(agent.which, measured.wire_bytes as f64);
                }
            }
        }
        let host = match crowd.as_ref().map(Crowd::len) {
            Some(n) => format!("{} processes (host + {} idle)", thousands(processes), thousands(n)),
            None => format!("{} processes (the host's own)", thousands(processes)),
        };
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            table.push(cost[i].row(Section::Cpu, format!("CPU per `{}`, uncached, {host}", kind.request()), "µs"));
            // Only the processes answer grows with the process count.
            if extra == 0 || kind == Kind::Processes {
                table.push(size[i].row(Section::Size, format!("answer to `{}`, {host}", kind.request()), "bytes"));
            }
        }
    }
    Ok(())
}

/// What one run of requests of one kind cost the agent.
pub struct PerRequest {
    /// Agent CPU time (user + system) per request, in µs.
    pub cpu_us: f64,
    /// Bytes on the wire of the last answer.
    pub wire_bytes: usize,
}

/// Sends requests of one kind one after another on one connection for at least
/// `budget` and `min_requests` (but never past 4× the budget), and divides the
/// agent's CPU time over them. The warm-up requests are not counted: a first
/// scan may fill caches.
pub async fn cpu_per_request(
    agent: &Agent,
    kind: Kind,
    budget: Duration,
    min_requests: usize,
) -> anyhow::Result<PerRequest> {
    let mut client = Client::connect(agent.port).await?;
    for _ in 0..3 {
        client.ask(kind).await?;
    }
    let cpu_before = agent.cpu_time()?;
    let started = Instant::now();
    let (mut count, mut wire_bytes) = (0usize, 0);
    while (started.elapsed() < budget || count < min_requests) && started.elapsed() < budget * 4 {
        wire_bytes = client.ask(kind).await?.wire_bytes;
        count += 1;
    }
    let cpu = agent.cpu_time()?.saturating_sub(cpu_before);
    client.close().await;
    Ok(PerRequest { cpu_us: cpu.as_secs_f64() * 1e6 / count.max(1) as f64, wire_bytes })
}
