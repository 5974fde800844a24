//! The measurements themselves. Each is bounded in time and request count, talks
//! only to 127.0.0.1, and returns raw samples; the caller repeats them and
//! summarises.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::MissedTickBehavior;

use super::agent::Agent;
use super::client::{Client, Kind, METRICS_EVERY, PROCESSES_EVERY_N_METRICS};
use super::report::quantile;

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

/// Connections the RSS phase spreads its requests over.
const RSS_CONNECTIONS: usize = 10;

/// Resident memory after `requests` requests (all three kinds in turn, over
/// [`RSS_CONNECTIONS`] connections at once), in bytes.
pub async fn rss_after_requests(agent: &Agent, requests: usize) -> anyhow::Result<u64> {
    let per_connection = requests.div_ceil(RSS_CONNECTIONS);
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..RSS_CONNECTIONS {
        let port = agent.port;
        tasks.spawn(async move {
            let mut client = Client::connect(port).await?;
            for i in 0..per_connection {
                client.ask(Kind::ALL[(connection + i) % Kind::ALL.len()]).await?;
            }
            client.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an RSS client panicked")??;
    }
    agent.rss_bytes()
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
pub async fn latency(agent: &Agent, clients: usize, run: Duration) -> anyhow::Result<Latency> {
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
