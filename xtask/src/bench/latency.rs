//! The latency phase: round trips under 1 to 500 clients polling at the real
//! client's intervals, their starts spread over one interval as real clients are
//! not in step.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::agent::{Agent, Binaries, Caches};
use super::client::{Client, Kind, METRICS_EVERY, PROCESSES_EVERY_N_METRICS};
use super::report::{Row, Section, Summary, Table, quantile};
use super::{Agents, Pair, Plan, progress};

/// Round trips of metrics and processes requests under each number of clients.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, caches: Caches, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, caches).await?;
    for clients in plan.clients {
        let (mut p50, mut p99) = ([Pair::default(), Pair::default()], [Pair::default(), Pair::default()]);
        for repeat in 0..plan.repeats {
            progress(format_args!("latency, {clients} clients, {}, {}/{}", caches.name(), repeat + 1, plan.repeats));
            for agent in agents.in_turn(repeat) {
                let run = clients_polling(agent, clients, plan.latency_run).await?;
                for (i, [median, tail]) in [run.metrics, run.processes].into_iter().enumerate() {
                    p50[i].push(agent.which, median);
                    p99[i].push(agent.which, tail);
                }
                if run.failed_clients > 0 {
                    table.notes.push(format!(
                        "{} agent, {clients} clients, {}: {} client(s) failed (connect or a 10 s answer timeout).",
                        agent.which.name(),
                        caches.name(),
                        run.failed_clients
                    ));
                }
            }
        }
        for (i, kind) in [Kind::Metrics, Kind::Processes].into_iter().enumerate() {
            table.push(Row {
                section: Section::Latency,
                label: format!("`{}` round trip p50 / p99, {clients} client(s), {}", kind.request(), caches.name()),
                unit: "ms",
                ours: vec![Summary::of(&p50[i].ours), Summary::of(&p99[i].ours)],
                original: vec![Summary::of(&p50[i].original), Summary::of(&p99[i].original)],
            });
        }
    }
    Ok(())
}

/// Round-trip latency percentiles of one run, in ms.
#[derive(Debug, Default)]
pub struct Latency {
    pub metrics: [f64; 2],
    pub processes: [f64; 2],
    /// Clients that failed (could not connect, or an answer timed out).
    pub failed_clients: usize,
}

/// `clients` clients, each polling metrics every 500 ms and processes every 2 s on
/// its own connection, for `run`. Starts are spread over one interval, as real
/// clients are not in step.
pub async fn clients_polling(agent: &Agent, clients: usize, run: Duration) -> anyhow::Result<Latency> {
    let started = Instant::now();
    let deadline = started + METRICS_EVERY + run;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let delay = METRICS_EVERY.mul_f64(i as f64 / clients as f64);
        tasks.spawn(poll(agent.port, started + delay, deadline));
    }
    let (mut metrics, mut processes, mut failed_clients) = (Vec::new(), Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok((m, p))) => {
                metrics.extend(m);
                processes.extend(p);
            }
            Ok(Err(_)) | Err(_) => failed_clients += 1,
        }
    }
    let percentiles = |samples: &mut Vec<f64>| {
        [quantile(samples, 0.50).unwrap_or(f64::NAN), quantile(samples, 0.99).unwrap_or(f64::NAN)]
    };
    Ok(Latency { metrics: percentiles(&mut metrics), processes: percentiles(&mut processes), failed_clients })
}

/// One polling client; returns its metrics and processes round trips in ms.
async fn poll(port: u16, start: Instant, deadline: Instant) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    tokio::time::sleep_until(start.into()).await;
    let mut client = Client::connect(port).await?;
    let mut tick = tokio::time::interval(METRICS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut metrics, mut processes) = (Vec::new(), Vec::new());
    for n in 0usize.. {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        metrics.push(client.ask(Kind::Metrics).await?.elapsed.as_secs_f64() * 1e3);
        if n % PROCESSES_EVERY_N_METRICS == 0 {
            processes.push(client.ask(Kind::Processes).await?.elapsed.as_secs_f64() * 1e3);
        }
    }
    client.close().await;
    Ok((metrics, processes))
}
