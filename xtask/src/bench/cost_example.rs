//! The agent's `ebpf_cost` example, built in release from this tree and from an
//! earlier commit, so the eBPF programs' cost can be measured side by side with
//! the object that commit embedded. The earlier tree is exported with
//! `git archive` under `.bench/` (no worktree, nothing added to the repository)
//! and built into a target directory of its own: cargo names a workspace's own
//! crates' artifacts by their path inside the workspace, so the two trees' crates
//! would share artifact names in one target directory, and the exported files,
//! dated from their commit, would look older than this tree's artifacts and be
//! taken as built. Each example is copied out of its target directory, so a
//! measurement never runs what a later build replaced.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

/// Builds this tree's example and returns a copy of it under `.bench/`.
pub fn current(root: &Path) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let copy = root.join(".bench/ebpf-cost/current/ebpf_cost");
    build(root, &target, &copy)?;
    Ok(copy)
}

/// The example of `commit`'s tree, built once and kept under `.bench/`.
pub fn at_commit(root: &Path, commit: &str) -> anyhow::Result<PathBuf> {
    let folder = root.join(".bench/ebpf-cost").join(commit);
    let copy = folder.join("ebpf_cost");
    if copy.is_file() {
        return Ok(copy);
    }
    let tree = folder.join("src");
    if !tree.join("Cargo.toml").is_file() {
        export(root, commit, &tree)?;
    }
    eprintln!("bench: building the ebpf_cost example of {commit} (release, with its dependencies, once)");
    build(&tree, &folder.join("target"), &copy)?;
    Ok(copy)
}

/// Writes `commit`'s files into `tree`.
fn export(root: &Path, commit: &str, tree: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = archive.stdout.take().context("git archive's output")?;
    let unpacked = Command::new("tar").arg("-x").arg("-C").arg(tree).stdin(tar).status().context("running tar")?;
    let archived = archive.wait()?;
    ensure!(
        archived.success() && unpacked.success(),
        "exporting {commit} failed (git archive {archived}, tar {unpacked})"
    );
    Ok(())
}

/// Builds the example of the workspace at `tree` into `target` and copies it to `copy`.
fn build(tree: &Path, target: &Path, copy: &Path) -> anyhow::Result<()> {
    let output = Command::new(crate::cargo())
        .current_dir(tree)
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "--release", "--package", "socktop_agent", "--example", "ebpf_cost"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(output.status.success(), "building the ebpf_cost example in {} failed", tree.display());
    let Some(built) = executable(&String::from_utf8_lossy(&output.stdout)) else {
        bail!("cargo did not say where it built the ebpf_cost example");
    };
    let folder = copy.parent().context("a copy needs a folder")?;
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    // Through a temporary name, so an interrupted copy is never taken for a build.
    let partial = copy.with_extension("partial");
    std::fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&partial, copy).with_context(|| format!("renaming to {}", copy.display()))?;
    Ok(())
}

/// The `ebpf_cost` executable among cargo's JSON build messages.
fn executable(messages: &str) -> Option<PathBuf> {
    messages.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).find_map(|message| {
        let is_artifact = message["reason"] == "compiler-artifact" && message["target"]["name"] == "ebpf_cost";
        is_artifact.then(|| message["executable"].as_str().map(PathBuf::from)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_found_among_the_build_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"libc"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ebpf_cost","kind":["example"]},"#,
            r#""executable":"/t/release/examples/ebpf_cost"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(executable(messages), Some(PathBuf::from("/t/release/examples/ebpf_cost")));
        assert_eq!(executable(r#"{"reason":"build-finished","success":true}"#), None);
    }
}
