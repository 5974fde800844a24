//! How answers become WebSocket frames: JSON as text up to [`GZIP_THRESHOLD`]
//! bytes and gzipped in a binary frame above it; the processes protobuf as a
//! binary frame, gzipped above the same threshold. The socktop client tells the two
//! binary kinds apart by the gzip magic `1f 8b`.

use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use hyper_tungstenite::tungstenite::Message;
use serde::Serialize;

/// Payloads larger than this many bytes are gzipped (the original agent's rule).
pub const GZIP_THRESHOLD: usize = 768;

/// Frames a JSON answer.
pub fn json_frame<T: Serialize>(answer: &T) -> Message {
    let json = match serde_json::to_vec(answer) {
        Ok(json) => json,
        // Our answer types are plain data; serde_json fails only on map keys that
        // are not strings, which they do not have.
        Err(e) => format!(r#"{{"error":"encoding the answer failed: {e}"}}"#).into_bytes(),
    };
    if json.len() <= GZIP_THRESHOLD {
        // serde_json emits UTF-8, so this takes the buffer without a copy.
        match String::from_utf8(json) {
            Ok(text) => Message::text(text),
            Err(e) => Message::text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    } else {
        Message::binary(gzip(&json))
    }
}

/// Frames a protobuf answer.
pub fn protobuf_frame<M: prost::Message>(message: &M) -> Message {
    let encoded = message.encode_to_vec();
    if encoded.len() <= GZIP_THRESHOLD { Message::binary(encoded) } else { Message::binary(gzip(&encoded)) }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    // Level 1: these payloads are small and sent often; the fastest level already
    // shrinks the processes list about 4x.
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 3 + 64), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pb;
    use flate2::read::GzDecoder;
    use prost::Message as _;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn small_json_goes_as_text() {
        let frame = json_frame(&serde_json::json!({"a": 1}));
        assert_eq!(frame, Message::text(r#"{"a":1}"#));
    }

    #[test]
    fn large_json_goes_gzipped_in_a_binary_frame() {
        let big = serde_json::json!({"s": "x".repeat(2000)});
        let Message::Binary(bytes) = json_frame(&big) else { panic!("expected a binary frame") };
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        let back: serde_json::Value = serde_json::from_slice(&gunzip(&bytes)).unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn protobuf_is_gzipped_only_when_large() {
        let row = |pid| pb::Process { pid, name: "worker".into(), cpu_usage: 1.5, mem_bytes: 4096 };
        let small = pb::Processes { process_count: 1, rows: vec![row(1)] };
        let Message::Binary(bytes) = protobuf_frame(&small) else { panic!() };
        assert_eq!(pb::Processes::decode(&bytes[..]).unwrap(), small);

        let large = pb::Processes { process_count: 200, rows: (0..200).map(row).collect() };
        let Message::Binary(bytes) = protobuf_frame(&large) else { panic!() };
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        assert_eq!(pb::Processes::decode(&gunzip(&bytes)[..]).unwrap(), large);
    }
}
