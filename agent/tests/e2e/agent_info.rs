//! The agent's self-description: `get_agent_info`, `{"type":"agent_info"}` and
//! `GET /healthz` answer the same JSON, true to how the agent was started.

use std::io::{Read, Write};
use std::time::Duration;

use e2e::Agent;
use e2e::ws::{Answer, ask};

/// `GET path` over plain HTTP/1.1: the status line and the body.
fn http_get(agent: &Agent, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", agent.port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_info_in_both_forms_and_healthz_describe_the_running_agent() {
    let token = "s3cret-value";
    let agent = Agent::start(
        &["--ebpf", "off", "--gpu", "off", "--processes-ttl-ms", "1500", "--cpu-children", "own", "--token", token],
        &[],
    )
    .expect("agent starts");
    let url = format!("{}?token={token}", agent.ws_url());
    let (mut ws, _) = e2e::tokio_tungstenite::connect_async(url).await.expect("connects with the token");

    let Answer::Json(command) = ask(&mut ws, "get_agent_info").await else { panic!("agent_info is JSON") };
    let Answer::Json(json_form) = ask(&mut ws, r#"{"type":"agent_info"}"#).await else { panic!("JSON") };
    let (status, body) = http_get(&agent, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!body.contains(token), "the token leaked: {body}");
    let healthz: serde_json::Value = serde_json::from_str(&body).expect("/healthz is JSON");

    for info in [&command, &json_form, &healthz] {
        assert_eq!(info["agent"], "socktop_agent");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["cpu_source"], "proc", "{info}");
        assert_eq!(info["cpu_source_reason"], "disabled by --ebpf off or SOCKTOP_AGENT_EBPF=0");
        assert!(info["cpu_accounting"]["cpu_time"].as_str().is_some_and(|rule| rule.contains("/proc/PID/stat")));
        assert_eq!(info["cpu_accounting"]["children"], "own", "{info}");
        assert_eq!((info["token"].as_bool(), info["tls"].as_bool()), (Some(true), Some(false)), "{info}");
        assert_eq!(info["collectors"]["gpu"], false);
        assert_eq!(info["collectors"]["temperature"], true);
        assert_eq!(info["limits"]["processes_ttl_ms"], 1500);
        assert!(!info.to_string().contains(token), "the token leaked: {info}");
    }

    // The log says the same source; uptime counts from the start.
    let logged = agent.wait_for_log("cpu source: proc", Duration::from_secs(5)).expect("source logged");
    assert!(logged.contains("disabled by --ebpf off"), "{logged}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let Answer::Json(later) = ask(&mut ws, "get_agent_info").await else { panic!("JSON") };
    assert!(later["uptime_s"].as_u64() > command["uptime_s"].as_u64(), "{later} after {command}");
    // The real client's requests are answered as before on the same connection.
    let Answer::Json(metrics) = ask(&mut ws, "get_metrics").await else { panic!("metrics is JSON") };
    assert!(metrics.get("cpu_total").is_some());
}
