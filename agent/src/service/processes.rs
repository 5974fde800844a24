//! The processes answer (`get_processes`): the protobuf list, framed once per
//! collection and shared by every client that asks within the TTL.

use hyper_tungstenite::tungstenite::Message;

use super::cache::Collect;
use crate::collect::processes::ProcessScanner;
use crate::protocol::answer::ErrorAnswer;
use crate::protocol::framing::{json_frame, protobuf_frame};

impl Collect for ProcessScanner {
    fn collect(&mut self) -> Message {
        let frame = match self.scan() {
            Ok(processes) => protobuf_frame(processes),
            Err(e) => {
                tracing::error!(error = %e, "listing processes failed");
                json_frame(&ErrorAnswer {
                    error: format!("listing processes failed: {e}"),
                    request: "get_processes".into(),
                    pid: None,
                })
            }
        };
        if self.last_issues.unparsable > 0 {
            tracing::debug!(issues = ?self.last_issues, "some /proc/PID/stat files did not parse");
        }
        frame
    }
}
