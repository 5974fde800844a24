//! What an idle WebSocket client costs an agent in memory: many connections are
//! opened to one agent at a time and left waiting, and the agent's RSS before and
//! after, divided by their number, is the resident memory each one holds. Taken
//! twice: with the connections only upgraded (nothing asked yet), then after each
//! has asked for metrics once and had its answer (what a client between two polls
//! leaves behind: buffers sized by an answer, a task that has run).

use std::time::Duration;

use anyhow::Context;

use super::agent::{Agent, Binaries, Caches};
use super::client::{Client, Kind};
use super::report::{Section, Table};
use super::{Agents, Pair, Plan, progress, thousands};

/// Idle connections opened to each agent.
const IDLE_CONNECTIONS: usize = 1_000;

/// RSS per idle WebSocket connection of both agents, each measured alone with
/// `IDLE_CONNECTIONS` open, on freshly started agents each repeat.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let (mut connected, mut answered) = (Pair::default(), Pair::default());
    for repeat in 0..plan.repeats {
        progress(format_args!(
            "RSS per idle connection, {} connections, {}/{}",
            IDLE_CONNECTIONS,
            repeat + 1,
            plan.repeats
        ));
        let agents = Agents::start(binaries, Caches::On).await?;
        for agent in agents.in_turn(repeat) {
            let per = resident_per_connection(agent, IDLE_CONNECTIONS).await?;
            connected.push(agent.which, per.connected / 1024.0);
            answered.push(agent.which, per.after_one_answer / 1024.0);
        }
    }
    let count = thousands(IDLE_CONNECTIONS);
    table.push(connected.row(Section::Memory, format!("RSS per idle WebSocket connection, {count} connected"), "KiB"));
    table.push(answered.row(
        Section::Memory,
        format!("RSS per idle WebSocket connection, {count} connected, each after one `get_metrics`"),
        "KiB",
    ));
    Ok(())
}

/// How long the agent is left alone before each RSS reading, so that work still
/// in flight (tasks ending, buffers being freed) is done.
const SETTLE: Duration = Duration::from_secs(2);

/// Connections opened at once while the clients are set up; more would only fill
/// the agent's accept backlog.
const OPENING_AT_ONCE: usize = 50;

/// Resident bytes per idle connection, connected only and after one metrics answer.
pub struct PerConnection {
    pub connected: f64,
    pub after_one_answer: f64,
}

/// Opens `count` WebSocket connections to `agent`, reads its RSS with them idle,
/// then after each asked for metrics once; closes them all before returning.
pub async fn resident_per_connection(agent: &Agent, count: usize) -> anyhow::Result<PerConnection> {
    tokio::time::sleep(SETTLE).await;
    let before = agent.rss_bytes()? as f64;
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = OPENING_AT_ONCE.min(count - clients.len());
        let opening = (0..batch).map(|_| Client::connect(agent.port));
        for client in futures_util::future::join_all(opening).await {
            clients.push(client.with_context(|| format!("opening connection {} of {count}", clients.len() + 1))?);
        }
    }
    tokio::time::sleep(SETTLE).await;
    let connected = agent.rss_bytes()? as f64;
    for chunk in clients.chunks_mut(OPENING_AT_ONCE) {
        let asking = chunk.iter_mut().map(|client| client.ask(Kind::Metrics));
        for reply in futures_util::future::join_all(asking).await {
            anyhow::ensure!(!reply?.is_error, "an error answer to get_metrics");
        }
    }
    tokio::time::sleep(SETTLE).await;
    let answered = agent.rss_bytes()? as f64;
    futures_util::future::join_all(clients.into_iter().map(Client::close)).await;
    Ok(PerConnection {
        connected: (connected - before) / count as f64,
        after_one_answer: (answered - before) / count as f64,
    })
}
