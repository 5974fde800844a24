//! `cargo xtask vm-test --kernel <5.10|6.1|6.12|host|all>`: the eBPF programs on
//! the kernels people run, each booted under QEMU with the host's root filesystem
//! shared read-only over 9p (virtme-ng), so the test executables and the agent
//! built here run in the guest unchanged. Debian's kernels are fetched and cached
//! by [`kernels`]; the checks the guest runs are in [`guest`] and [`e2e`]; how the
//! VM is started in [`boot`]. `host` runs the same checks on the running kernel,
//! without a VM. The exit status is 0 only when every check passed on every kernel.
//! See docs/EBPF.md, "Kernels in VMs".

mod boot;
pub mod e2e;
pub mod guest;
mod kernels;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{cargo, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Kernels to test: 5.10, 6.1, 6.12 (Debian's newest build of each), host (the
    /// running kernel, no VM), or all; comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    kernel: Vec<String>,
    /// Run this command (with /bin/sh, as root, in the current folder) in the guest
    /// instead of the checks, and exit with its status.
    #[arg(long)]
    exec: Option<String>,
    /// How the guest's CPUs are emulated: tcg, kvm, or auto (KVM when a probe
    /// boot with `-cpu host` succeeds, else TCG).
    #[arg(long, value_enum, default_value_t = boot::Accel::Auto)]
    accel: boot::Accel,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory.
    #[arg(long, default_value = "2G")]
    memory: String,
    /// A kernel whose checks take longer than this (boot included) fails.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
}

/// What one kernel's run found.
struct Outcome {
    label: String,
    wall_s: f64,
    /// summary.tsv as the guest wrote it; None when the guest never got that far.
    summary: Option<String>,
    error: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let vm_dir = workspace_vm_dir();
    let labels = kernel_labels(&args.kernel)?;
    let wants_vm = labels.iter().any(|label| label != "host");
    if wants_vm {
        let status = Command::new("bash")
            .arg(root.join("scripts/install-vm-tools.sh"))
            .arg(vm_dir.join("venv"))
            .status()
            .context("running scripts/install-vm-tools.sh")?;
        anyhow::ensure!(status.success(), "scripts/install-vm-tools.sh failed: {status}");
    }
    let series: Vec<_> =
        labels.iter().filter_map(|label| kernels::SERIES.iter().find(|s| s.version == label)).copied().collect();
    let fetched = kernels::fetch(&vm_dir, &series)?;
    let binaries = if args.exec.is_none() { Some(build_binaries(&root)?) } else { None };
    let (qemu, accel) = if wants_vm {
        let qemu = kernels::fetch_qemu(&vm_dir)?;
        println!("vm-test: QEMU {}", qemu.display());
        let accel = args.accel.resolve(fetched.first(), &qemu, &vm_dir)?;
        (qemu, accel)
    } else {
        (PathBuf::new(), boot::Accel::Tcg)
    };
    let mut outcomes = Vec::new();
    for label in &labels {
        let kernel = series.iter().position(|s| s.version == label).map(|at| &fetched[at]);
        let results = vm_dir.join("results").join(label);
        let _ = std::fs::remove_dir_all(&results);
        std::fs::create_dir_all(&results)?;
        let guest_command = match (&args.exec, &binaries) {
            // vng's own exit status is 255 when the guest has no udev (see boot.rs).
            (Some(exec), _) => format!("(\n{exec}\n); echo $? > {}", shell_quoted(&results.join("exit-status"))?),
            (None, Some(binaries)) => {
                let tcg = kernel.is_some() && accel == boot::Accel::Tcg;
                guest_command(binaries, &results, args.timeout_s, tcg)?
            }
            (None, None) => unreachable!("binaries are built unless --exec"),
        };
        let name = kernel.map_or("the running kernel (no VM)".to_owned(), |k| k.package.clone());
        println!("== vm-test {label}: {name}");
        let started = Instant::now();
        let boot = |kernel: &kernels::Kernel| {
            boot::run(
                kernel,
                &guest_command,
                &boot::Options {
                    qemu: &qemu,
                    accel,
                    cpus: args.cpus,
                    memory: &args.memory,
                    results: &results,
                    timeout: std::time::Duration::from_secs(args.timeout_s),
                    // The guest's checks time out at a third of `timeout_s` and
                    // print; a minute past that, silence means the guest stalled.
                    stall: std::time::Duration::from_secs(args.timeout_s / 3 + 60),
                },
            )
        };
        let mut ran = match kernel {
            Some(kernel) => boot(kernel),
            None => run_on_host(&guest_command),
        };
        let mut note = None;
        if let (Some(kernel), None) = (kernel, &args.exec)
            && let Some(how) = died_before_its_checks_ended(&ran, &results)
        {
            // Once, with the first boot's logs kept: emulated guests have stalled
            // (both CPUs busy, nothing logged) and crashed in the kernel's own
            // code patching, in runs whose every check had passed so far
            // (docs/EBPF.md, "Kernels in VMs"). A check that fails is not retried.
            let first = vm_dir.join("results").join(format!("{label}-first-boot"));
            let _ = std::fs::remove_dir_all(&first);
            std::fs::rename(&results, &first)?;
            std::fs::create_dir_all(&results)?;
            println!("== vm-test {label}: the first boot {how}; booting again (its logs: {})", first.display());
            note = Some(format!("second boot: the first {how} (logs in {})", first.display()));
            ran = boot(kernel);
        }
        let wall_s = started.elapsed().as_secs_f64();
        if args.exec.is_some() {
            ran?;
            let status = std::fs::read_to_string(results.join("exit-status"));
            let code: i32 = status.ok().and_then(|s| s.trim().parse().ok()).context("the command did not finish")?;
            println!("== vm-test {label}: exit status {code} after {wall_s:.0} s");
            if code != 0 {
                std::process::exit(code);
            }
            continue;
        }
        let summary = std::fs::read_to_string(results.join("summary.tsv")).ok();
        let error = match ran {
            Ok(_) if summary.as_deref().is_some_and(|s| s.contains("\ndone\t")) => None,
            Ok(code) => Some(format!(
                "the guest stopped before finishing its checks (exit status {code}); see {}",
                results.display()
            )),
            Err(error) => Some(format!("{error:#}")),
        };
        if let Some(note) = note {
            println!("  {label}: {note}");
        }
        outcomes.push(Outcome { label: label.clone(), wall_s, summary, error });
    }
    if args.exec.is_some() {
        return Ok(());
    }
    let failed = print_summary(&outcomes);
    if failed > 0 {
        bail!("{failed} of {} kernels failed (logs under {})", outcomes.len(), vm_dir.join("results").display());
    }
    Ok(())
}

/// How a boot ended early, if it did without any check failing: it stalled, or the
/// guest stopped (a kernel panic) before its checks were done. `None` when the
/// checks ran to their end, failed ones included, or a check failed before the
/// guest died.
fn died_before_its_checks_ended(ran: &anyhow::Result<i32>, results: &Path) -> Option<&'static str> {
    let summary = std::fs::read_to_string(results.join("summary.tsv")).unwrap_or_default();
    if summary.contains("\ndone\t") || summary.lines().any(|line| line.starts_with("FAIL\t")) {
        return None;
    }
    match ran {
        Err(error) if matches!(error.downcast_ref(), Some(boot::Stopped::Stalled(_))) => Some("stalled"),
        Ok(_) => Some("stopped before its checks ended"),
        Err(_) => None,
    }
}

