//! The eBPF CPU accounting's own cost per `sched_switch`: a figure only our agent
//! has (the original counts from /proc), measured by the agent's `ebpf_cost`
//! example, the same one `cargo xtask ebpf-cost` runs. Until that example exists
//! in the tree, the table says so instead of showing a figure.

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
            label: "eBPF program cost per `sched_switch` (no equivalent in the original)".into(),
            unit: "ns",
            ours: vec![Summary::of(&[ns])],
            original: vec![None],
        }),
        Err(e) => table.notes.push(format!("eBPF cost per sched_switch: not measured ({e:#}).")),
    }
}

/// Runs the example and reads the first number on its line about the cost per switch.
fn measure(root: &Path) -> anyhow::Result<f64> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
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

fn cost_per_switch(output: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.contains("switch") && l.contains("ns"))?;
    line.split(|c: char| !(c.is_ascii_digit() || c == '.')).find_map(|word| word.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_is_the_first_number_on_the_cost_line() {
        assert_eq!(cost_per_switch("loaded\ncost: 87.5 ns per sched_switch (12000 switches)\n"), Some(87.5));
        assert_eq!(cost_per_switch("nothing here\n"), None);
    }
}
