//! Faults: code that panics while answering, clients that stop reading, and
//! (through the binary) files under the proc and sys roots that are cut short,
//! empty, garbage, huge or unreadable.

use std::sync::Arc;
use std::time::Duration;

use e2e::ws::{self, Answer, ask};
use futures_util::SinkExt;
use socktop_agent::config::Config;
use socktop_agent::cputime::{CpuSourceKind, CpuTimeError, CpuTimeSource, ScannedCpu};
use socktop_agent::service::{HostFacts, Service};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

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
    let service = Arc::new(Service::new(&config, host, source));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("bound address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(socktop_agent::server::run(listener, None, config, service, async {
        let _ = stopped.await;
    }));
    (url, stop)
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
    let source = socktop_agent::cputime::select_source(true).0;
    let (url, _stop) = serve(config, source).await;
    let mut deaf = ws::connect(&url).await;
    // Requests for 3 s, enough answers to fill the socket buffers, none read.
    let flood = async {
        loop {
            if deaf.send(Message::text("get_processes")).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), flood).await;
    // Its one slot is freed once a send has waited the send timeout, so a new
    // client is served, while the deaf one is still connected.
    let mut served = None;
    for _ in 0..300 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
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
