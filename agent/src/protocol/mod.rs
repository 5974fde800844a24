//! The socktop wire protocol: what clients ask ([`request`]), the shapes of the
//! answers ([`answer`]), how answers are encoded ([`framing`]) and the frames they
//! leave in ([`frame`]).
//!
//! Field names, types and units follow the protocol spec of the socktop 1.60 client,
//! which is stricter than the published README (see README.md, "Protocol").

pub mod agent_info;
pub mod answer;
pub mod frame;
pub mod framing;
pub mod prometheus;
pub mod request;

/// The generated protobuf types of `proto/processes.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/socktop.rs"));
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::pb;

    fn answer() -> pb::Processes {
        let row = |pid| pb::Process { pid, name: format!("worker {pid}"), cpu_usage: 12.5, mem_bytes: 1 << 33 };
        pb::Processes { process_count: 3, rows: vec![row(1), row(2), row(70_000)] }
    }

    #[test]
    fn a_processes_answer_is_the_guides_process_list_byte_for_byte() {
        let bytes = answer().encode_to_vec();
        let list = pb::ProcessList::decode(&bytes[..]).unwrap();
        assert_eq!(list.process_count, 3);
        assert_eq!(list.processes, answer().rows);
        assert_eq!(list.encode_to_vec(), bytes, "both names must encode one answer the same way");
    }
}
