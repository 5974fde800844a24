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
mod closure;
mod connections;
mod cost_example;
mod crowd;
mod ebpf;
mod interrupts;
mod machine;
mod phases;
mod report;
mod scrape;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use agent::{Agent, Binaries, Caches, Sensors, Which};
use client::Kind;
use crowd::Crowd;
use machine::Machine;
use report::{Row, Section, Summary, Table};

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
    raise_fd_limit()?;
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
                table = prometheus(&plan, &binaries) => table,
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
        idle(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Rss) {
        for caches in [Caches::On, Caches::Off] {
            rss(plan, binaries, caches, &mut table).await?;
        }
    }
    if plan.runs(Phase::Connections) {
        idle_connections(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Cpu) {
        cpu(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Sensors) {
        for sensors in [Sensors::Off, Sensors::GpuOff, Sensors::Defaults] {
            cpu_with_sensors(plan, binaries, sensors, &mut table).await?;
        }
    }
    if plan.runs(Phase::Latency) {
        for caches in [Caches::On, Caches::Off] {
            latency(plan, binaries, caches, &mut table).await?;
        }
    }
    if plan.runs(Phase::Interrupts) {
        interrupts(plan, binaries, &mut table).await?;
    }
    if plan.runs(Phase::Closure) {
        closure(plan, binaries, online_cpus, &mut table).await?;
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

async fn idle(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, Caches::On).await?;
    table
        .notes
        .push(format!("Our per-process CPU source: {}.", agents.ours.cpu_source().as_deref().unwrap_or("unknown")));
    let (mut cpu, mut rss) = (Pair::default(), Pair::default());
    for repeat in 0..plan.repeats {
        progress(format_args!("idle, {} s window {}/{}", plan.idle_window.as_secs(), repeat + 1, plan.repeats));
        let percent = phases::idle_percent(&[&agents.ours, &agents.original], plan.idle_window).await?;
        for (agent, percent) in [&agents.ours, &agents.original].into_iter().zip(percent) {
            cpu.push(agent.which, percent);
            rss.push(agent.which, agent.rss_bytes()? as f64 / MIB);
        }
    }
    let window = plan.idle_window.as_secs();
    table.push(cpu.row(Section::Idle, format!("idle CPU, no client, over {window} s"), "% of a CPU"));
    table.push(rss.row(Section::Memory, "RSS idle", "MiB"));
    Ok(())
}

/// RSS after many requests, each repeat on freshly started agents.
async fn rss(plan: &Plan, binaries: &Binaries, caches: Caches, table: &mut Table) -> anyhow::Result<()> {
    let mut rss = Pair::default();
    for repeat in 0..plan.repeats {
        progress(format_args!(
            "RSS after {} requests, {}, {}/{}",
            plan.rss_requests,
            caches.name(),
            repeat + 1,
            plan.repeats
        ));
        let agents = Agents::start(binaries, caches).await?;
        for agent in agents.in_turn(repeat) {
            rss.push(agent.which, phases::rss_after_requests(agent, plan.rss_requests).await? as f64 / MIB);
        }
    }
    let label =
        format!("RSS after {} requests (all kinds, 10 clients), {}", thousands(plan.rss_requests), caches.name());
    table.push(rss.row(Section::Memory, label, "MiB"));
    Ok(())
}

/// Idle WebSocket connections held open to one agent at a time (each repeat on
/// freshly started agents).
async fn idle_connections(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let (mut connected, mut answered) = (Pair::default(), Pair::default());
    for repeat in 0..plan.repeats {
        progress(format_args!(
            "RSS per idle connection, {} connections, {}/{}",
            IDLE_CONNECTIONS,
            repeat + 1,
            plan.repeats
        ));
        let agents = Agents::start(binaries, Caches::On).await?;
        for agent in agents.in_turn(repeat) {
            let per = connections::resident_per_connection(agent, IDLE_CONNECTIONS).await?;
            connected.push(agent.which, per.connected / 1024.0);
            answered.push(agent.which, per.after_one_answer / 1024.0);
        }
    }
    let count = thousands(IDLE_CONNECTIONS);
    table.push(connected.row(Section::Memory, format!("RSS per idle WebSocket connection, {count} connected"), "KiB"));
    table.push(answered.row(
        Section::Memory,
        format!("RSS per idle WebSocket connection, {count} connected, each after one `get_metrics`"),
        "KiB",
    ));
    Ok(())
}

/// Connections held open at once by the connections phase.
const IDLE_CONNECTIONS: usize = 1_000;

/// CPU time per uncached request of each kind, with the host's processes and then
/// with each crowd of extra idle processes; answer sizes come with it.
async fn cpu(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, Caches::Off).await?;
    for extra in plan.crowds {
        let crowd = if extra > 0 {
            progress(format_args!("starting {} idle processes", thousands(extra)));
            Some(Crowd::spawn(extra)?)
        } else {
            None
        };
        tokio::time::sleep(SETTLE).await;
        let processes = machine::process_count();
        let mut cost: [Pair; 3] = Default::default();
        let mut size: [Pair; 3] = Default::default();
        for repeat in 0..plan.repeats {
            progress(format_args!("CPU per request, {processes} processes, {}/{}", repeat + 1, plan.repeats));
            for agent in agents.in_turn(repeat) {
                for (i, kind) in Kind::ALL.into_iter().enumerate() {
                    let measured = phases::cpu_per_request(agent, kind, plan.cpu_budget, plan.cpu_min_requests).await?;
                    cost[i].push(agent.which, measured.cpu_us);
                    size[i].push(agent.which, measured.wire_bytes as f64);
                }
            }
        }
        let host = match crowd.as_ref().map(Crowd::len) {
            Some(n) => format!("{} processes (host + {} idle)", thousands(processes), thousands(n)),
            None => format!("{} processes (the host's own)", thousands(processes)),
        };
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            table.push(cost[i].row(Section::Cpu, format!("CPU per `{}`, uncached, {host}", kind.request()), "µs"));
            // Only the processes answer grows with the process count.
            if extra == 0 || kind == Kind::Processes {
                table.push(size[i].row(Section::Size, format!("answer to `{}`, {host}", kind.request()), "bytes"));
            }
        }
    }
    Ok(())
}

