//! The `socktop_agent` binary: parses flags, binds, picks the CPU-time source and
//! runs the server until SIGINT or SIGTERM.

mod capabilities;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use socktop_agent::cli::Cli;
use socktop_agent::cputime::{self, CpuTimeSource};
use socktop_agent::host::HostFacts;
use socktop_agent::protocol::agent_info::AgentInfo;
use socktop_agent::service::Service;

fn main() -> anyhow::Result<()> {
    socktop_agent::host::heap::configure();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let host = HostFacts::read(&cli.proc_root).context("reading the host's clock facts")?;
    // Serving connections is light (framing, TLS, a few copies); collections
    // that may wait and renderings run on the blocking pool, whose threads exit
    // when unused. One async thread is enough, and an idle agent then keeps no
    // worker's stack pages. Measured: `cargo xtask bench --only scrape` (1,000
    // extra processes), idle anonymous memory after the scrapes grew 0.35 MiB
    // with two workers, 0.30 MiB with one thread, and the workers' scheduler no
    // longer maps in libm (its `pow`); `cargo xtask soak --clients 1000 --seconds
    // 120`: 6.3% of a core instead of 7.9%, p99 0.85 ms instead of 0.70.
    let mut runtime = match cli.worker_threads {
        Some(n) if n > 0 => {
            let mut multi = tokio::runtime::Builder::new_multi_thread();
            multi.worker_threads(n);
            multi
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    runtime.enable_all();
    // A blocking-pool thread's glibc cache of freed blocks (tcache) goes back to
    // the shared heap only when the thread exits. Exiting within 3 s of its last
    // task (tokio's default: 10 s), the threads that rendered the answers are gone
    // before the agent releases its memory on going idle (the scrape lease is at
    // least 5 s), so `malloc_trim` there can hand those blocks' pages back. Longer
    // than the real client's slowest poll (processes, every 2 s), so a watched
    // agent keeps the thread that scans instead of starting one for every scan (a
    // start is a dozen system calls and a fresh stack to fault in).
    runtime.thread_keep_alive(std::time::Duration::from_secs(3));
    // Loading the eBPF program blocks for a few milliseconds: do it before the
    // runtime starts. It logs the source chosen, and why when it is /proc.
    let cpu_source = cputime::select_source(!cli.ebpf, &cli.proc_root, host.clock);
    socktop_agent::host::heap::return_free_pages();
    let tls = tls_acceptor(&cli)?;
    let listener = std::net::TcpListener::bind((cli.bind, cli.port()))
        .with_context(|| format!("binding {}:{}", cli.bind, cli.port()))?;
    listener.set_nonblocking(true).context("making the listening socket non-blocking")?;
    // Everything that needed privileges beyond serving is done; no other thread runs yet.
    drop_unneeded_capabilities(cpu_source.kind());
    let fallback_reason = cpu_source.fallback().map(ToString::to_string);
    let info = AgentInfo::new(&cli.config(), cpu_source.kind(), fallback_reason, tls.is_some())
        .with_degraded(cpu_source.degraded());
    runtime.build().context("starting the async runtime")?.block_on(serve(cli, host, cpu_source, info, tls, listener))
}

/// Makes or loads the TLS certificate when TLS is on.
fn tls_acceptor(cli: &Cli) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(dir) = cli.tls_dir()? else { return Ok(None) };
    let (acceptor, cert) =
        socktop_agent::tls::load_or_create(&dir).with_context(|| format!("setting up TLS in {}", dir.display()))?;
    let verb = if cert.created { "created" } else { "using" };
    tracing::info!("TLS on: {verb} certificate {} (SHA-256 {})", cert.cert_path.display(), cert.sha256);
    cert.log_expiry();
    tracing::info!("connect with: socktop --tls-ca {} wss://HOST:{}/ws", cert.cert_path.display(), cli.port());
    Ok(Some(acceptor))
}

/// Gives up the capabilities serving does not use, and logs what it kept and why.
fn drop_unneeded_capabilities(cpu_source: cputime::CpuSourceKind) {
    let needs = capabilities::run_time_needs(cpu_source, capabilities::kernel_version());
    match capabilities::keep_only(&needs) {
        Ok(Some(outcome)) => tracing::info!("{}", outcome.describe()),
        Ok(None) => tracing::debug!("no capabilities held"),
        Err(error) => tracing::warn!("dropping unneeded capabilities failed: {error}"),
    }
}

async fn serve(
    cli: Cli,
    host: HostFacts,
    cpu_source: Box<dyn CpuTimeSource>,
    info: AgentInfo,
    tls: Option<tokio_rustls::TlsAcceptor>,
    listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let mut config = cli.config();
    let sockets = config.limits.max_connections + socktop_agent::server::REFUSING_AT_ONCE;
    let room = socktop_agent::host::limits::raise_open_files_limit().saturating_sub(sockets as u64 + SPARE_FILES);
    config.limits.kept_stat_files = config.limits.kept_stat_files.min(usize::try_from(room).unwrap_or(usize::MAX));
    let listener = TcpListener::from_std(listener).context("registering the listening socket")?;
    let service = Arc::new(Service::new(&config, host, cpu_source, info));
    tracing::info!(
        "listening on {}://{}/ws; TLS {}; token {}; cpu source: {}",
        if tls.is_some() { "wss" } else { "ws" },
        listener.local_addr()?,
        if tls.is_some() { "on" } else { "off" },
        if config.token.is_some() { "on" } else { "off" },
        service.cpu_source_kind().as_str(),
    );
    let children = config.collection.cpu_children;
    tracing::info!("cpu children: {} ({})", children.as_str(), children.meaning());
    socktop_agent::server::run(listener, tls, config, service, shutdown_signal()).await;
    Ok(())
}

/// Files kept free for everything but client sockets and kept stat files (TLS
/// certificates, /proc reads, the journal pipe, NVML).
const SPARE_FILES: u64 = 64;

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
