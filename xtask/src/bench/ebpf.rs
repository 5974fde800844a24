//! The eBPF programs' own cost, a figure only our agent has (the original counts
//! from /proc): the agent's `ebpf_cost` example (the same one `cargo xtask
//! ebpf-cost` runs) measures, with the kernel's BPF run-time statistics, the
//! `sched_switch` program's run time per context switch under ping-pong loads and
//! the `sched_process_free` program's per process exit under a fork loop. The
//! example built from an earlier commit measures the object that commit embedded,
//! in the same run, runs alternating, so the table shows both side by side. Where
//! it cannot run (no BPF, not root, no such commit), a note says why instead of
//! showing a figure.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

use super::agent::{cpu_set, run_on};
use super::cost_example;
use super::report::{Row, Section, Summary, Table};

/// Seconds of each load the example measures over.
const SECONDS: &str = "3";

/// Where the example's two threads (or processes) may run. The bench itself is
/// pinned to CPU 0, which the example would inherit.
#[derive(Debug, Clone, Copy)]
enum Cpus {
    /// CPU 0 only: each switch goes from one side straight to the other.
    One,
    /// Every online CPU: each side mostly waits on its own CPU, so each hop wakes
    /// a CPU from idle and the two sides' switches run on different CPUs.
    All,
}

impl Cpus {
    fn label(self) -> &'static str {
        match self {
            Cpus::One => "on one CPU",
            Cpus::All => "on all CPUs",
        }
    }
}

/// The programs' cost with this tree's object against `previous`'s, `runs` runs
/// of each, in a table whose second column is the previous object.
pub fn table(root: &Path, previous: &str, runs: usize, table: &mut Table) {
    let current = match cost_example::current(root) {
        Ok(binary) => binary,
        Err(e) => return table.notes.push(format!("eBPF programs' cost: not measured ({e:#}).")),
    };
    let previous_binary = cost_example::at_commit(root, previous)
        .inspect_err(|e| table.notes.push(format!("The object of {previous}: not measured ({e:#}).")))
        .ok();
    for cpus in [Cpus::One, Cpus::All] {
        let (mut ours, mut before) = (Vec::new(), Vec::new());
        for run in 0..runs {
            super::progress(format_args!("eBPF programs' cost, {}, {}/{runs}", cpus.label(), run + 1));
            // Alternating, so neither object always runs first.
            let mut order = [Some(&current), previous_binary.as_ref()];
            if run % 2 == 1 {
                order.reverse();
            }
            for binary in order.into_iter().flatten() {
                match measure(binary, cpus) {
                    Ok(loads) if *binary == current => ours.push(loads),
                    Ok(loads) => before.push(loads),
                    Err(e) => return table.notes.push(format!("eBPF programs' cost: not measured ({e:#}).")),
                }
            }
        }
        add_loads(&ours, &before, cpus, table);
    }
}

/// One row of cost and one of switch rate per load, over the runs; the exit
/// program's cost where the load had exits.
fn add_loads(ours: &[Vec<LoadCost>], before: &[Vec<LoadCost>], cpus: Cpus, table: &mut Table) {
    let Some(first) = ours.first() else { return };
    for load in first {
        let runs_of = |runs: &[Vec<LoadCost>]| -> Vec<LoadCost> {
            runs.iter().filter_map(|run| run.iter().find(|l| l.label == load.label)).cloned().collect()
        };
        let (mine, theirs) = (runs_of(ours), runs_of(before));
        let summary = |loads: &[LoadCost], pick: fn(&LoadCost) -> Option<f64>| {
            Summary::of(&loads.iter().filter_map(pick).collect::<Vec<_>>())
        };
        let pair = |pick: fn(&LoadCost) -> Option<f64>| (vec![summary(&mine, pick)], vec![summary(&theirs, pick)]);
        let label = format!("{}, {}", load.label, cpus.label());
        let (ours, original) = pair(|f| Some(f.ns_per_run));
        table.push(Row {
            section: Section::Ebpf,
            label: format!("`sched_switch` program, run time per context switch, {label}"),
            unit: "ns",
            ours,
            original,
        });
        let (ours, original) = pair(|f| Some(f.switches_per_second));
        table.push(Row {
            section: Section::Ebpf,
            label: format!("context switches during that load ({label})"),
            unit: "/s",
            ours,
            original,
        });
        // The fork loop's load: other loads see a process exit now and then.
        if load.exit_records.is_some() {
            let (ours, original) = pair(|f| f.exit_ns_per_run);
            table.push(Row {
                section: Section::Ebpf,
                label: format!("`sched_process_free` program (exit record), run time per process exit ({label})"),
                unit: "ns",
                ours,
                original,
            });
            let (read, lost) =
                mine.iter().filter_map(|f| f.exit_records).fold((0, 0), |(r, l), (read, lost)| (r + read, l + lost));
            table.notes.push(format!(
                "Exit records under the fork loop ({}, {} run(s)): {read} read, {lost} lost (ring full).",
                cpus.label(),
                mine.len()
            ));
        }
    }
}

