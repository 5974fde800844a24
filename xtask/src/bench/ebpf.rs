//! The eBPF CPU accounting's own cost per `sched_switch`: a figure only our agent
//! has (the original counts from /proc), measured by the agent's `ebpf_cost`
//! example, the same one `cargo xtask ebpf-cost` runs (kernel BPF run-time
//! statistics over a ping-pong of context switches). Where it cannot run (no
//! example, no BPF, not root), the table says why instead of showing a figure.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

use super::report::{Row, Section, Summary, Table};

/// Seconds of context-switch load the example measures over.
const SECONDS: &str = "5";

pub fn add_row(root: &Path, table: &mut Table) {
    if !root.join("agent/examples/ebpf_cost.rs").is_file() {
        table.notes.push("eBPF cost per sched_switch: not measured, this tree has no `ebpf_cost` example yet.".into());
        return;
    }
    match measure(root) {
        Ok(ns) => table.push(Row {
            section: Section::Ebpf,
            label: "eBPF `sched_switch` program, run time per context switch (ping-pong load)".into(),
            unit: "ns",
            ours: vec![Summary::of(&[ns])],
            original: vec![None],
        }),
        Err(e) => table.notes.push(format!("eBPF cost per sched_switch: not measured ({e:#}).")),
    }
}

/// Runs the example and reads the `sched_switch` program's run time per run.
fn measure(root: &Path) -> anyhow::Result<f64> {
    let cargo = crate::cargo();
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["run", "--release", "--quiet", "--package", "socktop_agent", "--example", "ebpf_cost", "--", SECONDS])
        .output()
        .context("running the ebpf_cost example")?;
    ensure!(
        output.status.success(),
        "ebpf_cost failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    cost_per_switch(&stdout).with_context(|| format!("no cost per switch in its output: {stdout}"))
}

/// From the example's line `sched_switch_btf: 123 runs, 97.0 ns per run`.
fn cost_per_switch(output: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.starts_with("sched_switch"))?;
    let before = line.split(" ns per run").next().filter(|b| b.len() < line.len())?;
    before.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_is_the_sched_switch_run_time() {
        let output = "attached: TpBtf\nload: 900 ping-pong round trips in 5.00 s\n\
                      context switches: 4000 (800/s, all CPUs)\n\
                      sched_switch_btf: 4000 runs, 97.5 ns per run\nresync: 10 runs, 76.0 ns per run\n";
        assert_eq!(cost_per_switch(output), Some(97.5));
        assert_eq!(cost_per_switch("sched_switch_btf: no runs\n"), None);
    }
}
