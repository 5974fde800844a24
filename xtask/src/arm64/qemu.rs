//! Booting the arm64 guest under `qemu-system-aarch64` with full emulation (TCG; the
//! build machines are amd64) and reading its verdict from the serial console.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The line the guest's `/init` prints last, followed by the number of failed checks.
const STATUS_PREFIX: &str = "vm-check: exit status ";

/// Boots `kernel` with `initramfs` on `cpus` emulated CPUs, echoes the console, and
/// returns the guest's exit status. Gives up after `timeout`.
pub fn boot(kernel: &Path, initramfs: &Path, cpus: u32, timeout: Duration) -> Result<i32> {
    let mut qemu = Command::new("qemu-system-aarch64")
        // `pauth-impdef`: QEMU's own pointer-authentication algorithm, much cheaper to
        // emulate than the architected one, which Debian's kernel uses throughout.
        .args(["-M", "virt", "-cpu", "max,pauth-impdef=on", "-m", "1024", "-smp", &cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1: a failed /init reboots at once, which -no-reboot turns into an exit.
        .args(["-append", "console=ttyAMA0 panic=-1 rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-aarch64 (scripts/install-arm64-toolchain.sh --vm)")?;
    let console = qemu.stdout.take().context("qemu's console")?;
    let (lines, received) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(console).lines().map_while(Result::ok) {
            println!("{line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut status = None;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                if let Some(parsed) = guest_status(&line) {
                    status = Some(parsed);
                }
            }
            // The console closed: QEMU exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                qemu.kill().context("stopping qemu")?;
                qemu.wait().context("waiting for qemu")?;
                bail!("the guest did not finish within {} s", timeout.as_secs());
            }
        }
    }
    let exit = qemu.wait().context("waiting for qemu")?;
    let _ = reader.join();
    match status {
        Some(status) => Ok(status),
        None => bail!("the guest stopped without a status line (qemu: {exit})"),
    }
}

/// The status on the guest's last line, as a process exit status (at most 255).
fn guest_status(line: &str) -> Option<i32> {
    let failures: u32 = line.trim_end().strip_prefix(STATUS_PREFIX)?.parse().ok()?;
    Some(failures.min(255) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_gives_the_number_of_failed_checks() {
        assert_eq!(guest_status("vm-check: exit status 0"), Some(0));
        assert_eq!(guest_status("vm-check: exit status 2\r"), Some(2));
        assert_eq!(guest_status("vm-check: exit status 300"), Some(255));
        assert_eq!(guest_status("vm-check: FAIL: cpu source is not ebpf"), None);
        assert_eq!(guest_status("[    1.2] vm-check: exit status 0"), None);
    }
}
