//! Debian's packages for the VM matrix, fetched and cached without touching the
//! system's apt configuration: a private sources list, package lists and package
//! cache under `target/vm/apt/`, `apt-get download`, and `dpkg-deb -x` into
//! `target/vm/`.
//!
//! - The kernels: the newest image of each series the index holds (no build number
//!   is written down here, so a new security upload is picked up by the next run),
//!   unpacked into `target/vm/kernels/<package>/`, where vng finds `boot/vmlinuz-*`
//!   and the modules (9p, virtio) beside it. Debian's generic `-amd64` flavour is the
//!   one used: the `-cloud-amd64` one has no 9p, so the host's root filesystem cannot
//!   be shared.
//! - QEMU's x86-64 emulator from bookworm-backports ([`fetch_qemu`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

/// One kernel series of the matrix and where Debian serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// `5.10`, `6.1`, `6.12`: the first two numbers of the kernel version.
    pub version: &'static str,
    /// Which Debian release ships it, for the summary.
    pub release: &'static str,
}

/// Debian 11's kernel (bullseye, still served under bullseye-security), Debian 12's,
/// and the 6.12 series Debian 12 offers beside it (bookworm-backports, and since
/// 2025 bookworm-security: the newer build of either wins).
pub const SERIES: [Series; 3] = [
    Series { version: "5.10", release: "Debian 11 (bullseye-security)" },
    Series { version: "6.1", release: "Debian 12 (bookworm, bookworm-security)" },
    Series { version: "6.12", release: "Debian 12 (bookworm-backports, bookworm-security)" },
];

/// The suites the private sources list names: every series above is in one of them.
const SOURCES: &str = "\
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
";

/// The package lists are fetched again after this long (a few seconds of download).
const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A kernel unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The Debian package it came from, e.g. `linux-image-6.1.0-57-amd64`.
    pub package: String,
    /// `boot/vmlinuz-*` inside the unpacked package.
    pub image: PathBuf,
}

