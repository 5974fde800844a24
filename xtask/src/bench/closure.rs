//! Every CPU-second accounted? Under a shell loop running `/bin/true` back to back
//! (the shape of a build: most of the busy time belongs to processes that start
//! and exit between two samples), the rows of `get_processes` over consecutive
//! windows, summed, against the busy time the kernel reports for the whole machine
//! over the same windows. The method of the agent's closure tests
//! (agent/tests/cpu_closure.rs, both through `testkit::closure`), here through each
//! agent's answers on the wire.
//!
//! A row carries `cpu_usage` only: the process's share of the whole machine over
//! the interval since the agent's previous scan, in % (PROTOCOL.md; both agents).
//! So a row's CPU-seconds are `cpu_usage / 100 × CPUs × interval`, the interval
//! taken between the bench's receipts of consecutive answers (the scan runs just
//! before its answer is sent; over consecutive windows the intervals add up to the
//! whole span, so the error of one does not accumulate).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::agent::{Agent, Binaries, Caches, Sensors, Which, cpu_set, die_with_parent, run_on};
use super::client::Client;
use super::report::{Row, Section, Summary, Table};
use super::{Plan, SETTLE, progress};
use testkit::closure::{Closure, ForkLoop, LOOP_SETTLE, Ledger};

/// Under a fork loop, how much of the machine's busy time the rows of
/// `get_processes` (caches off, one request a second) account for: ours with its
/// eBPF source, ours with its /proc source, the original; each agent alone, in a
/// different order each repeat.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, cpus: usize, table: &mut Table) -> anyhow::Result<()> {
    let with_proc = Binaries { ours_ebpf: false, ..binaries.clone() };
    let runs: [(&str, &Binaries, Which); 3] = [
        ("ours (eBPF run)", binaries, Which::Ours),
        ("ours (/proc run)", &with_proc, Which::Ours),
        ("original", binaries, Which::Original),
    ];
    let mut closures: [Vec<Closure>; 3] = Default::default();
    let mut modes: [Option<String>; 3] = Default::default();
    let windows = plan.closure_windows;
    let window = Duration::from_secs(1);
    for repeat in 0..plan.repeats {
        let mut turns = [0, 1, 2];
        let shift = repeat % turns.len();
        turns.rotate_left(shift);
        for turn in turns {
            let (name, binaries, which) = runs[turn];
            progress(format_args!("closure under a fork loop, {name}, {}/{}", repeat + 1, plan.repeats));
            let agent = Agent::start(binaries, which, Caches::Off, Sensors::Off).await?;
            tokio::time::sleep(SETTLE).await;
            closures[turn].push(under_fork_loop(&agent, cpus, windows, window).await?);
            if which == Which::Ours {
                let source = agent.cpu_source().unwrap_or_else(|| "unknown".into());
                let children = agent.cpu_children().unwrap_or_else(|| "unknown".into());
                modes[turn] = Some(format!("source {source}, `--cpu-children {children}`"));
            }
            // The loop's last processes and the agent's exit, out of the next run.
            drop(agent);
            tokio::time::sleep(SETTLE).await;
        }
    }
    let percent = |closures: &[Closure]| closures.iter().map(Closure::percent).collect::<Vec<_>>();
    let original = percent(&closures[2]);
    let what = format!(
        "rows of `get_processes` over {windows} × 1 s windows under a fork loop, share of the machine's busy time"
    );
    for turn in [0, 1] {
        let mode = modes[turn].as_deref().unwrap_or("unknown");
        let label = format!("{what}; ours: {mode}");
        table.push(Row::single(Section::Closure, label, "%", &percent(&closures[turn]), &original));
    }
    let seconds = |closures: &[Closure], pick: fn(&Closure) -> f64| {
        Summary::of(&closures.iter().map(pick).collect::<Vec<_>>()).map_or_else(|| "n/a".to_owned(), |s| s.show())
    };
    let spans = runs
        .iter()
        .zip(&closures)
        .map(|((name, ..), runs)| {
            format!(
                "{name} {} of {} CPU-s",
                seconds(runs, |c| c.rows.as_secs_f64()),
                seconds(runs, |c| c.busy.as_secs_f64())
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    table.notes.push(format!(
        "Closure: a shell runs `/bin/true` back to back; busy time is user + nice + system + irq + softirq of \
         /proc/stat over the same windows; a row's CPU-seconds are its `cpu_usage` (% of the {cpus} CPUs) times \
         the interval between answers. Rows against busy, median: {spans}."
    ));
    Ok(())
}

/// Runs a fork loop for the whole measurement, asks `agent` for the processes list
/// once to start its interval, then `windows` times `window` apart, and adds up the
/// rows. `cpus` is the number of online CPUs: the whole machine the shares are of.
pub async fn under_fork_loop(agent: &Agent, cpus: usize, windows: u32, window: Duration) -> anyhow::Result<Closure> {
    let bound = window * (windows + 3) + LOOP_SETTLE;
    // Must be started from the main thread (see `die_with_parent`). The bench
    // itself is pinned to CPU 0; the loop may go anywhere, as a user's would.
    let _fork_loop = ForkLoop::start(bound, |command| {
        die_with_parent(command);
        run_on(command, cpu_set(0..cpus));
    })
    .context("starting the fork loop")?;
    tokio::time::sleep(LOOP_SETTLE).await;
    let mut client = Client::connect(agent.port).await?;
    client.processes().await?;
    let mut ledger = Ledger::open().context("reading /proc/stat")?;
    let mut last_answer = Instant::now();
    let mut next = last_answer;
    for _ in 0..windows {
        next += window;
        tokio::time::sleep_until(next.into()).await;
        let rows = client.processes().await?;
        let interval = last_answer.elapsed().as_secs_f64();
        last_answer = Instant::now();
        let share: f64 = rows.iter().map(|row| f64::from(row.cpu_usage)).sum();
        ledger.add_rows(Duration::from_secs_f64(share / 100.0 * cpus as f64 * interval));
    }
    let closure = ledger.close().context("reading /proc/stat")?;
    client.close().await;
    Ok(closure)
}
