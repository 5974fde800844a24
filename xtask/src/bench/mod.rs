//! `cargo xtask bench`: our agent side by side with the original socktop_agent
//! 1.60.1, on this machine, in one run. It builds ours in release, installs the
//! original when missing, starts both on loopback ports (caches off, then on),
//! measures idle CPU, resident memory, CPU time per request with more and more
//! processes on the host, round-trip latency under 1 to 500 polling clients, answer
//! sizes, the whole machine's interrupts while one client polls each agent alone
//! ([`interrupts`]) and how much of a fork loop's busy time the processes list
//! accounts for ([`closure`]), and prints one Markdown table; then the eBPF
//! programs' cost beside the previous object's ([`ebpf`]) and the Prometheus scrape
//! cost against node_exporter and process-exporter, each in a table of its own. Every
//! phase is bounded in time; agents and helper processes are stopped on the way
//! out, Ctrl-C included.

// The soak reuses the agent handling and the client.
pub(crate) mod agent;
pub(crate) mod client;
// The phases, one file each, in the order they run.
mod closure;
mod connections;
mod cpu;
mod ebpf;
mod idle;
mod interrupts;
mod latency;
mod rss;
pub(crate) mod scrape;
mod sensors;
mod watched;
// What the phases share.
mod cost_example;
pub(crate) mod crowd;
mod machine;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use agent::{Agent, Binaries, Caches, Sensors, Which};
use machine::Machine;
use report::{Row, Section, Table};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Shorten every phase and measure each figure once (for developing the bench;
    /// the figures are rough).
    #[arg(long)]
    quick: bool,
    /// The original agent's binary [default: installed under .bench/orig with
    /// `cargo install` when missing].
    #[arg(long, env = "SOCKTOP_BENCH_ORIGINAL")]
    original: Option<PathBuf>,
    /// Our agent's binary, instead of building it in release.
    #[arg(long)]
    ours: Option<PathBuf>,
    /// Times each figure is measured [default: 3; 1 with --quick].
    #[arg(long)]
    repeats: Option<usize>,
    /// Let our agent count per-process CPU time with eBPF when it can (`--ebpf` of
    /// the agent); off forces its /proc source, the original's method.
    #[arg(long, default_value = "on", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    ebpf: bool,
    /// The commit whose eBPF object the programs' cost is measured beside (its
    /// `ebpf_cost` example is built from a `git archive` of it under .bench/): the
    /// object before the exit records and the tick repair.
    #[arg(long, default_value = "67671f7")]
    previous_ebpf: String,
    /// Run only these phases (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Idle CPU and idle RSS.
    Idle,
    /// RSS after many requests.
    Rss,
    /// CPU time per request and answer sizes.
    Cpu,
    /// CPU time per metrics and disks request with the GPU and temperature
    /// collectors off, with only the GPU off, and with both on (the defaults).
    Sensors,
    /// Round-trip latency under concurrent clients.
    Latency,
    /// The whole machine's interrupts per second while one client polls each agent
    /// alone at the real client's intervals, and with no agent.
    Interrupts,
    /// Under a fork loop, the processes list's rows against the machine's busy
    /// time: ours with eBPF and with /proc, and the original.
    Closure,
    /// The eBPF programs' cost per context switch and per process exit, beside the
    /// previous object's.
    Ebpf,
    /// Prometheus scrape cost against node_exporter + process-exporter.
    Scrape,
    /// Each agent's CPU while one client polls it at the real client's intervals,
    /// with 1,000 extra idle processes, both agents at once.
    Watched,
    /// Resident memory per idle WebSocket connection, 1,000 connections.
    Connections,
}

