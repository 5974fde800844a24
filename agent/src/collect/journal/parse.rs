//! Parser for `journalctl --output=json`: one JSON object per line, every value a
//! string, except (journalctl(1), "json"; systemd's JSON export format) values that are
//! not valid UTF-8 or not printable, which are arrays of byte values, fields that occur
//! more than once, which are arrays of such values, and, without `--all`, values over
//! 4096 bytes, which are null.

use std::cmp::Reverse;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::JournalEntry;

/// Messages are cut here: a service may log lines of up to 48 KiB (journald.conf
/// LineMax), and a hundred of those would make a multi-megabyte answer.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// Entries newest first, at most the limit.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedJournal {
    pub entries: Vec<JournalEntry>,
    /// More entries than the limit were in the output.
    pub more: bool,
    /// Lines that were not a journal entry (not JSON, or no valid timestamp).
    pub unparsed_lines: usize,
}

pub fn parse_journal_json(output: &str, limit: usize) -> ParsedJournal {
    let mut parsed = ParsedJournal::default();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        match parse_entry(line) {
            Some(entry) => parsed.entries.push(entry),
            None => parsed.unparsed_lines += 1,
        }
    }
    // Stable: entries logged in the same microsecond keep journalctl's order.
    parsed.entries.sort_by_key(|entry| Reverse(entry.timestamp_us));
    parsed.more = parsed.entries.len() > limit;
    parsed.entries.truncate(limit);
    parsed
}

fn parse_entry(line: &str) -> Option<JournalEntry> {
    let object: Map<String, Value> = serde_json::from_str(line).ok()?;
    let timestamp_us: u64 = first(&object, "__REALTIME_TIMESTAMP")?.parse().ok()?;
    Some(JournalEntry {
        timestamp: rfc3339(timestamp_us)?,
        timestamp_us,
        priority: priority_label(first(&object, "PRIORITY").as_deref()).to_owned(),
        message: cap(values(object.get("MESSAGE")).join("\n")),
        unit: first(&object, "_SYSTEMD_UNIT"),
        pid: number(&object, "_PID"),
        comm: first(&object, "_COMM"),
        uid: number(&object, "_UID"),
        gid: number(&object, "_GID"),
    })
}

/// Epoch microseconds as RFC 3339 in UTC, with the fraction when there is one.
/// None beyond year 9999, which RFC 3339 cannot write.
fn rfc3339(timestamp_us: u64) -> Option<String> {
    let nanos = i128::from(timestamp_us) * 1000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?.format(&Rfc3339).ok()
}

/// syslog(3) levels. The client decodes only these eight names, so a missing or odd
/// PRIORITY is shown as "Info", the level journald gives stdout lines by default.
pub fn priority_label(priority: Option<&str>) -> &'static str {
    match priority {
        Some("0") => "Emergency",
        Some("1") => "Alert",
        Some("2") => "Critical",
        Some("3") => "Error",
        Some("4") => "Warning",
        Some("5") => "Notice",
        Some("7") => "Debug",
        _ => "Info",
    }
}

fn first(object: &Map<String, Value>, field: &str) -> Option<String> {
    values(object.get(field)).into_iter().next()
}

fn number(object: &Map<String, Value>, field: &str) -> Option<u32> {
    first(object, field)?.parse().ok()
}

/// Every value of a field as text, decoding byte arrays lossily.
fn values(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) if is_byte_array(items) => vec![bytes_to_text(items)],
        Some(Value::Array(items)) => items.iter().flat_map(|item| values(Some(item))).collect(),
        _ => Vec::new(),
    }
}

fn is_byte_array(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(Value::is_number)
}

fn bytes_to_text(items: &[Value]) -> String {
    let bytes: Vec<u8> = items.iter().filter_map(|item| u8::try_from(item.as_u64()?).ok()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn cap(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        let path = format!("{}/tests/fixtures/journal/nginx_pid_1234.jsonl", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn fields_map_to_the_protocol() {
        let parsed = parse_journal_json(&fixture(), 100);
        assert_eq!((parsed.entries.len(), parsed.more, parsed.unparsed_lines), (6, false, 1));
        let newest = &parsed.entries[0];
        assert_eq!(newest.timestamp, "2026-11-25T10:15:42.318517Z");
        assert_eq!(newest.timestamp_us, 1_795_601_742_318_517);
        assert_eq!(newest.priority, "Error");
        assert_eq!(newest.message, "2026/11/25 10:15:42 [error] 1234#1234: *9 open() \"/srv/www/favicon.ico\" failed");
        assert_eq!(newest.unit.as_deref(), Some("nginx.service"));
        assert_eq!(
            (newest.pid, newest.comm.as_deref(), newest.uid, newest.gid),
            (Some(1234), Some("nginx"), Some(0), Some(0))
        );
    }

    #[test]
    fn entries_are_newest_first_whatever_the_input_order() {
        let parsed = parse_journal_json(&fixture(), 100);
        let times: Vec<_> = parsed.entries.iter().map(|e| e.timestamp_us).collect();
        let mut sorted = times.clone();
        sorted.sort_by_key(|&t| Reverse(t));
        assert_eq!(times, sorted);
    }

    #[test]
    fn binary_multi_valued_null_and_missing_values() {
        let parsed = parse_journal_json(&fixture(), 100);
        let by_message = |m: &str| parsed.entries.iter().find(|e| e.message.starts_with(m)).unwrap();
        assert_eq!(by_message("bin").message, "binary \u{fffd} payload\n");
        assert_eq!(by_message("first").message, "first\nsecond");
        let unprioritised = by_message("worker process 1240 exited");
        assert_eq!((unprioritised.priority.as_str(), unprioritised.unit.as_deref()), ("Info", None));
        let null_message = parsed.entries.iter().find(|e| e.message.is_empty()).unwrap();
        assert_eq!(null_message.priority, "Debug");
        assert_eq!(null_message.timestamp, "2026-11-25T10:00:00Z");
    }

    #[test]
    fn the_limit_keeps_the_newest_and_says_there_were_more() {
        let parsed = parse_journal_json(&fixture(), 2);
        assert!(parsed.more);
        let times: Vec<_> = parsed.entries.iter().map(|e| e.timestamp_us).collect();
        assert_eq!(times, [1_795_601_742_318_517, 1_795_601_700_000_001]);
        let exact = parse_journal_json(&fixture(), 6);
        assert!(!exact.more);
    }

    #[test]
    fn every_priority_has_its_name() {
        let names: Vec<_> = (0..8).map(|p| priority_label(Some(&p.to_string()))).collect();
        assert_eq!(names, ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Info", "Debug"]);
        assert_eq!(priority_label(Some("9")), "Info");
        assert_eq!(priority_label(None), "Info");
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let output =
            "not json\n{\"MESSAGE\":\"no time\"}\n[1,2]\n\n{\"__REALTIME_TIMESTAMP\":\"99999999999999999999\"}\n";
        let parsed = parse_journal_json(output, 10);
        assert_eq!((parsed.entries.len(), parsed.unparsed_lines), (0, 4));
        assert_eq!(parse_journal_json("", 10), ParsedJournal::default());
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let line = format!("{{\"__REALTIME_TIMESTAMP\":\"1\",\"MESSAGE\":\"{long}\"}}");
        let message = &parse_journal_json(&line, 1).entries[0].message;
        assert_eq!(message.len(), MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(message.ends_with("é…"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(1_786_752_000_123_456).as_deref(), Some("2026-08-15T00:00:00.123456Z"));
        assert_eq!(rfc3339(u64::MAX), None);
    }
}
