//! The RSS phase: resident memory after many requests of every kind over a few
//! connections at once, each repeat on freshly started agents.

use anyhow::Context;

use super::agent::{Agent, Binaries, Caches};
use super::client::{Client, Kind};
use super::report::{Section, Table};
use super::{Agents, MIB, Pair, Plan, progress, thousands};

/// RSS after many requests, each repeat on freshly started agents.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, caches: Caches, table: &mut Table) -> anyhow::Result<()> {
    let mut rss = Pair::default();
    for repeat in 0..plan.repeats {
        progress(format_args!(
            "RSS after {} requests, {}, {}/{}",
            plan.rss_requests,
            caches.name(),
            repeat + 1,
            plan.repeats
        ));
        let agents = Agents::start(binaries, caches).await?;
        for agent in agents.in_turn(repeat) {
            rss.push(agent.which, rss_after_requests(agent, plan.rss_requests).await? as f64 / MIB);
        }
    }
    let label =
        format!("RSS after {} requests (all kinds, 10 clients), {}", thousands(plan.rss_requests), caches.name());
    table.push(rss.row(Section::Memory, label, "MiB"));
    Ok(())
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
