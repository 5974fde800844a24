//! At the connection cap a new connection is refused at once with a 503, logged
//! once; the connected clients go on being served.

use std::time::Duration;

use e2e::Agent;
use e2e::tokio_tungstenite::tungstenite;
use e2e::ws::{self, Answer, ask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// What a raw connection gets back for an upgrade request, waiting at most 10 s
/// (a connection left in the backlog would get nothing).
async fn raw_answer(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(UPGRADE.as_bytes()).await.expect("send the upgrade request");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer within 10 s: {:?}", String::from_utf8_lossy(&answer));
    String::from_utf8_lossy(&answer).into_owned()
}

async fn assert_served(ws: &mut ws::Ws) {
    let Answer::Json(metrics) = ask(ws, "get_metrics").await else { panic!("metrics are JSON") };
    assert!(metrics.get("cpu_total").is_some(), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_connection_gets_a_503_at_once_and_the_connected_are_served() {
    let agent = Agent::start(&["--max-connections", "2"], &[]).unwrap();
    let mut first = ws::connect(&agent.ws_url()).await;
    let mut second = ws::connect(&agent.ws_url()).await;
    assert_served(&mut first).await;

    for _ in 0..5 {
        let answer = raw_answer(agent.port).await;
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
    }
    match e2e::tokio_tungstenite::connect_async(agent.ws_url()).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a client past the cap got {:?}", other.map(|(_, r)| r)),
    }
    assert_served(&mut first).await;
    assert_served(&mut second).await;
    let refusals: Vec<_> =
        agent.log().into_iter().filter(|l| l.contains("connections: new ones are refused")).collect();
    assert_eq!(refusals.len(), 1, "six refusals, one warning: {refusals:?}");

    // A slot freed is a slot taken again.
    drop(first);
    let mut third = None;
    for _ in 0..100 {
        match e2e::tokio_tungstenite::connect_async(agent.ws_url()).await {
            Ok((ws, _)) => {
                third = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_served(&mut third.expect("a client is served once a slot is free")).await;
    assert_served(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_cap_leaves_the_connected_served_and_no_socket_behind() {
    let agent = Agent::start(&["--max-connections", "4"], &[]).unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(ws::connect(&agent.ws_url()).await);
    }
    for client in &mut clients {
        // Also opens the files the metrics collector keeps open.
        assert_served(client).await;
    }
    // A processes answer reads through the CPU-time source after it attached what
    // it attaches for watchers (on the first client, off the async workers): the
    // count below is the settled one.
    assert!(matches!(ask(&mut clients[0], "get_processes").await, Answer::Processes(_)));
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap().count();
    let before = fds();
    // 300 connections at once, most of which never read their answer.
    let flood: Vec<_> =
        (0..300).map(|_| tokio::spawn(tokio::net::TcpStream::connect(("127.0.0.1", agent.port)))).collect();
    let mut held = Vec::new();
    for attempt in flood {
        if let Ok(Ok(stream)) = attempt.await {
            held.push(stream);
        }
    }
    for client in &mut clients {
        assert_served(client).await;
    }
    drop(held);
    // Refusals end within their 2 s bound; the agent's descriptors return.
    let mut after = fds();
    for _ in 0..100 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = fds();
    }
    assert!(after <= before, "{before} descriptors before the flood, {after} after");
}
