//! Starting a kernel under QEMU with virtme-ng (`vng`): the host's root filesystem
//! shared read-only over 9p (Debian's generic kernels have 9p as modules, which vng
//! puts in its initramfs), /tmp and the other writable trees as overlays in the
//! guest, the results folder shared read-write. The console (kernel log, verifier
//! messages included) goes to `console.log` in the results folder; the guest's own
//! output is echoed too.
//!
//! TCG (QEMU's emulator) is the default where KVM does not work: on a nested
//! hypervisor, `/dev/kvm` can exist while QEMU's `-cpu host` (which vng uses with
//! KVM) dies at start (`failed to set MSR 0x10a`) or crawls. `--accel auto` boots
//! the kernel once under KVM with no root filesystem, to its panic, and uses KVM
//! only if that takes seconds.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::kernels::Kernel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// A KVM boot that reaches its panic slower than this is no faster than TCG.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

impl Accel {
    /// `Auto` decided by booting `kernel` under KVM once.
    pub fn resolve(self, kernel: Option<&Kernel>, vm_dir: &Path) -> anyhow::Result<Accel> {
        let (Accel::Auto, Some(kernel)) = (self, kernel) else {
            return Ok(if self == Accel::Auto { Accel::Tcg } else { self });
        };
        if !Path::new("/dev/kvm").exists() {
            println!("vm-test: no /dev/kvm: TCG");
            return Ok(Accel::Tcg);
        }
        let log = vm_dir.join("kvm-probe.log");
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256M", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel"])
            .arg(&kernel.image)
            .args(["-append", "console=ttyS0 panic=-1"]);
        let started = Instant::now();
        let panicked = run_with_timeout(command, &log, KVM_PROBE_TIMEOUT, |_| {})
            .map(|_| std::fs::read_to_string(&log).unwrap_or_default().contains("Kernel panic"))
            .unwrap_or(false);
        let accel = if panicked { Accel::Kvm } else { Accel::Tcg };
        println!(
            "vm-test: KVM probe ({}): {} after {:.1} s: {accel:?}",
            log.display(),
            if panicked { "booted to its panic" } else { "failed or too slow" },
            started.elapsed().as_secs_f64()
        );
        Ok(accel)
    }
}

pub struct Options<'a> {
    pub accel: Accel,
    pub cpus: u32,
    pub memory: &'a str,
    pub results: &'a Path,
    pub timeout: Duration,
}

/// Boots `kernel`, runs `command` in it as root, and returns its exit status.
pub fn run(kernel: &Kernel, command: &str, options: &Options) -> anyhow::Result<i32> {
    let vng = super::workspace_vm_dir().join("venv/bin/vng");
    let mut vng_command = Command::new(&vng);
    vng_command.arg("--run").arg(&kernel.image);
    if options.accel != Accel::Kvm {
        vng_command.arg("--disable-kvm");
    }
    vng_command
        .args(["--force-9p", "--verbose", "--cpus", &options.cpus.to_string(), "--memory", options.memory])
        .arg("--rwdir")
        .arg(options.results)
        .args(["--exec", command]);
    let console = options.results.join("console.log");
    let status = run_with_timeout(vng_command, &console, options.timeout, |line| {
        // The kernel's own lines (and the decompressor's) stay in console.log; the
        // guest's are shown.
        let kernel_line = line.starts_with('[') || line.contains("KASLR") || line.contains("Probing EDD");
        if !kernel_line {
            println!("  {line}");
        }
    })?;
    Ok(status)
}

/// Runs `command` in a process group of its own with stdout and stderr in `log`,
/// each line also handed to `echo`; kills the group after `timeout`.
fn run_with_timeout(
    mut command: Command,
    log: &Path,
    timeout: Duration,
    mut echo: impl FnMut(&str),
) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt as _;
    let mut file = std::fs::File::create(log)?;
    let (reader, writer) = std::io::pipe()?;
    command.stdin(Stdio::null()).stdout(writer.try_clone()?).stderr(writer).process_group(0);
    let mut child = command.spawn().with_context(|| format!("starting {:?}", command.get_program()))?;
    drop(command);
    let group = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status.code().unwrap_or(-1)),
                Ok(None) if started.elapsed() > timeout => {
                    // SAFETY: kill(2) on the process group of our own child.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                    let _ = child.wait();
                    anyhow::bail!("killed after {timeout:?}");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                Err(error) => return Err(error.into()),
            }
        }
    });
    for line in BufReader::new(reader).split(b'\n') {
        let line = line?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        writeln!(file, "{line}")?;
        echo(line);
    }
    watchdog.join().map_err(|_| anyhow::anyhow!("the watchdog thread panicked"))?
}