/// How long and how often each phase runs.
struct Plan {
    repeats: usize,
    idle_window: Duration,
    cpu_budget: Duration,
    cpu_min_requests: usize,
    latency_run: Duration,
    rss_requests: usize,
    crowds: [usize; 3],
    clients: [usize; 3],
    interrupt_window: Duration,
    watched_window: Duration,
    closure_windows: u32,
    phases: Vec<Phase>,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let phases = if args.only.is_empty() {
            vec![
                Phase::Idle,
                Phase::Rss,
                Phase::Connections,
                Phase::Cpu,
                Phase::Sensors,
                Phase::Latency,
                Phase::Interrupts,
                Phase::Watched,
                Phase::Closure,
                Phase::Ebpf,
                Phase::Scrape,
            ]
        } else {
            args.only.clone()
        };
        let quick = args.quick;
        Plan {
            repeats: args.repeats.unwrap_or(if quick { 1 } else { 3 }).max(1),
            idle_window: Duration::from_secs(if quick { 3 } else { 30 }),
            cpu_budget: Duration::from_millis(if quick { 500 } else { 3000 }),
            cpu_min_requests: if quick { 3 } else { 10 },
            latency_run: Duration::from_secs(if quick { 2 } else { 10 }),
            rss_requests: if quick { 1_000 } else { 10_000 },
            crowds: [0, 1_000, 5_000],
            clients: [1, 50, 500],
            interrupt_window: Duration::from_secs(if quick { 3 } else { 30 }),
            watched_window: Duration::from_secs(if quick { 5 } else { 60 }),
            closure_windows: if quick { 3 } else { 10 },
            phases,
        }
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// Lets an agent finish starting up (first samples, thread pools) before it is measured.
const SETTLE: Duration = Duration::from_secs(1);

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let root = super::workspace_root();
    let plan = Plan::new(&args);
    // Many clients need many sockets; the agents inherit the limit, so the
    // original gets the same room as ours.
    testkit::limits::raise_open_files_limit().context("raising the open-files limit")?;
    let ours = match &args.ours {
        Some(path) => path.clone(),
        None => agent::build_ours(&root)?,
    };
    let original = agent::original(&root, args.original.clone())?;
    let logs = root.join(".bench/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let machine = Machine::read();
    let pinning = agent::Pinning::client_on_first_cpu(machine.cores)?;
    let binaries = Binaries { ours, original, ours_ebpf: args.ebpf, logs, pinning };
    let online_cpus = machine.online_cpus;

    let load_before = machine::load();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The measurement runs on this (the main) thread, which the helper processes'
    // parent-death signal is tied to (see agent::die_with_parent).
    let table = runtime.block_on(async {
        tokio::select! {
            table = measure(&plan, &binaries, online_cpus) => table,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; the agents and helper processes were stopped"),
        }
    })?;
    let mut programs = Table { other: format!("previous object ({})", args.previous_ebpf), ..Table::default() };
    if plan.runs(Phase::Ebpf) {
        ebpf::table(&root, &args.previous_ebpf, plan.repeats, &mut programs);
    }

    println!("## socktop_agent (ours) vs socktop_agent {} (original)\n", agent::ORIGINAL_VERSION);
    println!("- machine: {machine}");
    println!("- load average (1, 5, 15 min): {load_before} before, {} after", machine::load());
    println!(
        "- {} run(s) per figure: median (min–max); CPU % is of one CPU; both agents with GPU and temperature \
         collection off unless a row says otherwise; caches on = metrics 250 ms, processes and disks 1000 ms",
        plan.repeats
    );
    if binaries.pinning.is_some() {
        println!("- the bench's clients run on CPU 0, the agents on the other CPUs");
    }
    if !table.rows.is_empty() {
        println!("\n{}", table.render());
    }
    if plan.runs(Phase::Ebpf) {
        println!("\n### eBPF programs: this object vs the one of {}\n\n{}", args.previous_ebpf, programs.render());
    }
    if plan.runs(Phase::Scrape) {
        let scrapes = runtime.block_on(async {
            tokio::select! {
                table = scrape::run(&plan, &binaries) => table,
                _ = tokio::signal::ctrl_c() => bail!("interrupted; the agents and exporters were stopped"),
            }
        })?;
        println!("\n### Prometheus: our /metrics vs node_exporter + process-exporter\n\n{}", scrapes.render());
    }
    Ok(())
}

async fn measure(plan: &Plan, binaries: &Binaries, online_cpus: usize) -> anyhow::Result<Table> {
    let mut table = Table::default();
    if plan.runs(Phase::Idle) {
        idle::run(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Rss) {
        for caches in [Caches::On, Caches::Off] {
            rss::run(plan, binaries, caches, &mut table).await?;
        }
    }
    if plan.runs(Phase::Connections) {
        connections::run(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Cpu) {
        cpu::run(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Sensors) {
        for sensors in [Sensors::Off, Sensors::GpuOff, Sensors::Defaults] {
            sensors::run(plan, binaries, sensors, &mut table).await?;
        }
    }
    if plan.runs(Phase::Latency) {
        for caches in [Caches::On, Caches::Off] {
            latency::run(plan, binaries, caches, &mut table).await?;
        }
    }
    if plan.runs(Phase::Interrupts) {
        interrupts::run(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Watched) {
        watched::run(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Closure) {
        closure::run(plan, binaries, online_cpus, &mut table).await?;
    }
    Ok(table)
}

/// Samples of one figure for both agents.
#[derive(Default)]
struct Pair {
    ours: Vec<f64>,
    original: Vec<f64>,
}

impl Pair {
    fn push(&mut self, which: Which, value: f64) {
        match which {
            Which::Ours => self.ours.push(value),
            Which::Original => self.original.push(value),
        }
    }

    fn row(&self, section: Section, label: impl Into<String>, unit: &'static str) -> Row {
        Row::single(section, label, unit, &self.ours, &self.original)
    }
}

/// Both agents, started with the same cache setting; the order alternates between
/// repeats so neither is always measured first.
struct Agents {
    ours: Agent,
    original: Agent,
}

impl Agents {
    async fn start(binaries: &Binaries, caches: Caches) -> anyhow::Result<Agents> {
        Self::start_with(binaries, caches, Sensors::Off).await
    }

    async fn start_with(binaries: &Binaries, caches: Caches, sensors: Sensors) -> anyhow::Result<Agents> {
        let ours = Agent::start(binaries, Which::Ours, caches, sensors).await?;
        let original = Agent::start(binaries, Which::Original, caches, sensors).await?;
        tokio::time::sleep(SETTLE).await;
        Ok(Agents { ours, original })
    }

    fn in_turn(&self, repeat: usize) -> [&Agent; 2] {
        if repeat.is_multiple_of(2) { [&self.ours, &self.original] } else { [&self.original, &self.ours] }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn progress(what: std::fmt::Arguments<'_>) {
    eprintln!("bench: {what}");
}

/// 10000 -> "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(5), "5");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
    }
}
