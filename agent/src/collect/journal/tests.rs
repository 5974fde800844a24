//! journalctl stood in for by `sh -c SCRIPT`, which receives the real arguments as
//! "$@": output, failures and hangs are all real processes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::*;

fn fixture_path() -> String {
    format!("{}/tests/fixtures/journal/nginx_pid_1234.jsonl", env!("CARGO_MANIFEST_DIR"))
}

fn fake(script: &str, timeout: Duration) -> JournalCommand {
    JournalCommand::new("sh", vec!["-c", script, "journalctl"], timeout)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn entries_come_back_newest_first_with_the_arguments_journalctl_needs() {
    let dir = tempfile::tempdir().unwrap();
    let args_file = dir.path().join("args");
    let script = format!("printf '%s\\n' \"$@\" > '{}'; cat '{}'", args_file.display(), fixture_path());
    let answer = fake(&script, DEFAULT_TIMEOUT).entries(1234, 100).await;

    assert_eq!(answer.notice, None);
    assert_eq!((answer.entries.len(), answer.total_count, answer.truncated), (6, 6, false));
    assert_eq!(answer.entries[0].priority, "Error");
    assert!(answer.cached_at.abs_diff(now()) <= 2);
    let args = std::fs::read_to_string(args_file).unwrap();
    let args: Vec<_> = args.lines().collect();
    assert_eq!(args[0], "_PID=1234");
    assert!(args.contains(&"--output=json") && args.contains(&"--lines=101") && args.contains(&"--reverse"));
    assert!(args.contains(&"--no-pager") && args.contains(&"--all"));
}

#[tokio::test]
async fn more_entries_than_the_limit_are_truncated() {
    let answer = fake(&format!("cat '{}'", fixture_path()), DEFAULT_TIMEOUT).entries(1234, 2).await;
    assert_eq!((answer.entries.len(), answer.total_count, answer.truncated), (2, 2, true));
}

#[tokio::test]
async fn a_missing_journalctl_is_a_notice() {
    let command = JournalCommand::new("/nonexistent/journalctl", Vec::<String>::new(), DEFAULT_TIMEOUT);
    let answer = command.entries(1, 10).await;
    assert!(answer.entries.is_empty());
    assert_eq!(answer.notice.as_deref(), Some("journalctl is not installed on this host: no journal to show"));
    assert!(answer.cached_at.abs_diff(now()) <= 2);
}

#[tokio::test]
async fn a_failing_journalctl_is_a_notice_with_its_stderr() {
    let script = "echo 'Failed to open journal: Permission denied' >&2; exit 1";
    let answer = fake(script, DEFAULT_TIMEOUT).entries(1, 10).await;
    assert!(answer.entries.is_empty());
    let notice = answer.notice.unwrap();
    assert!(notice.starts_with("journalctl failed (exit status: 1)"), "{notice}");
    assert!(notice.ends_with("Failed to open journal: Permission denied"), "{notice}");
}

#[tokio::test]
async fn no_entries_with_an_access_hint_passes_the_hint_on() {
    let script = "echo 'Hint: You are currently not seeing messages from other users and the system.' >&2\n\
                  echo '      Users in groups adm, systemd-journal can see all messages.' >&2";
    let answer = fake(script, DEFAULT_TIMEOUT).entries(1, 10).await;
    assert_eq!(
        answer.notice.as_deref(),
        Some(
            "Hint: You are currently not seeing messages from other users and the system. \
             Users in groups adm, systemd-journal can see all messages."
        )
    );
    let silent = fake("exit 0", DEFAULT_TIMEOUT).entries(1, 10).await;
    assert_eq!((silent.notice, silent.entries.len()), (None, 0), "no logs is not a problem");
}

#[tokio::test]
async fn a_hanging_journalctl_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
    let started = Instant::now();
    let answer = fake(&script, Duration::from_millis(300)).entries(1, 10).await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(answer.notice.as_deref(), Some("journalctl did not answer within 300ms"));

    let pid = std::fs::read_to_string(pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(&stat).is_ok_and(|b| crate::host::stat::parse_stat(&b).is_ok_and(|s| s.state != b'Z')) {
        assert!(Instant::now() < deadline, "journalctl stand-in still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn endless_output_is_cut_and_reported() {
    let started = Instant::now();
    let answer = fake("exec yes '{\"broken\":'", Duration::from_secs(20)).entries(1, 10).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(answer.truncated && answer.entries.is_empty());
    let notice = answer.notice.unwrap();
    assert!(notice.starts_with("journalctl's output could not be read ("), "{notice}");
}

#[tokio::test]
async fn this_hosts_journalctl_answers_in_time_about_this_process() {
    let pid = std::process::id();
    let started = Instant::now();
    let answer = journal_entries(pid, 5).await;
    assert!(started.elapsed() < DEFAULT_TIMEOUT + Duration::from_secs(1));
    assert!(answer.entries.len() <= 5);
    assert!(answer.entries.iter().all(|entry| entry.pid == Some(pid)), "{:?}", answer.entries);
    assert!(answer.entries.is_empty() || answer.notice.is_none());
}