/// CPU time per uncached metrics and disks request (the answers the GPU and
/// temperature collectors add to) with one setting of those collectors, with the
/// host's own processes.
async fn cpu_with_sensors(plan: &Plan, binaries: &Binaries, sensors: Sensors, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start_with(binaries, Caches::Off, sensors).await?;
    let kinds = [Kind::Metrics, Kind::Disks];
    let mut cost: [Pair; 2] = Default::default();
    for repeat in 0..plan.repeats {
        progress(format_args!("CPU per request, {}, {}/{}", sensors.name(), repeat + 1, plan.repeats));
        for agent in agents.in_turn(repeat) {
            for (i, kind) in kinds.into_iter().enumerate() {
                let measured = phases::cpu_per_request(agent, kind, plan.cpu_budget, plan.cpu_min_requests).await?;
                cost[i].push(agent.which, measured.cpu_us);
            }
        }
    }
    let processes = thousands(machine::process_count());
    for (i, kind) in kinds.into_iter().enumerate() {
        let label = format!("CPU per `{}`, uncached, {processes} processes, {}", kind.request(), sensors.name());
        table.push(cost[i].row(Section::Cpu, label, "µs"));
    }
    Ok(())
}

async fn latency(plan: &Plan, binaries: &Binaries, caches: Caches, table: &mut Table) -> anyhow::Result<()> {
    let agents = Agents::start(binaries, caches).await?;
    for clients in plan.clients {
        let (mut p50, mut p99) = ([Pair::default(), Pair::default()], [Pair::default(), Pair::default()]);
        for repeat in 0..plan.repeats {
            progress(format_args!("latency, {clients} clients, {}, {}/{}", caches.name(), repeat + 1, plan.repeats));
            for agent in agents.in_turn(repeat) {
                let run = phases::latency(agent, clients, plan.latency_run).await?;
                for (i, [median, tail]) in [run.metrics, run.processes].into_iter().enumerate() {
                    p50[i].push(agent.which, median);
                    p99[i].push(agent.which, tail);
                }
                if run.failed_clients > 0 {
                    table.notes.push(format!(
                        "{} agent, {clients} clients, {}: {} client(s) failed (connect or a 10 s answer timeout).",
                        agent.which.name(),
                        caches.name(),
                        run.failed_clients
                    ));
                }
            }
        }
        for (i, kind) in [Kind::Metrics, Kind::Processes].into_iter().enumerate() {
            table.push(Row {
                section: Section::Latency,
                label: format!("`{}` round trip p50 / p99, {clients} client(s), {}", kind.request(), caches.name()),
                unit: "ms",
                ours: vec![Summary::of(&p50[i].ours), Summary::of(&p99[i].ours)],
                original: vec![Summary::of(&p50[i].original), Summary::of(&p99[i].original)],
            });
        }
    }
    Ok(())
}

