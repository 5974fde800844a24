//! The guest's whole userland, as an initramfs: a static busybox (shell, mount, wget,
//! awk), the agent with the C libraries it was linked against, and the check script
//! as `/init`. The host's root filesystem is amd64, so nothing is shared with it.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use super::{cpio::Archive, toolchain::LIBRARY_DIR};

/// PID 1: mounts, runs the agent, checks it, prints the status line, powers off.
const INIT: &str = include_str!("guest-init.sh");

/// Where the guest's C libraries go: Debian's multiarch folder, which its dynamic
/// loader searches without a cache.
const GUEST_LIBRARY_DIR: &str = "lib/aarch64-linux-gnu";

/// Writes the gzipped initramfs to `out` from the busybox binary and the agent.
pub fn write_initramfs(out: &Path, busybox: &Path, agent: &Path) -> Result<()> {
    let mut archive = Archive::default();
    for dir in ["bin", "dev", "etc", "lib", GUEST_LIBRARY_DIR, "proc", "root", "run", "sys", "tmp", "usr", "usr/bin"] {
        archive.directory(dir);
    }
    archive.file("init", 0o755, INIT.as_bytes());
    archive.file("bin/busybox", 0o755, &read(busybox)?);
    // The script's interpreter; `busybox --install` links the other applets at boot.
    archive.symlink("bin/sh", "busybox");
    archive.file("usr/bin/socktop_agent", 0o755, &stripped(agent)?);

    let interpreter = interpreter(&readelf(&["-l"], agent)?).context("the agent names no program interpreter")?;
    for library in libraries_needed(agent)? {
        let data = read(&Path::new(LIBRARY_DIR).join(&library))?;
        archive.file(&format!("{GUEST_LIBRARY_DIR}/{library}"), 0o755, &data);
    }
    // The loader is found at the path written in the binary (/lib/ld-linux-aarch64.so.1).
    let interpreter_name = interpreter.rsplit('/').next().unwrap_or(&interpreter);
    archive.symlink(interpreter.trim_start_matches('/'), &format!("aarch64-linux-gnu/{interpreter_name}"));
    archive.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    archive.file("etc/group", 0o644, b"root:x:0:\n");

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzipped = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gzipped.write_all(&archive.finish()).with_context(|| format!("writing {}", out.display()))?;
    gzipped.finish().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The agent without its debug sections (a dev build's are most of its size; the
/// guest keeps the whole initramfs in memory). The code is unchanged.
fn stripped(agent: &Path) -> Result<Vec<u8>> {
    let copy = tempfile_beside(agent);
    let status = Command::new("aarch64-linux-gnu-strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(agent)
        .status()
        .context("running aarch64-linux-gnu-strip")?;
    ensure!(status.success(), "aarch64-linux-gnu-strip {} failed", agent.display());
    let data = read(&copy)?;
    fs::remove_file(&copy).with_context(|| format!("removing {}", copy.display()))?;
    Ok(data)
}

fn tempfile_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".vm-stripped");
    path.with_file_name(name)
}

/// The shared libraries `binary` loads, its dependencies' included, by file name.
fn libraries_needed(binary: &Path) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut pending = needed(&readelf(&["-d"], binary)?);
    while let Some(library) = pending.pop() {
        if found.insert(library.clone()) {
            pending.extend(needed(&readelf(&["-d"], &Path::new(LIBRARY_DIR).join(&library))?));
        }
    }
    Ok(found)
}

fn readelf(options: &[&str], file: &Path) -> Result<String> {
    let output = Command::new("aarch64-linux-gnu-readelf")
        .args(options)
        .arg(file)
        .output()
        .context("running aarch64-linux-gnu-readelf")?;
    ensure!(output.status.success(), "aarch64-linux-gnu-readelf {} failed", file.display());
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `NEEDED` entries of `readelf -d`.
fn needed(dynamic_section: &str) -> Vec<String> {
    dynamic_section
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| Some(line.split_once("[")?.1.split_once("]")?.0.to_owned()))
        .collect()
}

/// The program interpreter `readelf -l` names.
fn interpreter(program_headers: &str) -> Option<String> {
    let rest = program_headers.split_once("[Requesting program interpreter: ")?.1;
    Some(rest.split_once(']')?.0.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_libraries_are_read_from_the_dynamic_section() {
        let dynamic = "\nDynamic section at offset 0x1f8c8 contains 27 entries:\n  \
            Tag        Type                         Name/Value\n \
            0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]\n \
            0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
            0x0000000000000001 (NEEDED)             Shared library: [ld-linux-aarch64.so.1]\n \
            0x000000000000000e (SONAME)             Library soname: [libfoo.so.1]\n";
        assert_eq!(needed(dynamic), ["libgcc_s.so.1", "libc.so.6", "ld-linux-aarch64.so.1"]);
    }

    #[test]
    fn the_interpreter_is_read_from_the_program_headers() {
        let headers = "  INTERP         0x0000000000000238 0x0000000000000238 0x0000000000000238\n                 \
            0x000000000000001b 0x000000000000001b  R      0x1\n      \
            [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]\n";
        assert_eq!(interpreter(headers).as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(interpreter("no headers"), None);
    }
}
