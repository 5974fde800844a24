//! Who may connect: the token when one is configured, and TLS with one
//! certificate pinned across restarts.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use e2e::socktop_connector::{connect_to_socktop_agent, connect_to_socktop_agent_with_tls};
use e2e::{Agent, client, host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let agent = Agent::start(&[], &[("SOCKTOP_TOKEN", "s3cret")]).unwrap();
    let wrong = connect_to_socktop_agent(format!("{}?token=nope", agent.ws_url())).await;
    assert!(wrong.is_err(), "wrong token accepted");
    let missing = connect_to_socktop_agent(agent.ws_url()).await;
    assert!(missing.is_err(), "missing token accepted");
    let mut right = connect_to_socktop_agent(format!("{}?token=s3cret", agent.ws_url())).await.unwrap();
    client::metrics(&mut right).await.unwrap();
    let rejections = agent.log().iter().filter(|l| l.contains("wrong or missing token")).count();
    assert_eq!(rejections, 1, "the rejection is logged once at info level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_uses_one_pinned_certificate_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let env = [("SOCKTOP_ENABLE_SSL", "1"), ("XDG_DATA_HOME", data.path().to_str().unwrap())];
    let cert = data.path().join("socktop_agent/tls/cert.pem");
    let fingerprint = |agent: &Agent| {
        let line = agent.wait_for_log("SHA-256", Duration::from_secs(5)).expect("fingerprint logged");
        line.rsplit("SHA-256 ").next().unwrap().trim_end_matches(')').to_owned()
    };

    let first = Agent::start(&[], &env).unwrap();
    let first_print = fingerprint(&first);
    let key_mode = std::fs::metadata(data.path().join("socktop_agent/tls/key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let url = format!("wss://localhost:{}/ws", first.port);
    let mut client = connect_to_socktop_agent_with_tls(&url, cert.to_str().unwrap(), true).await.unwrap();
    assert_eq!(client::metrics(&mut client).await.unwrap().mem_total, host::mem_total());
    drop(first);

    let second = Agent::start(&[], &env).unwrap();
    assert_eq!(fingerprint(&second), first_print);
    let url = format!("wss://127.0.0.1:{}/ws", second.port);
    let mut client = connect_to_socktop_agent_with_tls(&url, cert.to_str().unwrap(), false).await.unwrap();
    client::disks(&mut client).await.unwrap();
    let plain = connect_to_socktop_agent(format!("ws://127.0.0.1:{}/ws", second.port)).await;
    assert!(plain.is_err(), "plain ws must not work on a TLS port");
}
