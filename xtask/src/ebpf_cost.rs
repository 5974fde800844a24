//! `cargo xtask ebpf-cost`: how much the sched_switch program costs per context
//! switch. The measurement itself is the agent's `ebpf_cost` example (it needs the
//! agent's loader); this command builds and runs it with the committed object.

use std::process::Command;

use anyhow::{Context, Result, ensure};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of context-switch load to measure over.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

pub fn run(args: &Args) -> Result<()> {
    let status = Command::new(super::cargo())
        .current_dir(super::workspace_root())
        .args(["run", "--quiet", "--package", "socktop_agent", "--example", "ebpf_cost", "--"])
        .arg(args.seconds.to_string())
        .status()
        .context("running the ebpf_cost example")?;
    ensure!(status.success(), "ebpf_cost failed ({status})");
    Ok(())
}
