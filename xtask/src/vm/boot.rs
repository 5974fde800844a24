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
    /// `Auto` decided by booting `kernel` under KVM once, with `qemu`.
    pub fn resolve(self, kernel: Option<&Kernel>, qemu: &Path, vm_dir: &Path) -> anyhow::Result<Accel> {
        let (Accel::Auto, Some(kernel)) = (self, kernel) else {
            return Ok(if self == Accel::Auto { Accel::Tcg } else { self });
        };
        if !Path::new("/dev/kvm").exists() {
            println!("vm-test: no /dev/kvm: TCG");
            return Ok(Accel::Tcg);
        }
        let log = vm_dir.join("kvm-probe.log");
        let mut command = Command::new(qemu);
        command
            .args(["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256M", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel"])
            .arg(&kernel.image)
            .args(["-append", "console=ttyS0 panic=-1"]);
        let started = Instant::now();
        let panicked =
            run_with_timeout(command, &log, Limits { total: KVM_PROBE_TIMEOUT, silence: None }, String::new, |_| {})
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
    /// The QEMU binary (kernels.rs: bookworm-backports' build).
    pub qemu: &'a Path,
    pub accel: Accel,
    pub cpus: u32,
    pub memory: &'a str,
    pub results: &'a Path,
    pub timeout: Duration,
    /// A guest silent this long has stalled: its registers are dumped and it is
    /// killed (the guest's own checks time out, and say so, well before).
    pub stall: Duration,
}

/// How a boot ended when it did not end by itself.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("killed after {0:?}")]
    TimedOut(Duration),
    #[error("stalled: the guest printed nothing for {0:?}; its CPUs' registers are at the end of console.log")]
    Stalled(Duration),
}

/// Boots `kernel`, runs `command` in it as root, and returns its exit status.
pub fn run(kernel: &Kernel, command: &str, options: &Options) -> anyhow::Result<i32> {
    let venv_bin = super::workspace_vm_dir().join("venv/bin");
    let mut vng_command = Command::new(venv_bin.join("vng"));
    // vng starts `virtme-run`, installed beside it, through the shell's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(venv_bin.clone()).chain(std::env::split_paths(&path)))?;
    vng_command.env("PATH", path);
    vng_command.arg("--run").arg(&kernel.image);
    // Without address randomisation the instruction pointers dumped at a stall
    // are named through the guest's /proc/kallsyms, copied at start (guest.rs).
    let mut append = String::from("nokaslr");
    if options.accel != Accel::Kvm {
        // The emulated TSC runs off the host's clock, the same on every CPU, but
        // its readings race the emulated HPET's: Linux marks it unstable, at boot
        // (6.1, left on the HPET: CLOCK_MONOTONIC then ran at another rate than
        // the scheduler's clock, 6 - 8 ms a second apart) or later by its
        // clocksource watchdog, whose switch patches the scheduler clock's static
        // branch (under QEMU 7.2 that crashed 6.12: `Oops: int3` in
        // `sched_clock_cpu`). Trusted, it is the one clock, as on real CPUs.
        vng_command.arg("--disable-kvm");
        append.push_str(" tsc=reliable");
    }
    let monitor = options.results.join("monitor.sock");
    vng_command
        .args(["--force-9p", "--verbose", "--cpus", &options.cpus.to_string(), "--memory", options.memory])
        .args(["--append", &append])
        .arg("--qemu")
        .arg(options.qemu)
        .arg(format!("--qemu-opts=-monitor unix:{},server,nowait", monitor.display()))
        .arg("--rwdir")
        .arg(options.results)
        .args(["--exec", command]);
    let console = options.results.join("console.log");
    let limits = Limits { total: options.timeout, silence: Some(options.stall) };
    // The guest copies its /proc/kallsyms there at start (Debian's System.map is a
    // placeholder pointing to the -dbg package); without it, addresses stay bare.
    let kallsyms = options.results.join("kallsyms");
    let on_stall = || registers_at_stall(&monitor, &kallsyms);
    let status = run_with_timeout(vng_command, &console, limits, on_stall, |line| {
        // The kernel's own lines (and the decompressor's) stay in console.log; the
        // guest's are shown.
        let kernel_line = line.starts_with('[') || line.contains("KASLR") || line.contains("Probing EDD");
        if !kernel_line {
            println!("  {line}");
        }
    })?;
    Ok(status)
}

/// When a run is killed: after `total`, or once nothing was printed for `silence`.
struct Limits {
    total: Duration,
    silence: Option<Duration>,
}

/// Runs `command` in a process group of its own with stdout and stderr in `log`,
/// each line also handed to `echo`; kills the group past `limits`, after writing
/// what `on_stall` returns to `log` if it fell silent.
fn run_with_timeout(
    mut command: Command,
    log: &Path,
    limits: Limits,
    on_stall: impl FnOnce() -> String + Send,
    mut echo: impl FnMut(&str),
) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut file = std::fs::File::create(log)?;
    let (reader, writer) = std::io::pipe()?;
    command.stdin(Stdio::null()).stdout(writer.try_clone()?).stderr(writer).process_group(0);
    let mut child = command.spawn().with_context(|| format!("starting {:?}", command.get_program()))?;
    drop(command);
    let group = child.id() as i32;
    let started = Instant::now();
    // Milliseconds from `started` to the last line read.
    let last_line_ms = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let watchdog = scope.spawn(|| {
            let kill = |child: &mut std::process::Child| {
                // SAFETY: kill(2) on the process group of our own child.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = child.wait();
            };
            loop {
                let silent =
                    started.elapsed().saturating_sub(Duration::from_millis(last_line_ms.load(Ordering::Relaxed)));
                match child.try_wait() {
                    Ok(Some(status)) => return Ok((status.code().unwrap_or(-1), None)),
                    Ok(None) if started.elapsed() > limits.total => {
                        kill(&mut child);
                        return Err(Stopped::TimedOut(limits.total).into());
                    }
                    Ok(None) if limits.silence.is_some_and(|limit| silent > limit) => {
                        let registers = on_stall();
                        kill(&mut child);
                        return Ok((-1, Some((registers, silent))));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                    Err(error) => return Err(anyhow::Error::from(error)),
                }
            }
        });
        for line in BufReader::new(reader).split(b'\n') {
            let line = line?;
            last_line_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            writeln!(file, "{line}")?;
            echo(line);
        }
        match watchdog.join().map_err(|_| anyhow::anyhow!("the watchdog thread panicked"))?? {
            (_, Some((registers, silent))) => {
                writeln!(file, "=== stalled: nothing printed for {silent:?}; registers of each CPU\n{registers}")?;
                Err(Stopped::Stalled(silent).into())
            }
            (status, None) => Ok(status),
        }
    })
}