/// The private apt configuration: apt-get and apt-cache read only these paths, so
/// the system's sources, lists and lock are left alone.
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn new(vm_dir: &Path) -> anyhow::Result<Self> {
        let root = vm_dir.join("apt");
        for dir in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        std::fs::write(root.join("sources.list"), SOURCES)?;
        Ok(Self { root })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let options = [
            format!("Dir::Etc::SourceList={}", self.root.join("sources.list").display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", self.root.join("lists").display()),
            format!("Dir::Cache={}", self.root.join("cache").display()),
            // Only the Packages indices: no Contents, no DEP-11 icons.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".to_owned(),
            // The private lists need no lock shared with the system's apt.
            "Debug::NoLocking=1".to_owned(),
            // Root writes into target/, which the _apt user may not reach.
            "APT::Sandbox::User=root".to_owned(),
        ];
        for option in options {
            command.args(["-o", &option]);
        }
        command
    }

    /// Fetches the package lists unless a fetch younger than `INDEX_MAX_AGE` is there.
    fn update(&self) -> anyhow::Result<()> {
        let stamp = self.root.join("lists/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|at| SystemTime::now().duration_since(at).is_ok_and(|age| age < INDEX_MAX_AGE));
        if fresh {
            return Ok(());
        }
        eprintln!("vm-test: fetching Debian's package lists (bookworm, -backports, -security, bullseye-security)");
        let status = self.command("apt-get").args(["-q", "update"]).status().context("running apt-get update")?;
        if !status.success() {
            bail!("apt-get update (private sources under {}) failed: {status}", self.root.display());
        }
        std::fs::write(stamp, "")?;
        Ok(())
    }

    /// The version of `package` (`name/suite`) the lists hold.
    fn version(&self, package: &str) -> anyhow::Result<String> {
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .context("running apt-cache show")?;
        if !output.status.success() {
            bail!("apt-cache show {package} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let show = String::from_utf8(output.stdout)?;
        show.lines()
            .find_map(|line| line.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache show {package} printed no version"))
    }

    /// Downloads `package` and unpacks it into `unpacked` (replaced whole, through a
    /// sibling `.partial` folder so that an interrupted run leaves no half copy);
    /// the unpacked copy is what is kept, not the .deb.
    fn unpack(&self, package: &str, vm_dir: &Path, unpacked: &Path) -> anyhow::Result<()> {
        let deb = self.download(package, &vm_dir.join("debs"))?;
        let mut partial = unpacked.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        let status = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial).status()?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed: {status}", deb.display());
        }
        let _ = std::fs::remove_dir_all(unpacked);
        std::fs::rename(&partial, unpacked)?;
        std::fs::remove_file(&deb)?;
        Ok(())
    }

    /// The names of every kernel image package the lists hold.
    fn image_packages(&self) -> anyhow::Result<String> {
        let output = self
            .command("apt-cache")
            .args(["search", "--names-only", "^linux-image-"])
            .output()
            .context("running apt-cache search")?;
        if !output.status.success() {
            bail!("apt-cache search failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    fn download(&self, package: &str, into: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        eprintln!("vm-test: downloading {package}");
        let status = self
            .command("apt-get")
            .args(["-q", "download", package])
            .current_dir(into)
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("apt-get download {package} failed: {status}");
        }
        // `name/suite` downloads as name_version_arch.deb.
        let name = package.split_once('/').map_or(package, |(name, _suite)| name);
        let prefix = format!("{name}_");
        std::fs::read_dir(into)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
            .with_context(|| format!("apt-get download left no {prefix}*.deb in {}", into.display()))
    }
}

/// The newest generic amd64 image of `series` among `apt-cache search` output
/// (`name - description` lines), e.g. `linux-image-6.1.0-57-amd64`.
pub fn newest_image(search_output: &str, series: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| is_generic_image_of(name, series))
        .max_by_key(|name| version_numbers(name))
        .map(str::to_owned)
}

/// `linux-image-<series>.<rest>-amd64` whose every `-`-separated part of the
/// version starts with a digit: no `cloud`, `rt`, `unsigned` or `dbg` flavour.
fn is_generic_image_of(name: &str, series: &str) -> bool {
    let Some(version) = name.strip_prefix("linux-image-").and_then(|rest| rest.strip_suffix("-amd64")) else {
        return false;
    };
    version.strip_prefix(series).is_some_and(|rest| rest.starts_with('.'))
        && version.split('-').all(|part| part.starts_with(|c: char| c.is_ascii_digit()))
}

/// Every number in a package name, in order: `6.1.0-57` sorts after `6.1.0-50`,
/// `6.12.118+deb12` after `6.12.95+deb12`.
fn version_numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty()).filter_map(|n| n.parse().ok()).collect()
}

/// The newest kernel of each series, from the cache or downloaded into it. When the
/// package lists cannot be fetched (offline), the newest image already in the cache
/// is used instead.
pub fn fetch(vm_dir: &Path, series: &[Series]) -> anyhow::Result<Vec<Kernel>> {
    let kernels_dir = vm_dir.join("kernels");
    let apt = PrivateApt::new(vm_dir)?;
    let index = apt.update().and_then(|()| apt.image_packages());
    let mut kernels = Vec::new();
    for one in series {
        let package = match &index {
            Ok(index) => newest_image(index, one.version)
                .with_context(|| format!("no linux-image-{}.*-amd64 in Debian's package lists", one.version))?,
            Err(error) => {
                let cached = cached_packages(&kernels_dir);
                let newest = newest_image(&cached, one.version);
                eprintln!("vm-test: package lists unavailable ({error:#}); using the cache");
                newest.with_context(|| format!("no {} kernel cached in {}", one.version, kernels_dir.display()))?
            }
        };
        let unpacked = kernels_dir.join(&package);
        let image = match find_image(&unpacked) {
            Some(image) => image,
            None => {
                apt.unpack(&package, vm_dir, &unpacked)?;
                find_image(&unpacked).with_context(|| format!("{package} holds no boot/vmlinuz-*"))?
            }
        };
        kernels.push(Kernel { package, image });
    }
    Ok(kernels)
}

