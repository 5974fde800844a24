//! The socktop wire protocol: what clients ask ([`request`]), the shapes of the
//! answers ([`answer`]), and how answers are put into WebSocket frames ([`framing`]).
//!
//! Field names, types and units follow the protocol spec of the socktop 1.60 client,
//! which is stricter than the published README (see README.md, "Protocol").

pub mod answer;
pub mod framing;
pub mod prometheus;
pub mod request;

/// The generated protobuf types of `proto/processes.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/socktop.rs"));
}
