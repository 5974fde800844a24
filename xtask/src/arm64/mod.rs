//! `cargo xtask vm-test-arm64`: the agent built for aarch64, run as root on Debian's
//! arm64 kernel under `qemu-system-aarch64`. The guest checks that the eBPF programs
//! load (the embedded object is little-endian BPF, the same bytes as on amd64) and
//! that a busy loop's CPU seconds on `/metrics` match its `/proc/PID/schedstat`.
//! The guest's userland is an initramfs of Debian arm64 packages, since the host's
//! root filesystem is amd64. The exit status is the guest's number of failed checks.

mod cpio;
mod debian;
mod guest;
mod qemu;
pub mod toolchain;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};

/// The eBPF object the agent embeds, as committed.
const EBPF_OBJECT: &str = "agent/ebpf/socktop-cpu.bpf.o";

#[derive(clap::Args)]
pub struct Args {
    /// Debian arm64 kernel: a series (6.1 is bookworm's, 6.12 Debian 13's) or a
    /// `linux-image-...` package.
    #[arg(long, default_value = "6.1")]
    kernel: String,
    /// Cargo profile the agent is cross-built with.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Run the agent from this arm64 package instead of building it.
    #[arg(long, conflicts_with = "profile")]
    deb: Option<PathBuf>,
    /// Emulated CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Give up on the guest after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let root = super::workspace_root();
    let work = root.join("target/arm64-vm");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let agent = match &args.deb {
        Some(deb) => binary_from_package(deb, &work.join("package"))?,
        None => toolchain::build_agent(&root, &args.profile)?,
    };
    check_embedded_object(&agent, &root.join(EBPF_OBJECT))?;

    let kernel_package = debian::kernel_package(&args.kernel)?;
    let (kernel, release) = debian::kernel_image(&debian::unpacked(&work, &kernel_package)?)?;
    let busybox = debian::unpacked(&work, "busybox-static")?.join("bin/busybox");
    let initramfs = work.join("initramfs.cpio.gz");
    guest::write_initramfs(&initramfs, &busybox, &agent)?;

    let booted = Instant::now();
    let status = qemu::boot(&kernel, &initramfs, args.cpus, Duration::from_secs(args.timeout_s))?;
    println!(
        "vm-test-arm64: kernel {release}, {} failed check(s); guest {:.1} s, in all {:.1} s (wall)",
        status,
        booted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

/// `usr/bin/socktop_agent` of an arm64 package, unpacked under `dir`.
fn binary_from_package(deb: &Path, dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let status = Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir).status().context("running dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    Ok(dir.join("usr/bin/socktop_agent"))
}

/// Proves the object runs as built: an eBPF ELF (little-endian, machine 247) found
/// byte for byte in the aarch64 binary.
fn check_embedded_object(agent: &Path, object: &Path) -> Result<()> {
    let object_bytes = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    ensure!(object_bytes.starts_with(b"\x7fELF"), "{} is not an ELF file", object.display());
    // EI_DATA 1: little-endian; e_machine (bytes 18-19, in that byte order) 247: EM_BPF.
    ensure!(
        object_bytes[5] == 1 && u16::from_le_bytes([object_bytes[18], object_bytes[19]]) == 247,
        "{} is not a little-endian BPF object",
        object.display()
    );
    let binary = fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    ensure!(binary.starts_with(b"\x7fELF") && u16::from_le_bytes([binary[18], binary[19]]) == 183, "not aarch64");
    ensure!(
        binary.windows(object_bytes.len()).any(|window| window == object_bytes),
        "{} does not embed {} unchanged",
        agent.display(),
        object.display()
    );
    println!(
        "vm-test-arm64: {} is an aarch64 ELF embedding {} ({} bytes, little-endian BPF) unchanged",
        agent.display(),
        EBPF_OBJECT,
        object_bytes.len()
    );
    Ok(())
}
