//! How answers become WebSocket frames: JSON as text up to [`GZIP_THRESHOLD`]
//! bytes and gzipped in a binary frame above it; the processes protobuf as a
//! binary frame, gzipped above the same threshold. The socktop client tells the two
//! binary kinds apart by the gzip magic `1f 8b`.

use std::io::Write;

use flate2::{Compress, Compression, Crc, FlushCompress, Status, write::GzEncoder};
use hyper_tungstenite::tungstenite::Message;
use serde::Serialize;

/// Payloads larger than this many bytes are gzipped (the original agent's rule).
pub const GZIP_THRESHOLD: usize = 768;

/// Frames a JSON answer.
pub fn json_frame<T: Serialize>(answer: &T) -> Message {
    // Most answers fit; growing from empty would reallocate six or seven times.
    let mut json = Vec::with_capacity(1024);
    let json = match serde_json::to_writer(&mut json, answer) {
        Ok(()) => json,
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

/// Frames protobuf answers one after another, keeping the encode buffer and the
/// compressor between them: a fresh compressor is a few hundred KiB allocated and
/// zeroed (and page-faulted in) for every processes answer.
#[derive(Default)]
pub struct ProtobufFramer {
    encoded: Vec<u8>,
    /// Made on the first answer large enough to gzip, so an idle agent does not
    /// hold it.
    compress: Option<Compress>,
}

/// gzip member header (RFC 1952 §2.3): magic, deflate, no flags, no mtime, no
/// extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl ProtobufFramer {
    /// The same frame as [`protobuf_frame`].
    pub fn frame<M: prost::Message>(&mut self, message: &M) -> Message {
        self.encoded.clear();
        // Encoding into a Vec cannot run out of room.
        let _ = message.encode(&mut self.encoded);
        if self.encoded.len() <= GZIP_THRESHOLD {
            return Message::binary(self.encoded.clone());
        }
        Message::binary(self.gzip())
    }

    fn gzip(&mut self) -> Vec<u8> {
        let input = &self.encoded;
        // Raw deflate: the gzip header and trailer are written here.
        let compress = self.compress.get_or_insert_with(|| Compress::new(Compression::fast(), false));
        compress.reset();
        let mut out = Vec::with_capacity(input.len() / 3 + 64);
        out.extend_from_slice(&GZIP_HEADER);
        loop {
            let consumed = usize::try_from(compress.total_in()).unwrap_or(input.len()).min(input.len());
            match compress.compress_vec(&input[consumed..], &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => break,
                // Out of room in `out`: compress_vec writes only into spare capacity.
                Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(1024)),
                // Deflating a complete in-memory input has no failure mode; fall
                // back to the one-shot encoder rather than send a broken stream.
                Err(_) => return gzip(input),
            }
        }
        let mut crc = Crc::new();
        crc.update(input);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the input length modulo 2^32.
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        out
    }
}

/// gzip of a whole payload at the fastest level.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
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
    fn a_reused_framer_frames_like_the_one_shot_function() {
        let row = |pid| pb::Process { pid, name: format!("worker-{pid}"), cpu_usage: 0.5, mem_bytes: 4096 };
        let mut framer = ProtobufFramer::default();
        for count in [1, 300, 5000, 20] {
            let message = pb::Processes { process_count: count, rows: (0..count as u32).map(row).collect() };
            let Message::Binary(bytes) = framer.frame(&message) else { panic!("expected a binary frame") };
            let decoded = if bytes.starts_with(&[0x1f, 0x8b]) { gunzip(&bytes) } else { bytes.to_vec() };
            assert_eq!(pb::Processes::decode(&decoded[..]).unwrap(), message, "{count} rows");
        }
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
