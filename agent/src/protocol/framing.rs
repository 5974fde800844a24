//! The socktop frames: how answers become [`Frame`]s.
//!
//! - JSON answers to the real client's plain commands (`get_metrics`, ...): a text
//!   frame up to [`GZIP_THRESHOLD`] bytes, gzipped in a binary frame above it, as
//!   the original agent does.
//! - JSON answers to the README's JSON-form requests (`{"type":"metrics"}`): always
//!   a text frame, whatever the size (the published guide promises JSON text).
//! - The processes list: protobuf in a binary frame, gzipped above the same
//!   threshold, in both forms.
//!
//! The socktop client tells gzip from the rest by the magic `1f 8b`. Every gzip goes
//! through one path, [`Gzip`], with its compressor kept between answers.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use serde::Serialize;

use super::answer::ErrorAnswer;
use super::frame::Frame;
use super::pb;
use super::request::Form;
use crate::collect::processes::ProcessesSnapshot;

/// Payloads larger than this many bytes are gzipped (the original agent's rule).
pub const GZIP_THRESHOLD: usize = 768;

/// Renders answers into frames, keeping its buffers and compressor between them.
#[derive(Default)]
pub struct Framer {
    gzip: Gzip,
    /// The protobuf answer, rewritten in place from each processes snapshot so a
    /// steady list allocates no names.
    processes: pb::Processes,
    encoded: Vec<u8>,
}

impl Framer {
    /// Drops the kept compressor and buffers; the next answer makes them again.
    pub fn release(&mut self) {
        *self = Framer::default();
    }

    /// Frames a JSON answer to a request of `form`; `request` names the request in
    /// the error answer sent should the answer not encode.
    pub fn json<T: Serialize>(&mut self, answer: &T, form: Form, request: &str) -> Frame {
        // Most answers fit; growing from empty would reallocate six or seven times.
        let mut json = Vec::with_capacity(1024);
        if let Err(error) = serde_json::to_writer(&mut json, answer) {
            // Our answer types are plain data; serde_json fails only on map keys
            // that are not strings, which they do not have.
            json.clear();
            let error = ErrorAnswer::new(format!("encoding the answer failed: {error}"), request);
            json = serde_json::to_vec(&error).unwrap_or_default();
        }
        if form == Form::Json || json.len() <= GZIP_THRESHOLD {
            // serde_json emits UTF-8, so this takes the buffer without a copy.
            return match String::from_utf8(json) {
                Ok(text) => Frame::text(text),
                Err(e) => Frame::text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            };
        }
        Frame::binary(self.gzip.compress(&json))
    }

    /// Frames the processes list (the same frame in both forms).
    pub fn processes(&mut self, snapshot: &ProcessesSnapshot) -> Frame {
        let rows = &mut self.processes.rows;
        rows.resize_with(snapshot.processes.len(), pb::Process::default);
        for (row, process) in rows.iter_mut().zip(&snapshot.processes) {
            row.pid = process.pid;
            row.cpu_usage = process.cpu_share.unwrap_or(0.0);
            row.mem_bytes = process.rss_bytes;
            if *row.name != *process.name {
                row.name.clear();
                row.name.push_str(&process.name);
            }
        }
        self.processes.process_count = rows.len() as u64;
        self.encoded.clear();
        // Encoding into a Vec cannot run out of room.
        let _ = prost::Message::encode(&self.processes, &mut self.encoded);
        self.binary()
    }

    /// Frames any protobuf message as the processes list is framed.
    pub fn protobuf<M: prost::Message>(&mut self, message: &M) -> Frame {
        self.encoded.clear();
        let _ = message.encode(&mut self.encoded);
        self.binary()
    }

    /// `encoded` in a binary frame, gzipped when over the threshold.
    fn binary(&mut self) -> Frame {
        if self.encoded.len() <= GZIP_THRESHOLD {
            return Frame::binary(self.encoded.clone());
        }
        Frame::binary(self.gzip.compress(&self.encoded))
    }
}

/// Frames one JSON answer to a plain command with a framer of its own, for answers
/// too rare to keep one for.
pub fn json_frame<T: Serialize>(answer: &T, form: Form, request: &str) -> Frame {
    Framer::default().json(answer, form, request)
}

/// gzip member header (RFC 1952 §2.3): magic, deflate, no flags, no mtime, no
/// extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// gzip with a kept compressor: a fresh one is a few hundred KiB allocated and
/// zeroed (and page-faulted in) for every answer.
#[derive(Default)]
pub struct Gzip {
    /// Made on the first answer large enough to gzip, so an idle agent does not
    /// hold it.
    compress: Option<Compress>,
}