/// Each CPU's registers, read three times a second apart through QEMU's monitor,
/// with the kernel function each instruction pointer lies in: a CPU spinning in
/// one place, or one stuck at a breakpoint left by code patching, shows in them.
fn registers_at_stall(monitor: &Path, symbol_file: &Path) -> String {
    let symbols = KernelSymbols::read(symbol_file);
    let mut out = String::new();
    for round in 1..=3 {
        match monitor_command(monitor, "info registers -a") {
            Ok(answer) => {
                out.push_str(&format!("--- reading {round}\n"));
                for line in
                    answer.lines().filter(|l| l.starts_with("CPU#") || l.starts_with("RIP=") || l.starts_with("RSP="))
                {
                    out.push_str(line.trim_end());
                    if let Some(rip) =
                        line.strip_prefix("RIP=").and_then(|r| u64::from_str_radix(&r[..16.min(r.len())], 16).ok())
                    {
                        out.push_str(&format!("   <{}>", symbols.name(rip)));
                    }
                    out.push('\n');
                }
            }
            Err(error) => out.push_str(&format!("the monitor did not answer: {error}\n")),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    out
}

/// One command to QEMU's human monitor on a Unix socket; its answer.
fn monitor_command(socket: &Path, command: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_millis(1500)))?;
    let drain = |stream: &mut std::os::unix::net::UnixStream| {
        let mut text = Vec::new();
        let mut buffer = [0u8; 65536];
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            text.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    };
    drain(&mut stream); // the greeting
    stream.write_all(format!("{command}\n").as_bytes())?;
    Ok(drain(&mut stream))
}

/// A kernel's text symbols from /proc/kallsyms (System.map's format), sorted by address.
struct KernelSymbols(Vec<(u64, String)>);

impl KernelSymbols {
    fn read(file: &Path) -> Self {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let (address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
                matches!(kind, "t" | "T" | "w" | "W")
                    .then(|| Some((u64::from_str_radix(address, 16).ok()?, name.to_owned())))?
            })
            .collect();
        symbols.sort_unstable();
        Self(symbols)
    }

    /// `function+offset`, or where it lies outside the kernel's text (a module, a
    /// BPF program, user space).
    fn name(&self, address: u64) -> String {
        let at = self.0.partition_point(|(start, _)| *start <= address);
        match at.checked_sub(1).map(|i| &self.0[i]) {
            Some((start, name)) if address - start < 0x10_0000 => format!("{name}+{:#x}", address - start),
            _ if address >= 0xffff_ffff_a000_0000 => "outside the kernel's text: a module or a BPF program".to_owned(),
            _ if address < 0x8000_0000_0000_0000 => "user space".to_owned(),
            _ => format!("{address:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "ffffffff81000000 T _stext
ffffffff810a0000 t sched_clock_cpu
ffffffff810a0190 T sched_clock
ffffffff8200c000 D jiffies
ffffffff810b0000 W weak_function
";

    #[test]
    fn an_instruction_pointer_is_named_by_the_function_it_lies_in() {
        let symbols = KernelSymbols::parse(MAP);
        assert_eq!(symbols.name(0xffffffff810a0009), "sched_clock_cpu+0x9");
        assert_eq!(symbols.name(0xffffffff810a0190), "sched_clock+0x0");
        assert_eq!(symbols.name(0xffffffff810b0010), "weak_function+0x10");
        // Data symbols are not functions, and a function is not a megabyte long.
        assert_eq!(symbols.name(0xffffffff8200c004), "0xffffffff8200c004");
        assert_eq!(symbols.name(0xffffffffc0123456), "outside the kernel's text: a module or a BPF program");
        assert_eq!(symbols.name(0x7f1906a43cda), "user space");
    }
}
