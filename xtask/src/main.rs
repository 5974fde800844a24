//! Workspace tasks: `cargo xtask <command>`. One module per command; this file only
//! parses the command line and dispatches.

mod arm64;
mod bench;
mod build_ebpf;
mod ci;
mod deb;
mod ebpf_cost;
mod soak;
mod text_order;
mod vm;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build and measurement tasks for the socktop agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF CPU-time program and install it in agent/ebpf/ (or --check it).
    BuildEbpf(build_ebpf::Args),
    /// Measure the eBPF program's cost per context switch (needs root).
    EbpfCost(ebpf_cost::Args),
    /// Benchmark this agent side by side with the original socktop_agent.
    Bench(bench::BenchArgs),
    /// Build the Debian package (man page and completions, then cargo deb).
    Deb(deb::Args),
    /// Soak the agent: many well-behaved clients beside a stream of hostile ones.
    Soak(soak::SoakArgs),
    /// The full suite as CI runs it (.ci/run): installs what is missing, every test required. Root.
    Ci,
    /// Boot Debian's kernels (5.10, 6.1, 6.12) under QEMU and run the eBPF tests and
    /// the agent end to end in each, as root and with only CAP_BPF + CAP_PERFMON.
    VmTest(vm::Args),
    /// Inside the guest: the checks `vm-test` runs.
    #[command(hide = true)]
    VmGuest(vm::guest::Args),
    /// Inside the guest: the agent end to end, as the user running it.
    #[command(hide = true)]
    VmGuestE2e(vm::e2e::Args),
    /// Boot Debian's arm64 kernel under QEMU and check the aarch64 agent there (eBPF, precision).
    VmTestArm64(arm64::Args),
    /// Profile which functions an agent runs and write agent/text-order.txt, the
    /// release build's code layout (or --check it against a binary). Root.
    TextOrder(text_order::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Some(Command::BuildEbpf(args)) => build_ebpf::run(&args),
        Some(Command::EbpfCost(args)) => ebpf_cost::run(&args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Deb(args)) => deb::run(&args),
        Some(Command::Soak(args)) => soak::run(args),
        Some(Command::Ci) => ci::run(),
        Some(Command::VmTest(args)) => vm::run(&args),
        Some(Command::VmGuest(args)) => vm::guest::run(&args),
        Some(Command::VmGuestE2e(args)) => vm::e2e::run(&args),
        Some(Command::VmTestArm64(args)) => arm64::run(&args),
        Some(Command::TextOrder(args)) => text_order::run(&args),
        // `cargo xtask` alone lists the commands.
        None => Ok(Cli::command().print_help()?),
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs this xtask, so nested builds use the same toolchain front end.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
