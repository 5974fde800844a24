//! The well-behaved clients: each holds one connection and asks as the socktop
//! TUI does, metrics every 500 ms, processes every 2 s, disks every 5 s, the
//! clients' phases spread over the first interval. Every failure (no answer in
//! 10 s, a closed connection, an error answer) is recorded.

use std::time::Duration;

use tokio::time::Instant;

use crate::bench::client::{Client, DISKS_EVERY_N_METRICS, Kind, METRICS_EVERY, PROCESSES_EVERY_N_METRICS};

/// The real client's intervals, as the bench's clients keep them.
const SCHEDULE: [(Kind, Duration); 3] = [
    (Kind::Metrics, METRICS_EVERY),
    (Kind::Processes, METRICS_EVERY.saturating_mul(PROCESSES_EVERY_N_METRICS as u32)),
    (Kind::Disks, METRICS_EVERY.saturating_mul(DISKS_EVERY_N_METRICS as u32)),
];

#[derive(Default)]
pub struct Outcome {
    pub answered: u64,
    pub errors: Vec<String>,
    /// Seconds per answer, per kind in [`SCHEDULE`] order.
    seconds: [Vec<f32>; 3],
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.answered += other.answered;
        self.errors.extend(other.errors);
        for (all, one) in self.seconds.iter_mut().zip(other.seconds) {
            all.extend(one);
        }
    }

    /// (name, (p50, p99, max) in seconds) for each kind answered at least once.
    pub fn latencies(&self) -> Vec<(&'static str, (f64, f64, f64))> {
        SCHEDULE
            .iter()
            .zip(&self.seconds)
            .filter(|(_, seconds)| !seconds.is_empty())
            .map(|((kind, _), seconds)| {
                let mut sorted = seconds.clone();
                sorted.sort_by(f32::total_cmp);
                let at = |q: f64| f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
                (kind.request(), (at(0.5), at(0.99), at(1.0)))
            })
            .collect()
    }
}

pub async fn run(url: String, clients: usize, run_for: Duration) -> Outcome {
    let deadline = Instant::now() + run_for;
    let spread = SCHEDULE[0].1.as_secs_f64() / clients.max(1) as f64;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let url = url.clone();
            let phase = Duration::from_secs_f64(spread * i as f64);
            tokio::spawn(async move { one_client(&url, phase, deadline).await })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(one) => outcome.merge(one),
            Err(e) => outcome.errors.push(format!("client task failed: {e}")),
        }
    }
    outcome
}

async fn one_client(url: &str, phase: Duration, deadline: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    tokio::time::sleep(phase).await;
    let mut client = match Client::connect_url(url).await {
        Ok(client) => client,
        Err(e) => {
            outcome.errors.push(format!("connecting: {e:#}"));
            return outcome;
        }
    };
    let start = Instant::now();
    let mut next = SCHEDULE.map(|_| start);
    while Instant::now() < deadline {
        let (slot, due) =
            next.iter().enumerate().min_by_key(|(_, due)| **due).map(|(i, due)| (i, *due)).unwrap_or((0, start));
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        let (kind, period) = SCHEDULE[slot];
        next[slot] = due + period;
        match client.ask(kind).await {
            Ok(reply) if reply.is_error => outcome.errors.push(format!("{} got an error answer", kind.request())),
            Ok(reply) => {
                outcome.answered += 1;
                outcome.seconds[slot].push(reply.elapsed.as_secs_f32());
            }
            Err(e) => {
                outcome.errors.push(format!("{}: {e:#}", kind.request()));
                return outcome;
            }
        }
    }
    client.close().await;
    outcome
}
