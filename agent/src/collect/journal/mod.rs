//! The answer to `get_journal_entries:PID`: the newest systemd journal entries logged by
//! a pid, from `journalctl` run with a time bound. Where journalctl is missing, fails or
//! hangs, the answer has no entries and a `notice` saying why: never an error.

mod parse;

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::protocol::answer::JournalResponse;
pub use parse::{MAX_MESSAGE_BYTES, ParsedJournal, parse_journal_json, priority_label};

/// Entries per answer, as the original agent asks for.
pub const DEFAULT_LIMIT: usize = 100;
/// journalctl is killed after this long; it can be slow on cold storage.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Output beyond this is not read (the newest entries come first, so the oldest are lost).
pub const MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;
/// Enough of stderr for a notice.
const MAX_STDERR_BYTES: u64 = 4 * 1024;
/// The fields the answer uses; journalctl adds `__REALTIME_TIMESTAMP` and the cursor.
const FIELDS: &str = "PRIORITY,MESSAGE,_SYSTEMD_UNIT,_PID,_COMM,_UID,_GID";

/// Why no entries could be read; its text becomes the answer's notice.
#[derive(Debug, Error)]
enum RunError {
    #[error("journalctl is not installed on this host: no journal to show")]
    Missing,
    #[error("could not run journalctl: {0}")]
    Spawn(std::io::Error),
    #[error("journalctl did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("journalctl failed ({status}): {stderr}")]
    Failed { status: ExitStatus, stderr: String },
    #[error("reading journalctl's output failed: {0}")]
    Io(std::io::Error),
}

/// Reads the journal of the host with the default command and bounds.
pub async fn journal_entries(pid: u32, limit: usize) -> JournalResponse {
    JournalCommand::default().entries(pid, limit).await
}

/// How journalctl is run; tests substitute a program.
#[derive(Debug, Clone)]
pub struct JournalCommand {
    program: OsString,
    leading_args: Vec<OsString>,
    timeout: Duration,
}

impl Default for JournalCommand {
    fn default() -> Self {
        Self::new("journalctl", Vec::<OsString>::new(), DEFAULT_TIMEOUT)
    }
}

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// stdout was longer than MAX_OUTPUT_BYTES and journalctl was stopped.
    cut: bool,
}

impl JournalCommand {
    /// `program leading_args... <journalctl arguments>`; killed after `timeout`.
    pub fn new(program: impl Into<OsString>, leading_args: Vec<impl Into<OsString>>, timeout: Duration) -> Self {
        let leading_args = leading_args.into_iter().map(Into::into).collect();
        Self { program: program.into(), leading_args, timeout }
    }

    /// The newest `limit` entries of `pid`, newest first.
    pub async fn entries(&self, pid: u32, limit: usize) -> JournalResponse {
        let cached_at = crate::host::clock::unix_now().as_secs();
        match self.run(pid, limit).await {
            Ok(output) => respond(output, limit, cached_at),
            Err(err) => {
                tracing::debug!(pid, %err, "no journal entries");
                JournalResponse { notice: Some(err.to_string()), cached_at, ..JournalResponse::default() }
            }
        }
    }

    /// journalctl(1): one more line than the limit tells whether more existed; `--all`
    /// keeps values over 4096 bytes (MESSAGE would be null); newest first so a cut
    /// output loses the oldest.
    fn args(pid: u32, limit: usize) -> Vec<String> {
        vec![
            format!("_PID={pid}"),
            "--output=json".into(),
            format!("--output-fields={FIELDS}"),
            format!("--lines={}", limit.saturating_add(1)),
            "--reverse".into(),
            "--all".into(),
            "--no-pager".into(),
        ]
    }

    async fn run(&self, pid: u32, limit: usize) -> Result<Output, RunError> {
        let mut child = Command::new(&self.program)
            .args(&self.leading_args)
            .args(Self::args(pid, limit))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound => RunError::Missing,
                _ => RunError::Spawn(err),
            })?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let collect = async {
            let (out, err) = tokio::join!(read_capped(stdout, MAX_OUTPUT_BYTES), read_capped(stderr, MAX_STDERR_BYTES));
            let (stdout, cut) = out.map_err(RunError::Io)?;
            if cut {
                // It would block on a full pipe forever; the entries read so far are kept.
                child.start_kill().map_err(RunError::Io)?;
            }
            let status = child.wait().await.map_err(RunError::Io)?;
            let stderr = err.map_err(RunError::Io)?.0;
            if !status.success() && !cut {
                return Err(RunError::Failed { status, stderr: first_lines(&stderr) });
            }
            Ok(Output { stdout, stderr, cut })
        };
        // On timeout `collect` is dropped, and with it the child: kill_on_drop kills it
        // and tokio reaps it in the background.
        tokio::time::timeout(self.timeout, collect).await.map_err(|_| RunError::TimedOut(self.timeout))?
    }
}

/// Up to `cap` bytes of a pipe, and whether there was more.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        pipe.take(cap + 1).read_to_end(&mut bytes).await?;
    }
    let cut = bytes.len() as u64 > cap;
    bytes.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    Ok((bytes, cut))
}

fn respond(output: Output, limit: usize, cached_at: u64) -> JournalResponse {
    let parsed = parse_journal_json(&String::from_utf8_lossy(&output.stdout), limit);
    if parsed.unparsed_lines > 0 {
        tracing::debug!(lines = parsed.unparsed_lines, "unparsable journalctl output");
    }
    let notice = parsed.entries.is_empty().then(|| explain_empty(&output, &parsed)).flatten();
    JournalResponse {
        total_count: u32::try_from(parsed.entries.len()).unwrap_or(u32::MAX),
        truncated: parsed.more || output.cut,
        entries: parsed.entries,
        notice,
        cached_at,
    }
}

/// journalctl exits 0 with no entries when the user may not read other users' or the
/// system's journal, and says so on stderr; that hint tells "no access" from "no logs".
fn explain_empty(output: &Output, parsed: &ParsedJournal) -> Option<String> {
    let hint = first_lines(&output.stderr);
    if !hint.is_empty() {
        return Some(hint);
    }
    (parsed.unparsed_lines > 0)
        .then(|| format!("journalctl's output could not be read ({} lines unparsed)", parsed.unparsed_lines))
}

/// The first two non-empty lines of stderr, on one line.
fn first_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines().map(str::trim).filter(|line| !line.is_empty()).take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
