//! What being watched costs the whole machine in wake-ups: the interrupts all CPUs
//! take per second while one client polls an agent at the real client's intervals,
//! against the same machine with no agent at all. Counted from the kernel's own
//! totals (proc(5)): the `intr` line of `/proc/stat` (every interrupt since boot,
//! all CPUs) and, where the architecture has it, the `LOC` row of
//! `/proc/interrupts` (local timer interrupts: the ticks and timers that wake idle
//! CPUs).

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::time::MissedTickBehavior;

use super::agent::{Agent, Binaries, Caches, Sensors, Which};
use super::client::{Client, Kind, METRICS_EVERY};
use super::crowd::Crowd;
use super::report::{Section, Summary, Table};
use super::{Pair, Plan, SETTLE, progress, thousands};

/// Lets a session settle before counting: the agent's first answers, its repair
/// attached for the session, the client's first disks request.
const SESSION_SETTLE: Duration = Duration::from_secs(3);

/// Extra idle processes while the interrupts are counted.
const INTERRUPTS_CROWD: usize = 1_000;

/// The whole machine's interrupts per second while one client polls each agent at
/// the real client's intervals, each agent alone (caches on), with a crowd of idle
/// processes; and with no agent at all, the machine's own rate. The three take
/// turns, in a different order each repeat.
pub(super) async fn run(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    progress(format_args!("starting {} idle processes", thousands(INTERRUPTS_CROWD)));
    let _crowd = Crowd::spawn(INTERRUPTS_CROWD)?;
    let (mut all, mut local_timer) = (Pair::default(), Pair::default());
    let (mut baseline_all, mut baseline_local_timer) = (Vec::new(), Vec::new());
    let window = plan.interrupt_window;
    for repeat in 0..plan.repeats {
        let mut turns = [None, Some(Which::Ours), Some(Which::Original)];
        let shift = repeat % turns.len();
        turns.rotate_left(shift);
        for which in turns {
            let name = which.map_or("no agent", Which::name);
            progress(format_args!("interrupts, {name}, {} s window {}/{}", window.as_secs(), repeat + 1, plan.repeats));
            let agent = match which {
                Some(which) => Some(Agent::start(binaries, which, Caches::On, Sensors::Off).await?),
                None => None,
            };
            tokio::time::sleep(SETTLE).await;
            let rate = while_watched(agent.as_ref(), window).await?;
            match which {
                Some(which) => {
                    all.push(which, rate.all_per_s);
                    if let Some(local) = rate.local_timer_per_s {
                        local_timer.push(which, local);
                    }
                }
                None => {
                    baseline_all.push(rate.all_per_s);
                    baseline_local_timer.extend(rate.local_timer_per_s);
                }
            }
        }
    }
    let watched = format!(
        "one client polling at the real client's intervals, host + {} idle processes, {} s",
        thousands(INTERRUPTS_CROWD),
        window.as_secs()
    );
    table.push(all.row(Section::Interrupts, format!("interrupts of the whole machine, {watched}"), "/s"));
    if !local_timer.ours.is_empty() {
        table.push(local_timer.row(Section::Interrupts, format!("… of which local timer (LOC), {watched}"), "/s"));
    }
    let show = |samples: &[f64]| Summary::of(samples).map_or_else(|| "n/a".to_owned(), |s| s.show());
    table.notes.push(format!(
        "Interrupts: each agent ran alone (caches on) while counted; metrics every 500 ms, processes every 2 s, \
         disks every 5 s. With no agent and no client, over the same windows: {}/s, local timer {}/s.",
        show(&baseline_all),
        show(&baseline_local_timer)
    ));
    Ok(())
}

/// Interrupts per second of the whole machine over one window.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub all_per_s: f64,
    /// Local timer interrupts; None where `/proc/interrupts` has no `LOC` row.
    pub local_timer_per_s: Option<f64>,
}

/// The machine's interrupt rate over `window`: while one client polls `agent` at
/// the real client's intervals, or with no agent (and no client) at all.
pub async fn while_watched(agent: Option<&Agent>, window: Duration) -> anyhow::Result<Rate> {
    let Some(agent) = agent else {
        return count_over(window).await;
    };
    let client = Client::connect(agent.port).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let polling = tokio::spawn(poll_like_the_real_client(client, stopped));
    tokio::time::sleep(SESSION_SETTLE).await;
    let rate = count_over(window).await;
    let _ = stop.send(());
    polling.await.context("the polling client panicked")??;
    rate
}

async fn count_over(window: Duration) -> anyhow::Result<Rate> {
    let before = Counts::read()?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = Counts::read()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Rate {
        all_per_s: after.all.saturating_sub(before.all) as f64 / seconds,
        local_timer_per_s: after.local_timer.zip(before.local_timer).map(|(a, b)| a.saturating_sub(b) as f64 / seconds),
    })
}

/// Metrics every 500 ms, processes every 2 s, disks every 5 s, one request at a
/// time on one connection, until `stop`.
pub(super) async fn poll_like_the_real_client(
    client: Client,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    poll_at_the_real_clients_intervals(client, &Kind::THE_REAL_CLIENTS, stop).await
}

/// Each of `kinds` at the real client's interval for it (metrics every 500 ms,
/// processes every 2 s, disks every 5 s), one request at a time on one
/// connection, until `stop`.
pub(super) async fn poll_at_the_real_clients_intervals(
    mut client: Client,
    kinds: &[Kind],
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(METRICS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 0usize.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        for &kind in kinds.iter().filter(|kind| kind.asked_at_tick(n)) {
            client.ask(kind).await?;
        }
    }
    client.close().await;
    Ok(())
}

/// Interrupt counters since boot, all CPUs.
struct Counts {
    all: u64,
    local_timer: Option<u64>,
}

impl Counts {
    fn read() -> anyhow::Result<Counts> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let all = parse_intr_total(&stat).context("no intr line in /proc/stat")?;
        let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        Ok(Counts { all, local_timer: parse_local_timer(&interrupts) })
    }
}

/// The first number of the `intr` line of `/proc/stat`: every interrupt serviced
/// since boot.
fn parse_intr_total(stat: &str) -> Option<u64> {
    stat.lines().find_map(|line| line.strip_prefix("intr "))?.split_ascii_whitespace().next()?.parse().ok()
}

/// The `LOC` row of `/proc/interrupts` summed over its per-CPU columns (the
/// description after them is not a number).
fn parse_local_timer(interrupts: &str) -> Option<u64> {
    let row = interrupts.lines().find_map(|line| line.trim_start().strip_prefix("LOC:"))?;
    let per_cpu = row.split_ascii_whitespace().map_while(|field| field.parse::<u64>().ok());
    Some(per_cpu.sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_intr_total_is_the_first_number_of_its_line() {
        let stat = "cpu  1 2 3 4 5 6 7 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\nintr 987654 12 0 7\nctxt 5\n";
        assert_eq!(parse_intr_total(stat), Some(987_654));
        assert_eq!(parse_intr_total("cpu 1 2 3\nctxt 5\n"), None);
    }

    #[test]
    fn local_timer_interrupts_are_summed_over_the_cpus() {
        let interrupts = "           CPU0       CPU1\n  0:         31          0   IO-APIC    2-edge      timer\n\
                          NMI:          0          0   Non-maskable interrupts\n\
                          LOC:     123456      65432   Local timer interrupts\n\
                          SPU:          0          0   Spurious interrupts\n";
        assert_eq!(parse_local_timer(interrupts), Some(123_456 + 65_432));
        assert_eq!(parse_local_timer("           CPU0\n  0:  31  IO-APIC  timer\n"), None);
    }
}