/// Where kernels, tools and results are kept.
fn workspace_vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// `all` expands to the matrix; others are checked against the known series.
fn kernel_labels(asked: &[String]) -> anyhow::Result<Vec<String>> {
    let mut labels = Vec::new();
    for label in asked {
        let expanded: Vec<String> = match label.as_str() {
            "all" => kernels::SERIES.iter().map(|s| s.version.to_owned()).chain(["host".to_owned()]).collect(),
            "host" => vec!["host".to_owned()],
            version if kernels::SERIES.iter().any(|s| s.version == version) => vec![version.to_owned()],
            other => bail!("unknown kernel {other:?}: one of 5.10, 6.1, 6.12, host, all"),
        };
        for one in expanded {
            if !labels.contains(&one) {
                labels.push(one);
            }
        }
    }
    Ok(labels)
}

/// The executables the guest runs, built here (the debug profile the tests use).
struct Binaries {
    ebpf_cpu: PathBuf,
    cpu_closure: PathBuf,
    agent: PathBuf,
    /// A copy of this program, which runs the guest's side: a rebuild of the
    /// workspace while the matrix runs replaces target/debug/xtask.
    xtask: PathBuf,
}

fn build_binaries(root: &Path) -> anyhow::Result<Binaries> {
    let output = Command::new(cargo())
        .current_dir(root)
        .args(["test", "--quiet", "-p", "socktop_agent", "--test", "ebpf_cpu", "--test", "cpu_closure"])
        .args(["--no-run", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the eBPF test executables")?;
    anyhow::ensure!(output.status.success(), "building the eBPF test executables failed");
    let messages = String::from_utf8(output.stdout)?;
    let test_executable = |name: &str| {
        test_executable(&messages, name).with_context(|| format!("cargo reported no {name} test executable"))
    };
    let (ebpf_cpu, cpu_closure) = (test_executable("ebpf_cpu")?, test_executable("cpu_closure")?);
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--quiet", "-p", "socktop_agent", "--bin", "socktop_agent"])
        .status()?;
    anyhow::ensure!(status.success(), "building the agent failed");
    // Written aside and renamed: a guest of another run may be executing the old copy.
    let xtask = workspace_vm_dir().join("xtask");
    let partial = workspace_vm_dir().join(format!("xtask.{}", std::process::id()));
    std::fs::copy(std::env::current_exe()?, &partial).context("copying the xtask executable")?;
    std::fs::rename(&partial, &xtask)?;
    Ok(Binaries { ebpf_cpu, cpu_closure, agent: root.join("target/debug/socktop_agent"), xtask })
}

/// The test executable named `name` in cargo's JSON build messages.
fn test_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).find_map(|message| {
        let wanted = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == name
            && message["profile"]["test"] == true;
        wanted.then(|| message["executable"].as_str().map(PathBuf::from)).flatten()
    })
}

