//! The cross toolchain for aarch64: Debian's rustc 1.96 (rustc-web), whose standard
//! library for the target comes from `libstd-rust-web-dev:arm64`, linked by the GNU
//! cross compiler, which also compiles the C in crates that have some (ring). rustup
//! cannot add targets on machines without access to its servers, and its rustc has no
//! aarch64 std; `scripts/install-arm64-toolchain.sh` installs these.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

/// The one cross target supported.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// The compiler that has a standard library for [`TARGET`].
const RUSTC: &str = "/usr/bin/rustc";

/// The GNU cross compiler, as linker and as C compiler.
const GCC: &str = "aarch64-linux-gnu-gcc";

/// Where the cross toolchain's C library lives (libc6-arm64-cross): the libraries the
/// agent was linked against, and the ones the guest loads.
pub const LIBRARY_DIR: &str = "/usr/aarch64-linux-gnu/lib";

/// Refuses any target but [`TARGET`], naming the one that works.
pub fn check_target(target: &str) -> Result<()> {
    ensure!(target == TARGET, "cross builds support only --target {TARGET}, not {target}");
    Ok(())
}

/// Sets the environment a `cargo build --target TARGET` (or `cargo deb --target`)
/// needs on `command`. The host's build scripts and proc macros are compiled by the
/// same rustc; cargo keeps them apart from rustup's by the compiler's version.
pub fn cross_environment(command: &mut Command) -> Result<&mut Command> {
    ensure!(
        Path::new(RUSTC).exists() && Path::new("/usr/lib/rustlib").join(TARGET).exists(),
        "no standard library for {TARGET}: run scripts/install-arm64-toolchain.sh (as root)"
    );
    let target_variable = TARGET.to_uppercase().replace('-', "_");
    Ok(command
        .env("RUSTC", RUSTC)
        .env(format!("CARGO_TARGET_{target_variable}_LINKER"), GCC)
        .env(format!("CC_{}", TARGET.replace('-', "_")), GCC)
        .env(format!("AR_{}", TARGET.replace('-', "_")), "aarch64-linux-gnu-ar"))
}

/// Builds the agent for [`TARGET`] with `profile` and returns its binary.
pub fn build_agent(root: &Path, profile: &str) -> Result<PathBuf> {
    let mut command = Command::new(super::super::cargo());
    command.current_dir(root).args([
        "build",
        "--locked",
        "-p",
        "socktop_agent",
        "--bin",
        "socktop_agent",
        "--target",
        TARGET,
        "--profile",
        profile,
    ]);
    let status = cross_environment(&mut command)?.status().context("running cargo build")?;
    ensure!(status.success(), "cargo build --target {TARGET} failed");
    let profile_dir = if profile == "dev" { "debug" } else { profile };
    Ok(root.join("target").join(TARGET).join(profile_dir).join("socktop_agent"))
}