impl Gzip {
    /// `input` as one gzip member; should deflate ever fail (it has no failure mode
    /// on a complete in-memory input), `input` itself, which the client reads as
    /// an uncompressed answer.
    pub fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        // Level 1: these payloads are small and sent often; the fastest level
        // already shrinks the processes list about 4x. Raw deflate: the gzip header
        // and trailer are written here.
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
                Err(error) => {
                    tracing::warn!("gzip failed, sending the answer uncompressed: {error}");
                    return input.to_vec();
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::processes::ProcessSample;
    use crate::protocol::pb;
    use flate2::read::GzDecoder;
    use prost::Message as _;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    fn json_frame(answer: &serde_json::Value) -> Frame {
        super::json_frame(answer, Form::Command, "get_metrics")
    }

    fn protobuf_frame(message: &pb::Processes) -> Frame {
        Framer::default().protobuf(message)
    }

    #[test]
    fn small_json_goes_as_text() {
        let frame = json_frame(&serde_json::json!({"a": 1}));
        assert_eq!(frame, Frame::text(r#"{"a":1}"#));
    }

    #[test]
    fn large_json_goes_gzipped_in_a_binary_frame() {
        let big = serde_json::json!({"s": "x".repeat(2000)});
        let Frame::Binary(bytes) = json_frame(&big) else { panic!("expected a binary frame") };
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        let back: serde_json::Value = serde_json::from_slice(&gunzip(&bytes)).unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn a_reused_framer_frames_like_the_one_shot_function() {
        let row = |pid| pb::Process { pid, name: format!("worker-{pid}"), cpu_usage: 0.5, mem_bytes: 4096 };
        let mut framer = Framer::default();
        for count in [1, 300, 5000, 20] {
            let message = pb::Processes { process_count: count, rows: (0..count as u32).map(row).collect() };
            let Frame::Binary(bytes) = framer.protobuf(&message) else { panic!("expected a binary frame") };
            let decoded = if bytes.starts_with(&[0x1f, 0x8b]) { gunzip(&bytes) } else { bytes.to_vec() };
            assert_eq!(pb::Processes::decode(&decoded[..]).unwrap(), message, "{count} rows");
        }
    }

    #[test]
    fn protobuf_is_gzipped_only_when_large() {
        let row = |pid| pb::Process { pid, name: "worker".into(), cpu_usage: 1.5, mem_bytes: 4096 };
        let small = pb::Processes { process_count: 1, rows: vec![row(1)] };
        let Frame::Binary(bytes) = protobuf_frame(&small) else { panic!() };
        assert_eq!(pb::Processes::decode(&bytes[..]).unwrap(), small);

        let large = pb::Processes { process_count: 200, rows: (0..200).map(row).collect() };
        let Frame::Binary(bytes) = protobuf_frame(&large) else { panic!() };
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        assert_eq!(pb::Processes::decode(&gunzip(&bytes)[..]).unwrap(), large);
    }

    #[test]
    fn json_form_answers_are_text_whatever_their_size() {
        let big = serde_json::json!({"s": "x".repeat(2000)});
        let Frame::Text(text) = super::json_frame(&big, Form::Json, "get_disks") else { panic!("expected text") };
        assert_eq!(serde_json::from_slice::<serde_json::Value>(text.as_bytes()).unwrap(), big);
        let small = serde_json::json!({"a": 1});
        assert_eq!(super::json_frame(&small, Form::Json, "get_disks"), Frame::text(r#"{"a":1}"#));
    }

    fn snapshot(count: u32) -> ProcessesSnapshot {
        let sample = |pid| ProcessSample {
            pid,
            ppid: 1,
            start_time_ns: 1_000,
            name: format!("worker-{pid}").into(),
            rss_bytes: 4096,
            cpu_ns: 7,
            interval_cpu_ns: (pid % 2 == 0).then_some(50_000_000),
            cpu_share: (pid % 2 == 0).then_some(2.5),
        };
        ProcessesSnapshot {
            at: std::time::Instant::now(),
            sampled_at: std::time::SystemTime::now(),
            interval: None,
            cpus: 2,
            source: crate::cputime::CpuSourceKind::Proc,
            processes: (1..=count).map(sample).collect(),
            comm_cpu_ns: Vec::new(),
        }
    }

    #[test]
    fn a_processes_snapshot_encodes_as_the_protobuf_list_gzipped_only_when_large() {
        let mut framer = Framer::default();
        for count in [2, 300, 1] {
            let snapshot = snapshot(count);
            let Frame::Binary(bytes) = framer.processes(&snapshot) else { panic!("expected a binary frame") };
            let gzipped = bytes.starts_with(&[0x1f, 0x8b]);
            let decoded = pb::Processes::decode(&if gzipped { gunzip(&bytes) } else { bytes.to_vec() }[..]).unwrap();
            assert_eq!(gzipped, decoded.encoded_len() > GZIP_THRESHOLD, "{count} rows");
            assert_eq!(decoded.process_count, u64::from(count));
            let expected: Vec<pb::Process> = snapshot
                .processes
                .iter()
                .map(|p| pb::Process {
                    pid: p.pid,
                    name: p.name.to_string(),
                    cpu_usage: p.cpu_share.unwrap_or(0.0),
                    mem_bytes: p.rss_bytes,
                })
                .collect();
            assert_eq!(decoded.rows, expected, "{count} rows");
        }
    }
}
