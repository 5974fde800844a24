//! `cargo xtask build-ebpf`: builds `agent-ebpf` for `bpfel-unknown-none` with
//! Debian's rustc (which ships a precompiled `core` for BPF, so no `-Z build-std`)
//! and bpf-linker, then installs the object where the agent embeds it. With
//! `--check` it rebuilds and fails when the result differs from the committed object.
//!
//! The object is committed so a plain `cargo build` of the agent needs no eBPF
//! toolchain. Builds are byte-reproducible: paths are remapped, the lock file pins
//! every crate, and the linker emits no debug sections.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

/// Where the agent's loader embeds the object from (`include_bytes_aligned!`).
pub const OBJECT_PATH: &str = "agent/ebpf/socktop-cpu.bpf.o";
const TARGET: &str = "bpfel-unknown-none";
const BINARY: &str = "socktop-cpu";

#[derive(clap::Args)]
pub struct Args {
    /// Rebuild and fail if the object differs from the committed one.
    #[arg(long)]
    check: bool,
    /// The rustc that has `core` for the BPF targets (Debian's rustc-web).
    #[arg(long, default_value = "/usr/bin/rustc")]
    rustc: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let root = super::workspace_root();
    let built = build(&root, &args.rustc)?;
    let committed = root.join(OBJECT_PATH);
    if args.check {
        return check(&built, &committed);
    }
    fs::copy(&built, &committed).with_context(|| format!("copying to {}", committed.display()))?;
    println!("wrote {OBJECT_PATH} ({} bytes)", fs::metadata(&committed)?.len());
    Ok(())
}

/// Builds the program and returns the path of the linked object.
pub fn build(root: &Path, rustc: &Path) -> Result<PathBuf> {
    let crate_dir = root.join("agent-ebpf");
    ensure!(rustc.exists(), "{} not found: run scripts/install-ebpf-toolchain.sh", rustc.display());
    let status = Command::new(super::cargo())
        .current_dir(&crate_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .env("RUSTC", rustc)
        // aya-ebpf uses #![feature(asm_experimental_arch)]; Debian's rustc is stable.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path_with_cargo_bin()?)
        .env("CARGO_ENCODED_RUSTFLAGS", remap_flags(root))
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .context("running cargo for agent-ebpf")?;
    ensure!(status.success(), "building agent-ebpf failed ({status})");
    Ok(crate_dir.join("target").join(TARGET).join("release").join(BINARY))
}

fn check(built: &Path, committed: &Path) -> Result<()> {
    let fresh = fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    let kept = fs::read(committed).with_context(|| format!("reading {}", committed.display()))?;
    if fresh != kept {
        bail!(
            "{OBJECT_PATH} is stale: a fresh build differs ({} vs {} bytes); run `cargo xtask build-ebpf` and commit it",
            fresh.len(),
            kept.len()
        );
    }
    println!("{OBJECT_PATH} matches a fresh build ({} bytes)", kept.len());
    Ok(())
}

/// PATH with cargo's bin folder first, where `cargo install bpf-linker` puts it.
fn path_with_cargo_bin() -> Result<OsString> {
    let cargo_home = cargo_home();
    let mut dirs = vec![cargo_home.join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    Ok(std::env::join_paths(dirs)?)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

/// Remaps the checkout and cargo home so no build-machine path reaches the object,
/// whatever folder it is built in. Flags are separated by 0x1f.
fn remap_flags(root: &Path) -> OsString {
    let mut flags = OsString::from("--remap-path-prefix=");
    flags.push(root.as_os_str());
    flags.push("=socktop\u{1f}--remap-path-prefix=");
    flags.push(cargo_home().as_os_str());
    flags.push("=cargo");
    flags
}