/// Extra idle processes while the interrupts are counted.
const INTERRUPTS_CROWD: usize = 1_000;

/// The whole machine's interrupts per second while one client polls each agent at
/// the real client's intervals, each agent alone (caches on), with a crowd of idle
/// processes; and with no agent at all, the machine's own rate. The three take
/// turns, in a different order each repeat.
async fn interrupts(plan: &Plan, binaries: &Binaries, table: &mut Table) -> anyhow::Result<()> {
    progress(format_args!("starting {} idle processes", thousands(INTERRUPTS_CROWD)));
    let _crowd = Crowd::spawn(INTERRUPTS_CROWD)?;
    let (mut all, mut local_timer) = (Pair::default(), Pair::default());
    let (mut baseline_all, mut baseline_local_timer) = (Vec::new(), Vec::new());
    let window = plan.interrupt_window;
    for repeat in 0..plan.repeats {
        let mut turns = [None, Some(Which::Ours), Some(Which::Original)];
        let shift = repeat % turns.len();
        turns.rotate_left(shift);
        for which in turns {
            let name = which.map_or("no agent", Which::name);
            progress(format_args!("interrupts, {name}, {} s window {}/{}", window.as_secs(), repeat + 1, plan.repeats));
            let agent = match which {
                Some(which) => Some(Agent::start(binaries, which, Caches::On, Sensors::Off).await?),
                None => None,
            };
            tokio::time::sleep(SETTLE).await;
            let rate = interrupts::while_watched(agent.as_ref(), window).await?;
            match which {
                Some(which) => {
                    all.push(which, rate.all_per_s);
                    if let Some(local) = rate.local_timer_per_s {
                        local_timer.push(which, local);
                    }
                }
                None => {
                    baseline_all.push(rate.all_per_s);
                    baseline_local_timer.extend(rate.local_timer_per_s);
                }
            }
        }
    }
    let watched = format!(
        "one client polling at the real client's intervals, host + {} idle processes, {} s",
        thousands(INTERRUPTS_CROWD),
        window.as_secs()
    );
    table.push(all.row(Section::Interrupts, format!("interrupts of the whole machine, {watched}"), "/s"));
    if !local_timer.ours.is_empty() {
        table.push(local_timer.row(Section::Interrupts, format!("… of which local timer (LOC), {watched}"), "/s"));
    }
    let show = |samples: &[f64]| Summary::of(samples).map_or_else(|| "n/a".to_owned(), |s| s.show());
    table.notes.push(format!(
        "Interrupts: each agent ran alone (caches on) while counted; metrics every 500 ms, processes every 2 s, \
         disks every 5 s. With no agent and no client, over the same windows: {}/s, local timer {}/s.",
        show(&baseline_all),
        show(&baseline_local_timer)
    ));
    Ok(())
}

