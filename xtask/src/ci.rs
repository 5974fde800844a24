//! `cargo xtask ci`: the full suite, as CI runs it on a fresh machine. The steps
//! live in one place, `.ci/run` (CI calls that script itself, with no Rust
//! toolchain needed before it), and this command runs it, so the two cannot drift
//! apart. As root it installs what is missing (Debian packages, the eBPF
//! toolchain, the examples' packages) and sets `SOCKTOP_REQUIRE_ALL=1`, so any
//! test that would skip fails instead.

use std::process::Command;

use anyhow::{Context, ensure};

pub fn run() -> anyhow::Result<()> {
    let root = super::workspace_root();
    let status =
        Command::new("bash").arg(root.join(".ci/run")).current_dir(&root).status().context("running .ci/run")?;
    ensure!(status.success(), ".ci/run failed ({status})");
    Ok(())
}
