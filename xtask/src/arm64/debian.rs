//! Debian arm64 packages the guest is made of (the kernel, busybox), fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into a cache folder, never
//! installed: an arm64 busybox would replace the host's, and a kernel package would
//! run the host's boot hooks. Needs the arm64 architecture added to dpkg
//! (`scripts/install-arm64-toolchain.sh`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

/// The kernel series `--kernel` names, and the package that depends on the newest
/// image of each: bookworm's own kernel, and the 6.12 series bookworm also ships
/// (Debian 13's).
const KERNEL_SERIES: [(&str, &str); 2] = [("6.1", "linux-image-arm64"), ("6.12", "linux-image-6.12-arm64")];

/// The image package for `kernel`: a series of [`KERNEL_SERIES`] resolved to the
/// newest image the archive has, or a `linux-image-...` package named in full.
pub fn kernel_package(kernel: &str) -> Result<String> {
    if kernel.starts_with("linux-image-") {
        return Ok(kernel.to_owned());
    }
    let Some(&(_, meta)) = KERNEL_SERIES.iter().find(|(series, _)| *series == kernel) else {
        let known: Vec<_> = KERNEL_SERIES.iter().map(|(series, _)| *series).collect();
        bail!("unknown kernel {kernel}: name a series ({}) or a linux-image-... package", known.join(", "));
    };
    let output = Command::new("apt-cache")
        .args(["depends", "--no-recommends", "--no-suggests", &format!("{meta}:arm64")])
        .output()
        .context("running apt-cache depends")?;
    ensure!(output.status.success(), "apt-cache depends {meta}:arm64 failed: is the arm64 architecture added?");
    image_dependency(&String::from_utf8_lossy(&output.stdout))
        .map(str::to_owned)
        .with_context(|| format!("{meta}:arm64 depends on no kernel image"))
}

/// The `linux-image-*` package an `apt-cache depends` listing names, without its
/// architecture.
fn image_dependency(listing: &str) -> Option<&str> {
    listing.lines().find_map(|line| {
        let package = line.trim().strip_prefix("Depends: ")?;
        let package = package.strip_suffix(":arm64").unwrap_or(package);
        package.starts_with("linux-image-").then_some(package)
    })
}

/// The arm64 `package` unpacked under `cache`, downloaded and unpacked on first use.
pub fn unpacked(cache: &Path, package: &str) -> Result<PathBuf> {
    let root = cache.join(package);
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    let downloads = cache.join("downloads");
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    let status = Command::new("apt-get")
        .current_dir(&downloads)
        .args(["download", &format!("{package}:arm64")])
        .status()
        .context("running apt-get download")?;
    ensure!(status.success(), "apt-get download {package}:arm64 failed");
    let prefix = format!("{package}_");
    let deb = fs::read_dir(&downloads)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with("_arm64.deb"))
        })
        .with_context(|| format!("apt-get download left no {prefix}*_arm64.deb"))?;
    let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().context("running dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    Ok(root)
}

/// The kernel image (`boot/vmlinuz-*`) of an unpacked kernel package, and its release.
pub fn kernel_image(unpacked: &Path) -> Result<(PathBuf, String)> {
    let boot = unpacked.join("boot");
    for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let path = entry?.path();
        if let Some(release) = path.file_name().and_then(|name| name.to_str()?.strip_prefix("vmlinuz-")) {
            return Ok((path.clone(), release.to_owned()));
        }
    }
    bail!("no vmlinuz-* in {}", boot.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_the_dependency_that_is_a_kernel_image() {
        let listing = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-57-arm64:arm64\n";
        assert_eq!(image_dependency(listing), Some("linux-image-6.1.0-57-arm64"));
        let backported = "linux-image-6.12-arm64:arm64\n  Depends: initramfs-tools\n  \
                          Depends: linux-image-6.12.118+deb12-arm64:arm64\n";
        assert_eq!(image_dependency(backported), Some("linux-image-6.12.118+deb12-arm64"));
        assert_eq!(image_dependency("linux-image-arm64:arm64\n"), None);
    }
}