/// Under a fork loop, how much of the machine's busy time the rows of
/// `get_processes` (caches off, one request a second) account for: ours with its
/// eBPF source, ours with its /proc source, the original; each agent alone, in a
/// different order each repeat.
async fn closure(plan: &Plan, binaries: &Binaries, cpus: usize, table: &mut Table) -> anyhow::Result<()> {
    let with_proc = Binaries { ours_ebpf: false, ..binaries.clone() };
    let runs: [(&str, &Binaries, Which); 3] = [
        ("ours (eBPF run)", binaries, Which::Ours),
        ("ours (/proc run)", &with_proc, Which::Ours),
        ("original", binaries, Which::Original),
    ];
    let mut closures: [Vec<closure::Closure>; 3] = Default::default();
    let mut modes: [Option<String>; 3] = Default::default();
    let windows = plan.closure_windows;
    let window = Duration::from_secs(1);
    for repeat in 0..plan.repeats {
        let mut turns = [0, 1, 2];
        let shift = repeat % turns.len();
        turns.rotate_left(shift);
        for turn in turns {
            let (name, binaries, which) = runs[turn];
            progress(format_args!("closure under a fork loop, {name}, {}/{}", repeat + 1, plan.repeats));
            let agent = Agent::start(binaries, which, Caches::Off, Sensors::Off).await?;
            tokio::time::sleep(SETTLE).await;
            closures[turn].push(closure::under_fork_loop(&agent, cpus, windows, window).await?);
            if which == Which::Ours {
                let source = agent.cpu_source().unwrap_or_else(|| "unknown".into());
                let children = agent.cpu_children().unwrap_or_else(|| "unknown".into());
                modes[turn] = Some(format!("source {source}, `--cpu-children {children}`"));
            }
            // The loop's last processes and the agent's exit, out of the next run.
            drop(agent);
            tokio::time::sleep(SETTLE).await;
        }
    }
    let percent = |closures: &[closure::Closure]| closures.iter().map(closure::Closure::percent).collect::<Vec<_>>();
    let original = percent(&closures[2]);
    let what = format!(
        "rows of `get_processes` over {windows} × 1 s windows under a fork loop, share of the machine's busy time"
    );
    for turn in [0, 1] {
        let mode = modes[turn].as_deref().unwrap_or("unknown");
        let label = format!("{what}; ours: {mode}");
        table.push(Row::single(Section::Closure, label, "%", &percent(&closures[turn]), &original));
    }
    let seconds = |closures: &[closure::Closure], pick: fn(&closure::Closure) -> f64| {
        Summary::of(&closures.iter().map(pick).collect::<Vec<_>>()).map_or_else(|| "n/a".to_owned(), |s| s.show())
    };
    let spans = runs
        .iter()
        .zip(&closures)
        .map(|((name, ..), runs)| {
            format!("{name} {} of {} CPU-s", seconds(runs, |c| c.rows_cpu_s), seconds(runs, |c| c.busy_cpu_s))
        })
        .collect::<Vec<_>>()
        .join("; ");
    table.notes.push(format!(
        "Closure: a shell runs `/bin/true` back to back; busy time is user + nice + system + irq + softirq of \
         /proc/stat over the same windows; a row's CPU-seconds are its `cpu_usage` (% of the {cpus} CPUs) times \
         the interval between answers. Rows against busy, median: {spans}."
    ));
    Ok(())
}

/// How long after its last scrape and client the agent is idle again.
const IDLE_AGAIN: Duration = Duration::from_secs(8);

/// Extra idle processes for the scrape comparison (the measured anchors).
const SCRAPE_CROWD: usize = 1_000;

