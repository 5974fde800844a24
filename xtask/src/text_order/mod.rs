//! `cargo xtask text-order`: writes `agent/text-order.txt`, the functions an agent
//! runs from start through a session of the real client's requests and a
//! Prometheus scrape, back to idle. The release build hands the file to the linker
//! (`agent/build.rs`), which lays those functions out together at the start of the
//! code, so the pages an agent touches hold little else.
//!
//! Why: the kernel maps a program's code page by page as it runs, and on each
//! fault also every cached page around it (64 KiB, `fault_around_bytes`). Laid out
//! as the compiler left it, the functions an idle agent has run are scattered over
//! its code, and those windows keep 2.7 MiB of it resident (docs/BENCHMARKS.md,
//! "Code laid out by use").
//!
//! How: the release binary runs under a tracer that puts a one-shot breakpoint on
//! every function ([`breakpoints`]), so each function entered is recorded once, in
//! the order first entered: with eBPF, then reading /proc as an ordinary user's
//! agent does. The file lists the first run's functions in that order, then those
//! only the second entered.
//!
//! The names are the linker's (mangled, with each crate's hash): a new compiler or
//! a dependency's new version renames them, and the names no longer found are
//! ignored, so an old file costs locality, never a build. `--check` says how much
//! of the file a binary still matches.

mod breakpoints;
mod symbols;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::bench::client::{Client, Kind, METRICS_EVERY};
use crate::bench::crowd::Crowd;
use crate::bench::scrape::SCRAPE_HEADERS;
use symbols::Function;

/// Extra idle processes while the agent is profiled.
const CROWD: usize = 1_000;

/// Where the file lives, from the workspace root; `agent/build.rs` reads it there.
const ORDER_FILE: &str = "agent/text-order.txt";

#[derive(clap::Args)]
pub struct Args {
    /// The release binary to profile (default: build it, laid out as the compiler
    /// leaves it, in target/text-order).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Only say how many of the file's names are functions of this binary.
    #[arg(long, value_name = "BINARY")]
    check: Option<PathBuf>,
}

pub fn run(args: &Args) -> Result<()> {
    let root = super::workspace_root();
    if let Some(binary) = &args.check {
        return check(&root.join(ORDER_FILE), binary);
    }
    ensure!(testkit::skip::running_as_root(), "text-order needs root: the agent's eBPF run");
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => build_release(&root, &root.join("target/text-order"))?,
    };
    // /proc/PID/maps names the binary by its full path.
    let binary = std::fs::canonicalize(&binary).with_context(|| format!("finding {}", binary.display()))?;
    let image = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    symbols::ensure_position_independent(&image)?;
    let functions = symbols::functions(&image)?;
    let by_address: HashMap<u64, &Function> = functions.iter().map(|function| (function.address, function)).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut listed: Vec<&Function> = Vec::new();
    let mut seen = HashSet::new();
    // Real hosts run hundreds of processes: the processes answer is then gzipped,
    // and the scan's tables grow, as they do in the bench.
    let _crowd = Crowd::spawn(CROWD)?;
    for ebpf in ["on", "off"] {
        let entered = runtime.block_on(profile_one(&binary, ebpf, &functions))?;
        println!("--ebpf {ebpf}: {} functions entered", entered.len());
        for address in entered {
            if seen.insert(address) {
                listed.extend(by_address.get(&address));
            }
        }
    }
    let mut text = String::from(HEADER);
    for function in &listed {
        text.push_str(&function.name);
        text.push('\n');
    }
    std::fs::write(root.join(ORDER_FILE), text)?;
    println!(
        "wrote {ORDER_FILE}: {} of the binary's {} functions, {} KiB of its {} KiB of code",
        listed.len(),
        functions.len(),
        listed.iter().map(|function| function.size).sum::<u64>() >> 10,
        functions.iter().map(|function| function.size).sum::<u64>() >> 10,
    );
    Ok(())
}

const HEADER: &str = "\
# The functions an agent runs from start through a session and back to idle, for
# the linker to lay out together (--symbol-ordering-file; agent/build.rs). Written
# by `cargo xtask text-order`; see xtask/src/text_order/mod.rs.
";

