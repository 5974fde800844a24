//! End-to-end tests: the real binary, the real socktop client library, and the
//! host's own figures as ground truth. One test binary (one link, agents started
//! in parallel across its tests), one file per subject. The harness is the `e2e`
//! crate (tests/); the binary is the one Cargo built for this run.

#[path = "e2e/access.rs"]
mod access;
#[path = "e2e/agent_info.rs"]
mod agent_info;
#[path = "e2e/answers.rs"]
mod answers;
#[path = "e2e/capabilities.rs"]
mod capabilities;
#[path = "e2e/connections.rs"]
mod connections;
#[path = "e2e/cpu.rs"]
mod cpu;
#[path = "e2e/examples.rs"]
mod examples;
#[path = "e2e/process.rs"]
mod process;
#[path = "e2e/sensors.rs"]
mod sensors;

use e2e::Agent;
use e2e::ws::{self, Ws};

/// A bare WebSocket connection to `agent`, for requests the real client cannot send.
async fn raw_client(agent: &Agent) -> Ws {
    ws::connect(&agent.ws_url()).await
}
