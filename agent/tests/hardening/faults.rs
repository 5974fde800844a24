//! Faults: code that panics while answering, clients that stop reading, and
//! (through the binary) files under the proc and sys roots that are cut short,
//! empty, garbage, huge or unreadable.

use std::sync::Arc;
use std::time::Duration;

use e2e::tokio_tungstenite::tungstenite::Message;
use e2e::ws::{self, Answer, ask};
use futures_util::SinkExt;
use socktop_agent::config::Config;
use socktop_agent::cputime::{CpuSourceKind, CpuTimeError, CpuTimeSource, ScannedCpu};
use socktop_agent::host::HostFacts;
use socktop_agent::protocol::agent_info::AgentInfo;
use socktop_agent::service::Service;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A CPU-time source with a bug: it panics on every reading.
struct Panicking;

impl CpuTimeSource for Panicking {
    fn kind(&self) -> CpuSourceKind {
        CpuSourceKind::Proc
    }
    fn cumulative_ns(&mut self, _: &[ScannedCpu], _: &mut Vec<u64>) -> Result<(), CpuTimeError> {
        panic!("injected: a CPU-time source bug");
    }
    fn retain_live(&mut self, _: &[u32]) {}
}

/// The library's server on a loopback port, with `source` for CPU time and
/// GPU and temperature collection off (this host's sensors are not the point).
/// Stops when the returned sender is dropped.
async fn serve(config: Config, source: Box<dyn CpuTimeSource>) -> (String, oneshot::Sender<()>) {
    let mut config = config;
    config.collection.gpu = false;
    config.collection.temperature = false;
    let host = HostFacts::read(&config.collection.proc_root).expect("host facts");
    let info = AgentInfo::new(&config, source.kind(), None, false);
    let service = Arc::new(Service::new(&config, host, source, info));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("bound address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(socktop_agent::server::run(listener, None, config, service, async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// [`serve`] with the /proc CPU-time source.
async fn serve_with_proc_source(config: Config) -> (String, oneshot::Sender<()>) {
    let proc_root = config.collection.proc_root.clone();
    let clock = HostFacts::read(&proc_root).expect("host facts").clock;
    let source = socktop_agent::cputime::select_source(true, &proc_root, clock);
    serve(config, source).await
}

/// Asks for processes for 3 s without reading an answer: enough answers to
/// fill the socket buffers, so the agent's sends to this client block.
async fn ask_without_reading(deaf: &mut ws::Ws) {
    let flood = async {
        loop {
            if deaf.send(Message::text("get_processes")).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), flood).await;
}

fn error_of(answer: &Answer) -> Option<&str> {
    match answer {
        Answer::Json(json) => json["error"].as_str(),
        Answer::Processes(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_answering_ends_that_request_with_an_error_and_nothing_else() {
    let (url, _stop) = serve(Config::default(), Box::new(Panicking)).await;
    let mut ws = ws::connect(&url).await;
    let mut bystander = ws::connect(&url).await;
    let me = std::process::id();
    for request in ["get_processes".to_owned(), format!("get_process_metrics:{me}"), "get_processes".to_owned()] {
        let answer = ask(&mut ws, &request).await;
        assert!(error_of(&answer).is_some(), "{request} got {answer:?}");
        let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!("metrics are JSON") };
        assert!(metrics["cpu_total"].is_number(), "the same connection goes on: {metrics}");
    }
    let Answer::Json(disks) = ask(&mut bystander, "get_disks").await else { panic!("disks are JSON") };
    assert!(disks.is_array(), "another client goes on: {disks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_frees_its_slot() {
    let mut config = Config::default();
    config.limits.max_connections = 1;
    config.limits.send_timeout = Duration::from_secs(1);
    config.ttls.processes = Duration::ZERO;
    let (url, _stop) = serve_with_proc_source(config).await;
    let mut deaf = ws::connect(&url).await;
    ask_without_reading(&mut deaf).await;
    // Its one slot is freed once a send has waited the send timeout, so a new
    // client is served, while the deaf one is still connected.
    let mut served = None;
    for _ in 0..300 {
        if let Ok((ws, _)) = e2e::tokio_tungstenite::connect_async(&url).await {
            served = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next = served.expect("the deaf client's slot was never freed");
    let Answer::Json(metrics) = ask(&mut next, "get_metrics").await else { panic!("metrics are JSON") };
    assert!(metrics["cpu_total"].is_number());
    drop(deaf);
}

/// Writes `content` at `root/rel`, making the folders.
fn put(root: &std::path::Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// A proc and a sys root where something is wrong with most files: cut short,
/// empty, garbage, 10 MB long, unreadable (a folder where a file should be),
/// endless (/dev/zero), and processes listed whose files are gone.
fn broken_roots() -> (tempfile::TempDir, tempfile::TempDir) {
    let (proc, sys) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let p = proc.path();
    let cpu = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0 0 0\n";
    put(p, "stat", format!("{cpu}intr 1 2 3\nbtime 1700000000\n").as_bytes());
    std::fs::create_dir_all(p.join("meminfo")).expect("meminfo folder");
    put(p, "net/dev", &vec![b'x'; 10 << 20]);
    put(p, "self/mountinfo", &[0xff, 0xfe, b'\n', 0, 1, 2, b' ', b'-', b'\n']);
    put(p, "1/stat", b"1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 1 0 10 1000000 100 0\n");
    put(p, "1/status", b"Name:\tinit\nUid:\t0\t0\t0\t0\nThreads:\t1\n");
    put(p, "1/cmdline", b"");
    put(p, "2/stat", b"2 (cut sho");
    put(p, "3/stat", &[0x13, 0x37, 0xff, 0x00, b')', b')']);
    std::fs::create_dir_all(p.join("4/stat")).expect("stat folder");
    // Listed, but gone by the time its files are read.
    std::fs::create_dir_all(p.join("5")).expect("pid folder");
    let s = sys.path();
    put(s, "class/hwmon/hwmon0/name", b"coretemp\n");
    put(s, "class/hwmon/hwmon0/temp1_label", b"Package id 0\n");
    put(s, "class/hwmon/hwmon0/temp1_input", b"garbage\n");
    put(s, "class/drm/card0/device/vendor", b"0x1002\n");
    put(s, "class/drm/card0/device/device", b"0x73bf\n");
    put(s, "class/drm/card0/device/mem_info_vram_used", b"");
    std::os::unix::fs::symlink("/dev/zero", s.join("class/drm/card0/device/gpu_busy_percent")).expect("symlink");
    (proc, sys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_proc_and_sys_files_leave_every_answer_with_what_could_be_read() {
    let (proc, sys) = broken_roots();
    let args = [
        "--ebpf",
        "off",
        "--proc-root",
        proc.path().to_str().expect("UTF-8"),
        "--sys-root",
        sys.path().to_str().expect("UTF-8"),
    ];
    let ttls = [
        ("SOCKTOP_AGENT_METRICS_TTL_MS", "0"),
        ("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0"),
        ("SOCKTOP_AGENT_DISKS_TTL_MS", "0"),
    ];
    let agent = e2e::Agent::start(&args, &ttls).expect("the agent starts on broken roots");
    let mut ws = ws::connect(&agent.ws_url()).await;
    for _ in 0..3 {
        let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!("metrics are JSON") };
        assert_eq!(metrics["cpu_per_core"].as_array().map(Vec::len), Some(2), "{metrics}");
        assert_eq!(metrics["mem_total"].as_u64(), Some(0), "unreadable meminfo: {metrics}");
        assert_eq!(metrics["networks"].as_array().map(Vec::len), Some(0), "{metrics}");
        let Answer::Json(disks) = ask(&mut ws, "get_disks").await else { panic!("disks are JSON") };
        assert_eq!(disks.as_array().map(Vec::len), Some(0), "{disks}");
        let Answer::Processes(processes) = ask(&mut ws, "get_processes").await else {
            panic!("processes are protobuf")
        };
        let pids: Vec<u32> = processes.rows.iter().map(|row| row.pid).collect();
        assert_eq!(pids, [1], "only the readable process");
        for pid in [2u32, 3, 4, 5] {
            let answer = ask(&mut ws, &format!("get_process_metrics:{pid}")).await;
            let Answer::Json(error) = answer else { panic!("an error answer for pid {pid}") };
            assert_eq!(error["pid"].as_u64(), Some(u64::from(pid)), "{error}");
        }
    }
    let log = agent.log();
    assert!(!log.iter().any(|line| line.contains("panicked")), "{log:#?}");
    // The 10 MB net/dev is read (it is below the 16 MiB bound) and holds no
    // interface; the unreadable meminfo is said once, not on each of 3 requests.
    let said = log.iter().filter(|line| line.contains("/meminfo:")).count();
    assert_eq!(said, 1, "meminfo is logged once, not per request: {log:#?}");
    assert!(std::fs::metadata(format!("/proc/{}", agent.pid())).is_ok(), "the agent is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_up_the_answers_of_others() {
    let mut config = Config::default();
    config.ttls.processes = Duration::ZERO;
    let (url, _stop) = serve_with_proc_source(config).await;
    let mut deaf = ws::connect(&url).await;
    let mut polite = ws::connect(&url).await;
    ask_without_reading(&mut deaf).await;
    // The deaf client is now blocked in a send for up to 30 s, with requests of
    // its own queued for the processes cache; the polite one is answered anyway
    // (`ask` fails after 10 s).
    for _ in 0..2 {
        let answer = ask(&mut polite, "get_processes").await;
        assert!(matches!(answer, Answer::Processes(_)), "{answer:?}");
    }
    drop(deaf);
}
