//! The eBPF CPU accounting's own cost per `sched_switch`: a figure only our agent
//! has (the original counts from /proc), measured by the agent's `ebpf_cost`
//! example, the same one `cargo xtask ebpf-cost` runs (kernel BPF run-time
//! statistics over a ping-pong of context switches). Where it cannot run (no
//! example, no BPF, not root), the table says why instead of showing a figure.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

use super::agent::{cpu_set, run_on};
use super::report::{Row, Section, Summary, Table};

/// Seconds of each context-switch load the example measures over.
const SECONDS: &str = "3";
/// Runs of the example, for a median and a range.
const RUNS: usize = 3;

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

pub fn add_row(root: &Path, table: &mut Table) {
    if !root.join("agent/examples/ebpf_cost.rs").is_file() {
        table.notes.push("eBPF cost per sched_switch: not measured, this tree has no `ebpf_cost` example yet.".into());
        return;
    }
    for cpus in [Cpus::One, Cpus::All] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            match measure(root, cpus) {
                Ok(loads) => runs.push(loads),
                Err(e) => {
                    table.notes.push(format!("eBPF cost per sched_switch: not measured ({e:#})."));
                    return;
                }
            }
        }
        add_loads(&runs, cpus, table);
    }
}

/// One row of cost and one of switch rate per load, over the runs.
fn add_loads(runs: &[Vec<LoadCost>], cpus: Cpus, table: &mut Table) {
    let Some(first) = runs.first() else { return };
    for (index, load) in first.iter().enumerate() {
        let figures: Vec<&LoadCost> = runs.iter().filter_map(|run| run.get(index)).collect();
        let summary = |pick: fn(&LoadCost) -> f64| Summary::of(&figures.iter().map(|f| pick(f)).collect::<Vec<_>>());
        let load = format!("{}, {}", load.label, cpus.label());
        table.push(Row {
            section: Section::Ebpf,
            label: format!("eBPF `sched_switch` program, run time per context switch, ping-pong {load}"),
            unit: "ns",
            ours: vec![summary(|f| f.ns_per_run)],
            original: vec![None],
        });
        table.push(Row {
            section: Section::Ebpf,
            label: format!("context switches during that load ({load})"),
            unit: "/s",
            ours: vec![summary(|f| f.switches_per_second)],
            original: vec![None],
        });
        if figures.iter().all(|f| f.exit_ns_per_run.is_some()) {
            table.push(Row {
                section: Section::Ebpf,
                label: format!("eBPF `sched_process_free` program (exit record), run time per process exit ({load})"),
                unit: "ns",
                ours: vec![summary(|f| f.exit_ns_per_run.unwrap_or_default())],
                original: vec![None],
            });
        }
    }
}

/// One load of the example and what the `sched_switch` program cost under it.
#[derive(Debug, PartialEq)]
struct LoadCost {
    label: String,
    switches_per_second: f64,
    ns_per_run: f64,
    /// The `sched_process_free` program's run time per run, under a load of exits.
    exit_ns_per_run: Option<f64>,
}

/// Runs the example once on `cpus` and reads its figures for each load.
fn measure(root: &Path, cpus: Cpus) -> anyhow::Result<Vec<LoadCost>> {
    let cargo = crate::cargo();
    let mut command = Command::new(cargo);
    command.current_dir(root).args([
        "run",
        "--release",
        "--quiet",
        "--package",
        "socktop_agent",
        "--example",
        "ebpf_cost",
        "--",
        SECONDS,
    ]);
    if let Cpus::All = cpus {
        // SAFETY: sysconf has no preconditions.
        let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1);
        run_on(&mut command, cpu_set(0..online));
    }
    let output = command.output().context("running the ebpf_cost example")?;
    ensure!(
        output.status.success(),
        "ebpf_cost failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let loads = parse_loads(&stdout);
    ensure!(!loads.is_empty(), "no cost per switch in its output: {stdout}");
    Ok(loads)
}

/// From the example's blocks:
/// ```text
/// load (two processes): 900 ping-pong round trips in 3.00 s
///   context switches: 4000 (1333/s, all CPUs)
///   sched_switch_btf: 4000 runs, 97.0 ns per run
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
                loads.push(LoadCost { label, switches_per_second, ns_per_run, exit_ns_per_run: None });
            }
        } else if line.starts_with("process_free")
            && !line.contains(": 0 runs")
            && let Some(load) = loads.last_mut()
        {
            load.exit_ns_per_run = ns_per_run(line);
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
                      \x20 process_free_btf: 2000 runs, 310.5 ns per run\n";
        assert_eq!(
            parse_loads(output),
            vec![
                LoadCost {
                    label: "two threads of one process".into(),
                    switches_per_second: 1333.0,
                    ns_per_run: 97.5,
                    exit_ns_per_run: None
                },
                LoadCost {
                    label: "two processes".into(),
                    switches_per_second: 1000.0,
                    ns_per_run: 88.0,
                    exit_ns_per_run: None
                },
                LoadCost {
                    label: "process exits".into(),
                    switches_per_second: 3000.0,
                    ns_per_run: 120.5,
                    exit_ns_per_run: Some(310.5)
                },
            ]
        );
        assert_eq!(parse_loads("load (x): 1\n  sched_switch_btf: no runs\n"), vec![]);
    }
}