/// The QEMU the guests run under: bookworm-backports' build (10.0), unpacked, not
/// installed. Under TCG, bookworm's own QEMU 7.2 sometimes left a guest CPU taking
/// the same breakpoint without end while another, patching a tracepoint's call site
/// as our programs attached or detached, waited for it (`exc_int3` and
/// `__schedule`, or `__hrtimer_run_queues`, in the registers dumped at the stall):
/// on 5.10 and 6.1, and 6.12's `Oops: int3` (docs/EBPF.md, "QEMU"). Its libraries and firmware are those
/// scripts/install-vm-tools.sh installs with bookworm's QEMU. Returns the binary.
pub fn fetch_qemu(vm_dir: &Path) -> anyhow::Result<PathBuf> {
    const PACKAGE: &str = "qemu-system-x86/bookworm-backports";
    let qemu_dir = vm_dir.join("qemu");
    let binary = |unpacked: &Path| unpacked.join("usr/bin/qemu-system-x86_64");
    let apt = PrivateApt::new(vm_dir)?;
    let version = match apt.update().and_then(|()| apt.version(PACKAGE)) {
        Ok(version) => version,
        Err(error) => {
            eprintln!("vm-test: package lists unavailable ({error:#}); using the cached QEMU");
            let cached = std::fs::read_dir(&qemu_dir)
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .find(|unpacked| binary(unpacked).exists());
            return cached
                .map(|unpacked| binary(&unpacked))
                .with_context(|| format!("no QEMU cached in {}", qemu_dir.display()));
        }
    };
    // Epochs have a colon, which is no trouble in a path but reads oddly.
    let unpacked = qemu_dir.join(version.replace(':', "_"));
    if !binary(&unpacked).exists() {
        apt.unpack(PACKAGE, vm_dir, &unpacked)?;
    }
    let qemu = binary(&unpacked);
    anyhow::ensure!(qemu.exists(), "{PACKAGE} {version} holds no usr/bin/qemu-system-x86_64");
    Ok(qemu)
}

/// The cached packages as `apt-cache search` would list them.
fn cached_packages(kernels_dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(kernels_dir) else { return String::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| find_image(&kernels_dir.join(name)).is_some())
        .map(|name| format!("{name} - cached\n"))
        .collect()
}

fn find_image(unpacked: &Path) -> Option<PathBuf> {
    std::fs::read_dir(unpacked.join("boot"))
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `apt-cache search --names-only ^linux-image-` over the four suites.
    const SEARCH: &str = include_str!("fixtures/apt-cache-search.txt");

    #[test]
    fn the_newest_generic_image_of_each_series_is_picked() {
        assert_eq!(newest_image(SEARCH, "5.10").as_deref(), Some("linux-image-5.10.0-46-amd64"));
        assert_eq!(newest_image(SEARCH, "6.1").as_deref(), Some("linux-image-6.1.0-57-amd64"));
        assert_eq!(newest_image(SEARCH, "6.12").as_deref(), Some("linux-image-6.12.118+deb12-amd64"));
        assert_eq!(newest_image(SEARCH, "6.6"), None);
    }

    #[test]
    fn flavours_and_other_series_are_not_generic_images() {
        assert!(is_generic_image_of("linux-image-6.12.95+bpo-amd64", "6.12"));
        assert!(!is_generic_image_of("linux-image-6.1.0-57-cloud-amd64", "6.1"));
        assert!(!is_generic_image_of("linux-image-6.1.0-57-rt-amd64", "6.1"));
        assert!(!is_generic_image_of("linux-image-6.1.0-57-amd64-unsigned", "6.1"));
        assert!(!is_generic_image_of("linux-image-6.1.0-57-amd64-dbg", "6.1"));
        assert!(!is_generic_image_of("linux-image-6.12.118+deb12-amd64", "6.1"));
        assert!(!is_generic_image_of("linux-image-amd64", "6.1"));
    }
}
