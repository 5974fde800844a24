//! Every CPU-second accounted? Under a shell loop running `/bin/true` back to back
//! (the shape of a build: most of the busy time belongs to processes that start
//! and exit between two samples), the rows of `get_processes` over consecutive
//! windows, summed, against the busy time the kernel reports for the whole machine
//! over the same windows. The method of the agent's closure tests
//! (agent/tests/cpu_closure.rs), here through each agent's answers on the wire.
//!
//! A row carries `cpu_usage` only: the process's share of the whole machine over
//! the interval since the agent's previous scan, in % (PROTOCOL.md; both agents).
//! So a row's CPU-seconds are `cpu_usage / 100 × CPUs × interval`, the interval
//! taken between the bench's receipts of consecutive answers (the scan runs just
//! before its answer is sent; over consecutive windows the intervals add up to the
//! whole span, so the error of one does not accumulate).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::agent::{Agent, cpu_set, die_with_parent, run_on, ticks_per_second};
use super::client::Client;

/// Lets the fork loop reach its pace before the first scan.
const LOOP_SETTLE: Duration = Duration::from_millis(300);

/// One closure run: the rows' CPU time and the machine's busy time over the same windows.
#[derive(Debug, Clone, Copy)]
pub struct Closure {
    pub rows_cpu_s: f64,
    pub busy_cpu_s: f64,
}

impl Closure {
    /// The rows' sum as a share of the busy time, in %.
    pub fn percent(&self) -> f64 {
        self.rows_cpu_s / self.busy_cpu_s * 100.0
    }
}

/// Runs a fork loop for the whole measurement, asks `agent` for the processes list
/// once to start its interval, then `windows` times `window` apart, and adds up the
/// rows. `cpus` is the number of online CPUs: the whole machine the shares are of.
pub async fn under_fork_loop(agent: &Agent, cpus: usize, windows: u32, window: Duration) -> anyhow::Result<Closure> {
    let bound = window * (windows + 3) + LOOP_SETTLE;
    let _fork_loop = ForkLoop::start(bound, cpus)?;
    tokio::time::sleep(LOOP_SETTLE).await;
    let mut client = Client::connect(agent.port).await?;
    client.processes().await?;
    let busy_before = busy_ticks()?;
    let mut last_answer = Instant::now();
    let mut next = last_answer;
    let mut rows_cpu_s = 0.0;
    for _ in 0..windows {
        next += window;
        tokio::time::sleep_until(next.into()).await;
        let rows = client.processes().await?;
        let interval = last_answer.elapsed().as_secs_f64();
        last_answer = Instant::now();
        let share: f64 = rows.iter().map(|row| f64::from(row.cpu_usage)).sum();
        rows_cpu_s += share / 100.0 * cpus as f64 * interval;
    }
    let busy_ticks = busy_ticks()?.saturating_sub(busy_before);
    client.close().await;
    Ok(Closure { rows_cpu_s, busy_cpu_s: busy_ticks as f64 / ticks_per_second() as f64 })
}

/// Busy ticks of the whole machine from `/proc/stat`: user, nice, system, irq and
/// softirq (the agent's own parser and definition, as the closure tests use).
fn busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(socktop_agent::collect::cpu::parse_proc_stat(&stat).all.busy())
}

/// A shell running `/bin/true` back to back on every CPU it may use, for at most a
/// given time; killed when dropped, and by the kernel if the bench dies.
struct ForkLoop(Child);

impl ForkLoop {
    /// Must be called from the main thread (see [`die_with_parent`]).
    fn start(bound: Duration, cpus: usize) -> anyhow::Result<ForkLoop> {
        let script = format!("while [ $SECONDS -lt {} ]; do /bin/true; done", bound.as_secs().max(1));
        let mut command = Command::new("bash");
        command.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut command);
        // The bench itself is pinned to CPU 0; the loop may go anywhere, as a
        // user's would.
        run_on(&mut command, cpu_set(0..cpus));
        Ok(ForkLoop(command.spawn().context("starting the fork loop")?))
    }
}

impl Drop for ForkLoop {
    fn drop(&mut self) {
        // Killing the shell ends the loop; a `/bin/true` running then exits by itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
