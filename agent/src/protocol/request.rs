//! Parsing of client requests. Two forms are accepted, as text frames: the plain
//! commands the socktop client sends (`get_metrics`, `get_process_metrics:42`) and
//! the JSON form of the published README (`{"type":"metrics"}`).

use serde::Deserialize;

/// How a request was written, which decides how its JSON answer is framed
/// (PROTOCOL.md, "Framing of answers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// A plain command of the socktop client (`get_metrics`): JSON answers over 768
    /// bytes are gzipped, as the original agent does.
    Command,
    /// The README's JSON form (`{"type":"metrics"}`): JSON answers are always text.
    Json,
}

impl Form {
    /// The form `text` is written in, recognised or not.
    pub fn of(text: &str) -> Form {
        if text.trim_start().starts_with('{') { Form::Json } else { Form::Command }
    }
}

/// A recognised request and the form it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub request: Request,
    pub form: Form,
}

/// A recognised request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Metrics,
    Disks,
    Processes,
    ProcessMetrics {
        pid: u32,
    },
    JournalEntries {
        pid: u32,
    },
    /// The agent's description of itself; not part of the socktop client's protocol.
    AgentInfo,
}

/// Why a text frame is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown request")]
    Unknown,
    #[error("malformed JSON request: {0}")]
    MalformedJson(String),
    #[error("unknown request type {0:?}")]
    UnknownType(String),
    #[error("request type {0:?} needs a \"pid\" field")]
    MissingPid(&'static str),
    #[error("invalid pid {0:?}")]
    InvalidPid(String),
}

impl Request {
    /// The plain-command name of the request, used in per-pid error answers.
    pub fn command(self) -> &'static str {
        match self {
            Request::Metrics => "get_metrics",
            Request::Disks => "get_disks",
            Request::Processes => "get_processes",
            Request::ProcessMetrics { .. } => "get_process_metrics",
            Request::JournalEntries { .. } => "get_journal_entries",
            Request::AgentInfo => "get_agent_info",
        }
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, RequestError> {
    let form = Form::of(text);
    let request = match form {
        Form::Json => parse_json(text.trim())?,
        Form::Command => parse_command(text.trim())?,
    };
    Ok(Incoming { request, form })
}

fn parse_command(text: &str) -> Result<Request, RequestError> {
    match text {
        "get_metrics" => return Ok(Request::Metrics),
        "get_disks" => return Ok(Request::Disks),
        "get_processes" => return Ok(Request::Processes),
        "get_agent_info" => return Ok(Request::AgentInfo),
        _ => {}
    }
    if let Some(pid) = text.strip_prefix("get_process_metrics:") {
        return Ok(Request::ProcessMetrics { pid: parse_pid(pid)? });
    }
    if let Some(pid) = text.strip_prefix("get_journal_entries:") {
        return Ok(Request::JournalEntries { pid: parse_pid(pid)? });
    }
    Err(RequestError::Unknown)
}

fn parse_pid(text: &str) -> Result<u32, RequestError> {
    text.trim().parse().map_err(|_| RequestError::InvalidPid(text.to_owned()))
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    pid: Option<u32>,
}

fn parse_json(text: &str) -> Result<Request, RequestError> {
    let request: JsonRequest = serde_json::from_str(text).map_err(|e| RequestError::MalformedJson(e.to_string()))?;
    let pid = |kind| request.pid.ok_or(RequestError::MissingPid(kind));
    match request.kind.as_str() {
        "metrics" => Ok(Request::Metrics),
        "disks" => Ok(Request::Disks),
        "processes" => Ok(Request::Processes),
        "process_metrics" => Ok(Request::ProcessMetrics { pid: pid("process_metrics")? }),
        "journal_entries" => Ok(Request::JournalEntries { pid: pid("journal_entries")? }),
        "agent_info" => Ok(Request::AgentInfo),
        _ => Err(RequestError::UnknownType(request.kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the text asks for, whatever its form.
    fn parse(text: &str) -> Result<Request, RequestError> {
        super::parse(text).map(|incoming| incoming.request)
    }

    #[test]
    fn a_request_carries_the_form_it_came_in() {
        let form = |text| super::parse(text).map(|incoming| incoming.form);
        assert_eq!(form("get_metrics"), Ok(Form::Command));
        assert_eq!(form("  get_process_metrics:7"), Ok(Form::Command));
        assert_eq!(form(r#"{"type":"metrics"}"#), Ok(Form::Json));
        assert_eq!(form(r#" {"type":"processes"}"#), Ok(Form::Json));
        assert_eq!(Form::of("{\"type\":"), Form::Json);
        assert_eq!(Form::of("hello"), Form::Command);
    }

    #[test]
    fn plain_commands_of_the_real_client() {
        assert_eq!(parse("get_metrics"), Ok(Request::Metrics));
        assert_eq!(parse("get_disks"), Ok(Request::Disks));
        assert_eq!(parse("get_processes"), Ok(Request::Processes));
        assert_eq!(parse("get_process_metrics:4242"), Ok(Request::ProcessMetrics { pid: 4242 }));
        assert_eq!(parse("get_journal_entries:1"), Ok(Request::JournalEntries { pid: 1 }));
        assert_eq!(parse("get_agent_info"), Ok(Request::AgentInfo));
    }

    #[test]
    fn json_form_of_the_readme() {
        assert_eq!(parse(r#"{"type":"metrics"}"#), Ok(Request::Metrics));
        assert_eq!(parse(r#" {"type": "disks"} "#), Ok(Request::Disks));
        assert_eq!(parse(r#"{"type":"processes"}"#), Ok(Request::Processes));
        assert_eq!(parse(r#"{"type":"process_metrics","pid":12}"#), Ok(Request::ProcessMetrics { pid: 12 }));
        assert_eq!(parse(r#"{"type":"journal_entries","pid":3}"#), Ok(Request::JournalEntries { pid: 3 }));
        assert_eq!(parse(r#"{"type":"agent_info"}"#), Ok(Request::AgentInfo));
    }

    #[test]
    fn bad_requests_are_told_apart() {
        assert_eq!(parse("get_everything"), Err(RequestError::Unknown));
        assert_eq!(parse(""), Err(RequestError::Unknown));
        assert!(matches!(parse(r#"{"type":"#), Err(RequestError::MalformedJson(_))));
        assert!(matches!(parse(r#"{"kind":"metrics"}"#), Err(RequestError::MalformedJson(_))));
        assert_eq!(parse(r#"{"type":"pie"}"#), Err(RequestError::UnknownType("pie".into())));
        assert_eq!(parse(r#"{"type":"process_metrics"}"#), Err(RequestError::MissingPid("process_metrics")));
        assert_eq!(parse("get_process_metrics:-1"), Err(RequestError::InvalidPid("-1".into())));
        assert_eq!(parse("get_process_metrics:"), Err(RequestError::InvalidPid("".into())));
    }
}
