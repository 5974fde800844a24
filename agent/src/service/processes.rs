//! The processes answer (`get_processes`): the protobuf list, framed once per
//! collection and shared by every client that asks within the TTL.

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use crate::collect::processes::ProcessScanner;
use crate::protocol::answer::ErrorAnswer;
use crate::protocol::framing::{ProtobufFramer, json_frame};

pub struct ProcessesCollector {
    scanner: ProcessScanner,
    framer: ProtobufFramer,
}

impl ProcessesCollector {
    pub fn new(scanner: ProcessScanner) -> Self {
        Self { scanner, framer: ProtobufFramer::default() }
    }
}

impl ProcessesCollector {
    /// Scans for the Prometheus scrape; `None` (logged) when listing failed.
    pub fn scan_for_samples(&mut self) -> Option<&ProcessScanner> {
        if let Err(e) = self.scanner.scan() {
            tracing::error!(error = %e, "listing processes failed");
            return None;
        }
        Some(&self.scanner)
    }
}

impl Collect for ProcessesCollector {
    fn collect(&mut self) -> Message {
        let frame = match self.scanner.scan() {
            Ok(processes) => self.framer.frame(processes),
            Err(e) => {
                tracing::error!(error = %e, "listing processes failed");
                json_frame(&ErrorAnswer {
                    error: format!("listing processes failed: {e}"),
                    request: "get_processes".into(),
                    pid: None,
                })
            }
        };
        if self.scanner.last_issues.unparsable > 0 {
            tracing::debug!(issues = ?self.scanner.last_issues, "some /proc/PID/stat files did not parse");
        }
        frame
    }
}