/// Starts the agent traced, runs a session like the real client's and a scrape,
/// waits for it to go idle, and returns the functions it entered, in order.
async fn profile_one(binary: &Path, ebpf: &str, functions: &[Function]) -> Result<Vec<u64>> {
    let mut command = Command::new(binary);
    command
        .args(["--bind", "127.0.0.1", "--port", "0", "--ebpf", ebpf])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let traced = breakpoints::trace(command, binary, functions.iter().map(|function| function.address).collect())?;
    let outcome = async {
        let port = wait_listening(traced.pid).await?;
        session(port).await?;
        // The last client gone, the agent goes idle (repairs detached, memory handed
        // back) once the scrape's lease of 5 s has run out.
        tokio::time::sleep(Duration::from_secs(7)).await;
        anyhow::Ok(())
    }
    .await;
    let entered = traced.stop()?;
    outcome.map(|()| entered)
}

/// The port the agent listens on, once it does.
async fn wait_listening(pid: u32) -> Result<u16> {
    for _ in 0..600 {
        if let Some(port) = testkit::listen::only_port(pid)? {
            return Ok(port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the agent did not listen within 30 s")
}

/// Three seconds of the real client's polling, then a scrape of `/metrics` as
/// Prometheus makes it, a plain HTTP/1.0 one, and `/healthz`.
async fn session(port: u16) -> Result<()> {
    let mut client = Client::connect(port).await?;
    for tick in 0..6 {
        for kind in Kind::THE_REAL_CLIENTS.into_iter().filter(|kind| kind.asked_at_tick(tick)) {
            client.ask(kind).await?;
        }
        tokio::time::sleep(METRICS_EVERY).await;
    }
    client.close().await;
    let address = format!("127.0.0.1:{port}");
    scrape_like_prometheus(&address).context("scraping /metrics over HTTP/1.1")?;
    for path in ["/metrics", "/healthz"] {
        let response = testkit::http::get(&address, path, &[]).with_context(|| format!("GET {path}"))?;
        ensure!(response.status == 200, "GET {path}: {}", response.status);
    }
    Ok(())
}

/// One scrape as Prometheus makes it, with the bench's scrape headers (gzip
/// accepted), over HTTP/1.1 (testkit's client speaks 1.0); the whole answer read.
fn scrape_like_prometheus(address: &str) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in SCRAPE_HEADERS {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..answer.len().min(80)]));
    Ok(())
}

/// Builds the release agent into `target_dir` with its code as the compiler lays
/// it out (no ordering file), and returns its path.
fn build_release(root: &Path, target_dir: &Path) -> Result<PathBuf> {
    let status = Command::new(super::cargo())
        .args(["build", "--release", "-p", "socktop_agent", "--target-dir"])
        .arg(target_dir)
        .env("SOCKTOP_TEXT_ORDER", "none")
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release failed: {status}");
    Ok(target_dir.join("release/socktop_agent"))
}

/// Prints how many of the file's names the binary defines, and where they lie.
fn check(order_file: &Path, binary: &Path) -> Result<()> {
    let image = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let functions = symbols::functions(&image)?;
    let text = std::fs::read_to_string(order_file).with_context(|| format!("reading {}", order_file.display()))?;
    let listed: Vec<&str> =
        text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    let by_name: BTreeMap<&str, &Function> = functions.iter().map(|f| (f.name.as_str(), f)).collect();
    let found: Vec<&Function> = listed.iter().filter_map(|name| by_name.get(name).copied()).collect();
    let bytes: u64 = found.iter().map(|function| function.size).sum();
    let span = found.iter().map(|f| f.address + f.size).max().unwrap_or(0)
        - found.iter().map(|f| f.address).min().unwrap_or(0);
    println!(
        "{}: {} of {} listed functions found ({} KiB), laid out over {} KiB",
        binary.display(),
        found.len(),
        listed.len(),
        bytes >> 10,
        span >> 10
    );
    Ok(())
}