/// CPU per Prometheus scrape of our agent against node_exporter plus
/// process-exporter on the same host and crowd, the bytes of one scrape, and our
/// idle RSS before and after the scrapes. The "original" column of this table
/// holds the two exporters together.
async fn prometheus(plan: &Plan, binaries: &Binaries) -> anyhow::Result<Table> {
    let mut table = Table { other: "node_exporter + process-exporter".to_owned(), ..Table::default() };
    progress(format_args!("starting {} idle processes", thousands(SCRAPE_CROWD)));
    let _crowd = Crowd::spawn(SCRAPE_CROWD)?;
    let ours = Agent::start(binaries, Which::Ours, Caches::Off, Sensors::Off).await?;
    let node = scrape::Exporter::node(&binaries.logs).await?;
    let process = scrape::Exporter::process(&binaries.logs).await?;
    tokio::time::sleep(SETTLE * 2).await;
    let rss_before = ours.rss_bytes()? as f64 / MIB;
    let parts_before = agent::resident_parts_of(ours.pid())?;
    let processes = machine::process_count();
    let (mut ours_cpu, mut node_cpu, mut process_cpu, mut theirs_cpu, mut ours_processes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ours_bytes, mut theirs_bytes) = (Vec::new(), Vec::new());
    for repeat in 0..plan.repeats {
        progress(format_args!("CPU per scrape, {processes} processes, {}/{}", repeat + 1, plan.repeats));
        let budget = plan.cpu_budget;
        let mine = scrape::cpu_per_scrape(ours.pid(), ours.port, budget, plan.cpu_min_requests).await?;
        let n = scrape::cpu_per_scrape(node.pid(), node.port, budget, plan.cpu_min_requests).await?;
        // process-exporter takes about half a second a scrape here: a few suffice.
        let p = scrape::cpu_per_scrape(process.pid(), process.port, budget, 3).await?;
        let list = phases::cpu_per_request(&ours, Kind::Processes, budget, plan.cpu_min_requests).await?;
        ours_cpu.push(mine.cpu_us / 1000.0);
        node_cpu.push(n.cpu_us / 1000.0);
        process_cpu.push(p.cpu_us / 1000.0);
        theirs_cpu.push((n.cpu_us + p.cpu_us) / 1000.0);
        ours_processes.push(list.cpu_us / 1000.0);
        ours_bytes.push(mine.wire_bytes as f64);
        theirs_bytes.push((n.wire_bytes + p.wire_bytes) as f64);
    }
    // A scrape keeps the agent watched for at least 5 s after it (its scrape
    // lease); the figure is of the agent idle again, as the one before.
    tokio::time::sleep(IDLE_AGAIN).await;
    let rss_after = ours.rss_bytes()? as f64 / MIB;
    let parts_after = agent::resident_parts_of(ours.pid())?;
    let host = format!("{} processes (host + {} idle)", thousands(processes), thousands(SCRAPE_CROWD));
    let rows = [
        (format!("CPU per scrape, uncached, {host}"), "ms", &ours_cpu, &theirs_cpu),
        (format!("… node_exporter alone (default collectors), {host}"), "ms", &ours_cpu, &node_cpu),
        (format!("… process-exporter alone (a group per comm), {host}"), "ms", &ours_cpu, &process_cpu),
        (format!("… ours: CPU per uncached `get_processes`, {host}"), "ms", &ours_cpu, &ours_processes),
        (format!("one scrape on the wire (gzip accepted), {host}"), "bytes", &ours_bytes, &theirs_bytes),
    ];
    for (label, unit, mine, theirs) in rows {
        table.push(Row::single(Section::Cpu, label, unit, mine, theirs));
    }
    table.push(Row::single(
        Section::Memory,
        "RSS idle, before / after the scrapes",
        "MiB",
        &[rss_before],
        &[rss_after],
    ));
    let theirs_rss = (node.rss_bytes()? + process.rss_bytes()?) as f64 / MIB;
    let growth = |before: u64, after: u64| (after as f64 - before as f64) / MIB;
    table.notes.push(format!(
        "Ours: idle RSS {rss_before:.2} MiB before the scrapes, {rss_after:.2} MiB after, idle again (growth {:.2} MiB: \
         {:.2} anonymous, {:.2} file-backed; that row's second column is ours after, not an exporter). The two \
         exporters' RSS after: {theirs_rss:.1} MiB together. Our CPU source: {}.",
        rss_after - rss_before,
        growth(parts_before.anonymous, parts_after.anonymous),
        growth(parts_before.file, parts_after.file),
        ours.cpu_source().as_deref().unwrap_or("unknown")
    ));
    Ok(table)
}

/// Many clients need many sockets: raise the soft file-descriptor limit to the
/// hard one (the agents inherit it, so the original gets the same room as ours).
fn raise_fd_limit() -> anyhow::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(())
}

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