/// One load of the example and what the programs cost under it.
#[derive(Debug, Clone, PartialEq)]
struct LoadCost {
    label: String,
    switches_per_second: f64,
    ns_per_run: f64,
    /// The `sched_process_free` program's run time per run, under a load of exits.
    exit_ns_per_run: Option<f64>,
    /// Exit records read and lost during that load.
    exit_records: Option<(u64, u64)>,
}

/// Runs the example `binary` once on `cpus` and reads its figures for each load.
fn measure(binary: &PathBuf, cpus: Cpus) -> anyhow::Result<Vec<LoadCost>> {
    let mut command = Command::new(binary);
    command.arg(SECONDS);
    if let Cpus::All = cpus {
        // SAFETY: sysconf has no preconditions.
        let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1);
        run_on(&mut command, cpu_set(0..online));
    }
    let output = command.output().with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({}): {}",
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let loads = parse_loads(&stdout);
    ensure!(!loads.is_empty(), "no cost per switch in its output: {stdout}");
    Ok(loads)
}

/// From the example's blocks (the exit records line only after the fork loop's):
/// ```text
/// load (two processes): 900 ping-pong round trips in 3.00 s
///   context switches: 4000 (1333/s, all CPUs)
///   sched_switch_btf: 4000 runs, 97.0 ns per run
///   process_free_btf: 1 runs, 900.0 ns per run
///   exit records: 5000 read, 0 lost (ring full)
/// ```
fn parse_loads(output: &str) -> Vec<LoadCost> {
    let mut loads = Vec::new();
    let mut current: Option<(String, Option<f64>)> = None;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("load (") {
            current = rest.split_once("):").map(|(label, _)| (label.to_owned(), None));
        } else if let Some(rest) = line.strip_prefix("context switches: ") {
            let rate = rest.split_once('(').and_then(|(_, r)| r.split_once("/s")).and_then(|(r, _)| r.parse().ok());
            if let Some((_, slot)) = current.as_mut() {
                *slot = rate;
            }
        } else if line.starts_with("sched_switch") {
            if let (Some((label, Some(switches_per_second))), Some(ns_per_run)) = (current.take(), ns_per_run(line)) {
                let load =
                    LoadCost { label, switches_per_second, ns_per_run, exit_ns_per_run: None, exit_records: None };
                loads.push(load);
            }
        } else if line.starts_with("process_free")
            && !line.contains(": 0 runs")
            && let Some(load) = loads.last_mut()
        {
            load.exit_ns_per_run = ns_per_run(line);
        } else if let Some(rest) = line.strip_prefix("exit records: ")
            && let Some(load) = loads.last_mut()
        {
            let mut numbers = rest.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok());
            load.exit_records = numbers.next().zip(numbers.next());
        }
    }
    loads
}

/// The figure of a `NAME: N runs, X ns per run` line.
fn ns_per_run(line: &str) -> Option<f64> {
    line.strip_suffix(" ns per run").and_then(|b| b.rsplit(' ').next()).and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_load_gives_its_switch_rate_and_run_time() {
        let output = "attached: BtfTracePoint\n\
                      load (two threads of one process): 900 ping-pong round trips in 3.00 s\n\
                      \x20 context switches: 4000 (1333/s, all CPUs)\n\
                      \x20 sched_switch_btf: 4000 runs, 97.5 ns per run\n\
                      \x20 resync: 10 runs, 76.0 ns per run\n\
                      load (two processes): 800 ping-pong round trips in 3.00 s\n\
                      \x20 context switches: 3000 (1000/s, all CPUs)\n\
                      \x20 sched_switch_raw: 3000 runs, 88 ns per run\n\
                      \x20 process_free_raw: 0 runs, 0.0 ns per run\n\
                      load (process exits): 2000 round trips (or processes) in 3.00 s\n\
                      \x20 context switches: 9000 (3000/s, all CPUs)\n\
                      \x20 sched_switch_btf: 9000 runs, 120.5 ns per run\n\
                      \x20 process_free_btf: 2000 runs, 310.5 ns per run\n\
                      \x20 exit records: 1990 read, 10 lost (ring full)\n";
        assert_eq!(
            parse_loads(output),
            vec![
                LoadCost {
                    label: "two threads of one process".into(),
                    switches_per_second: 1333.0,
                    ns_per_run: 97.5,
                    exit_ns_per_run: None,
                    exit_records: None
                },
                LoadCost {
                    label: "two processes".into(),
                    switches_per_second: 1000.0,
                    ns_per_run: 88.0,
                    exit_ns_per_run: None,
                    exit_records: None
                },
                LoadCost {
                    label: "process exits".into(),
                    switches_per_second: 3000.0,
                    ns_per_run: 120.5,
                    exit_ns_per_run: Some(310.5),
                    exit_records: Some((1990, 10))
                },
            ]
        );
        assert_eq!(parse_loads("load (x): 1\n  sched_switch_btf: no runs\n"), vec![]);
    }
}
