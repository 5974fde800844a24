//! One connection's trouble stays its own: bad requests get error answers, an
//! oversized frame closes only its sender, pipelined requests keep their order,
//! the server never speaks first, half-open connections block nobody.

use std::time::Duration;

use e2e::socktop_connector::connect_to_socktop_agent;
use e2e::tokio_tungstenite::tungstenite::Message;
use e2e::ws::{Answer, ask, decode, next_frame};
use e2e::{Agent, client};
use futures_util::{SinkExt, StreamExt};

use super::raw_client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_answers_and_the_connection_stays_usable() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;

    for bad in ["{\"type\":", "hello", r#"{"type":"pie"}"#, "get_process_metrics:abc"] {
        let Answer::Json(error) = ask(&mut ws, bad).await else { panic!("error answers are JSON") };
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{error}");
        assert_eq!(error["request"].as_str(), Some(bad));
    }
    ws.send(Message::binary(vec![0u8, 159, 146, 150])).await.unwrap();
    let Answer::Json(error) = decode(next_frame(&mut ws).await) else { panic!() };
    assert!(error["error"].as_str().unwrap().contains("binary"), "{error}");

    let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!() };
    assert!(metrics.get("cpu_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_its_own_connection() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut bystander = raw_client(&agent).await;
    let mut attacker = raw_client(&agent).await;
    let _ = attacker.send(Message::text("x".repeat(16 * 1024 * 1024))).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match attacker.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "oversized frame did not close the connection");
    let Answer::Json(metrics) = ask(&mut bystander, "get_metrics").await else { panic!() };
    assert!(metrics.get("cpu_total").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let agent =
        Agent::start(&[], &[("SOCKTOP_AGENT_METRICS_TTL_MS", "0"), ("SOCKTOP_AGENT_PROCESSES_TTL_MS", "0")]).unwrap();
    let mut ws = raw_client(&agent).await;
    let kinds = ["get_processes", "get_metrics", "get_disks", "nonsense"];
    let requests: Vec<&str> = kinds.iter().cycle().take(40).copied().collect();
    for request in &requests {
        ws.send(Message::text(*request)).await.unwrap();
    }
    for request in requests {
        let answer = decode(next_frame(&mut ws).await);
        let ok = match (request, &answer) {
            ("get_processes", Answer::Processes(p)) => !p.rows.is_empty(),
            ("get_metrics", Answer::Json(j)) => j.get("cpu_total").is_some(),
            ("get_disks", Answer::Json(j)) => j.is_array(),
            ("nonsense", Answer::Json(j)) => j.get("error").is_some(),
            _ => false,
        };
        assert!(ok, "{request} got {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_speaks_first_and_answers_pings() {
    let agent = Agent::start(&[], &[]).unwrap();
    let mut ws = raw_client(&agent).await;
    let unsolicited = tokio::time::timeout(Duration::from_millis(1500), ws.next()).await;
    assert!(unsolicited.is_err(), "server sent {unsolicited:?}");
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_block_other_clients() {
    let agent = Agent::start(&[], &[]).unwrap();
    let address = format!("127.0.0.1:{}", agent.port);
    let _silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(&address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut client = connect_to_socktop_agent(agent.ws_url()).await.unwrap();
    client::metrics(&mut client).await.expect("served while others hang");
}
