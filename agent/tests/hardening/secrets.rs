//! The token never reaches the log; TLS files are private, checked at start and
//! their expiry said.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use e2e::socktop_connector::{connect_to_socktop_agent, connect_to_socktop_agent_with_tls};
use e2e::{Agent, client};

use super::run_to_exit;

const TOKEN: &str = "Tk-5ecret-q8Zx";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_in_no_log_line_even_at_trace_level() {
    let data = tempfile::tempdir().unwrap();
    let envs = [
        ("RUST_LOG", "trace"),
        ("SOCKTOP_TOKEN", TOKEN),
        ("SOCKTOP_ENABLE_SSL", "1"),
        ("XDG_DATA_HOME", data.path().to_str().unwrap()),
    ];
    let agent = Agent::start(&[], &envs).unwrap();
    let cert = data.path().join("socktop_agent/tls/cert.pem");
    let cert = cert.to_str().unwrap();
    let base = format!("wss://localhost:{}/ws", agent.port);

    // Wrong tokens close to the right one: a prefix, a longer one, another case.
    let wrong = ["Tk-5ecret-q8Z", "Tk-5ecret-q8Zx-and-more", "tk-5ecret-q8zx"];
    for token in wrong {
        let refused = connect_to_socktop_agent_with_tls(format!("{base}?token={token}"), cert, true).await;
        assert!(refused.is_err(), "{token} was accepted");
    }
    assert!(connect_to_socktop_agent_with_tls(base.clone(), cert, true).await.is_err(), "no token accepted");
    // The right one, plain and percent-encoded.
    for query in [format!("token={TOKEN}"), "token=Tk%2D5ecret%2Dq8Zx".to_owned()] {
        let mut right = connect_to_socktop_agent_with_tls(format!("{base}?{query}"), cert, true).await.unwrap();
        client::metrics(&mut right).await.unwrap();
    }

    let log = agent.log();
    assert!(log.iter().any(|l| l.contains("TRACE")), "the agent did not log at trace level");
    assert_eq!(log.iter().filter(|l| l.contains("wrong or missing token")).count(), 1 + 3, "one warning, then debug");
    for secret in [TOKEN, "Tk%2D5ecret", "5ecret"] {
        let leaks: Vec<_> = log.iter().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret:?} is in the log: {leaks:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_are_private_and_the_certificate_expiry_is_logged() {
    let data = tempfile::tempdir().unwrap();
    let envs = [("SOCKTOP_ENABLE_SSL", "1"), ("XDG_DATA_HOME", data.path().to_str().unwrap())];
    let agent = Agent::start(&[], &envs).unwrap();
    let line = agent.wait_for_log("TLS certificate valid until", Duration::from_secs(5)).expect("expiry logged");
    // A new certificate lasts 397 days.
    assert!(line.contains("(396 days left)") || line.contains("(397 days left)"), "{line}");

    let dir = data.path().join("socktop_agent/tls");
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("key.pem"), 0o600);
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "key.pem"], "nothing but the two files, no temporary left");
    let mut client = connect_to_socktop_agent(format!("ws://127.0.0.1:{}/ws", agent.port)).await;
    assert!(client.is_err(), "plain ws on a TLS port");
    let url = format!("wss://localhost:{}/ws", agent.port);
    let cert = dir.join("cert.pem");
    client = connect_to_socktop_agent_with_tls(url, cert.to_str().unwrap(), true).await;
    client::disks(&mut client.unwrap()).await.unwrap();
}

/// Starts the agent on a TLS folder holding `cert` and `key` and returns its
/// error output, after checking that it refused to start without panicking.
fn start_error_with(cert: &[u8], key: &[u8]) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), cert).expect("write cert.pem");
    std::fs::write(dir.path().join("key.pem"), key).expect("write key.pem");
    let tls_dir = dir.path().to_str().expect("UTF-8 path");
    let output = run_to_exit(&["--enableSSL", "--tls-dir", tls_dir], &[], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("delete") && stderr.contains("start the agent again"), "no way out: {stderr}");
    (stderr, dir)
}

#[test]
fn a_corrupt_certificate_stops_the_start_with_its_name_and_how_to_start_over() {
    let (stderr, dir) = start_error_with(b"garbage", b"garbage");
    let cert = dir.path().join("cert.pem");
    assert!(stderr.contains(&format!("{}: holds no PEM certificate", cert.display())), "{stderr}");
    assert_eq!(std::fs::read(&cert).unwrap(), b"garbage", "a bad certificate is reported, not replaced");
}

#[test]
fn a_corrupt_key_stops_the_start_with_its_name() {
    // A good certificate from a first start, then a key that is not one.
    let good = tempfile::tempdir().unwrap();
    let tls_dir = good.path().to_str().unwrap();
    let agent = Agent::start(&["--enableSSL", "--tls-dir", tls_dir], &[]).unwrap();
    drop(agent);
    let cert = std::fs::read(good.path().join("cert.pem")).unwrap();
    let key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let (stderr, dir) = start_error_with(&cert, key);
    assert!(stderr.contains(&format!("{}:", dir.path().join("key.pem").display())), "{stderr}");
}