/// The shell command (vng hands it to /bin/sh) that runs [`guest::run`].
fn guest_command(binaries: &Binaries, results: &Path, timeout_s: u64, tcg: bool) -> anyhow::Result<String> {
    let xtask = &binaries.xtask;
    // A third of the kernel's time per check: one that hangs is killed and its
    // processes described while the guest lives, and the others still run.
    let check_timeout_s = (timeout_s / 3).to_string();
    let words = [
        xtask.as_path(),
        Path::new("vm-guest"),
        Path::new("--results"),
        results,
        Path::new("--ebpf-cpu"),
        &binaries.ebpf_cpu,
        Path::new("--cpu-closure"),
        &binaries.cpu_closure,
        Path::new("--agent"),
        &binaries.agent,
        Path::new("--check-timeout-s"),
        Path::new(&check_timeout_s),
    ];
    let mut command = words.iter().map(|word| shell_quoted(word)).collect::<anyhow::Result<Vec<_>>>()?.join(" ");
    if tcg {
        command.push_str(" --tcg");
    }
    Ok(command)
}

fn shell_quoted(word: &Path) -> anyhow::Result<String> {
    let word = word.to_str().with_context(|| format!("{} is not UTF-8", word.display()))?;
    Ok(format!("'{}'", word.replace('\'', r"'\''")))
}

/// `--kernel host`: the same checks on the running kernel (needs root).
fn run_on_host(command: &str) -> anyhow::Result<i32> {
    let status = Command::new("sh").args(["-c", command]).status()?;
    Ok(status.code().unwrap_or(-1))
}

/// Prints each kernel's runs and returns how many kernels failed.
fn print_summary(outcomes: &[Outcome]) -> usize {
    println!("\n== vm-test summary");
    let mut failed = 0;
    for outcome in outcomes {
        let mut kernel = outcome.label.clone();
        let mut fails = 0;
        let mut lines = Vec::new();
        for line in outcome.summary.as_deref().unwrap_or("").lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["kernel", release] => kernel = format!("{} ({release})", outcome.label),
                [verdict, check, identity, seconds, notes] => {
                    if *verdict != "PASS" {
                        fails += 1;
                    }
                    lines.push(format!("  {verdict:5} {check:12} as {identity:12} {seconds:>6} s"));
                    for note in notes.split(" | ").filter(|note| !note.is_empty()) {
                        lines.push(format!("          {note}"));
                    }
                }
                _ => {}
            }
        }
        let verdict = if outcome.error.is_some() || fails > 0 { "FAIL" } else { "PASS" };
        if verdict == "FAIL" {
            failed += 1;
        }
        println!(
            "{verdict} {kernel}: {:.0} s wall, {fails} of {} runs failed",
            outcome.wall_s,
            lines.iter().filter(|l| l.starts_with("  ") && !l.starts_with("   ")).count()
        );
        if let Some(error) = &outcome.error {
            println!("  {error}");
        }
        for line in lines {
            println!("{line}");
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_the_three_series_and_the_host() {
        let labels = kernel_labels(&["all".to_owned(), "6.1".to_owned()]).unwrap();
        assert_eq!(labels, ["5.10", "6.1", "6.12", "host"]);
        assert!(kernel_labels(&["4.19".to_owned()]).is_err());
    }

    #[test]
    fn test_executables_are_found_in_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"socktop_agent"},"profile":{"test":false},"executable":"/t/socktop_agent"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ebpf_cpu"},"profile":{"test":true},"executable":"/t/deps/ebpf_cpu-1a"}"#,
            "\n"
        );
        assert_eq!(test_executable(messages, "ebpf_cpu"), Some(PathBuf::from("/t/deps/ebpf_cpu-1a")));
        assert_eq!(test_executable(messages, "cpu_closure"), None);
    }
}
