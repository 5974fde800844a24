//! The ring of exit records, mapped into the agent only while someone reads it.
//!
//! Mapping a BPF ring buffer maps all of its pages at once (the kernel inserts them
//! as the mapping is made), and its data area twice, so that a record that wraps
//! reads as one piece: the 512 KiB ring was 1 MiB of the agent's resident memory
//! for as long as the agent ran, 1,028 of an idle agent's 7,176 KiB (measured,
//! `/proc/PID/smaps`, the `anon_inode:bpf-map` mapping), although records are
//! written and read only while clients are connected. The agent keeps a file
//! descriptor of the map and maps it while records are wanted. The positions of
//! the producer and the consumer live in the kernel's pages, so records left from
//! before a pause are read after it as before.

use std::os::fd::{AsFd as _, OwnedFd};

use aya::maps::{Map, MapData, MapError, RingBuf, ring_buf::RingBufItem};

pub(super) struct ExitRing {
    /// The map, kept open while unmapped.
    map: OwnedFd,
    mapped: Option<RingBuf<MapData>>,
}

impl ExitRing {
    /// Takes the ring map (checking that it is one); it starts unmapped.
    pub fn new(map: Map) -> Result<Self, MapError> {
        let ring = RingBuf::try_from(map)?;
        let map = ring.as_fd().try_clone_to_owned().map_err(|io_error| MapError::SyscallError(dup_error(io_error)))?;
        Ok(Self { map, mapped: None })
    }

    /// Maps the ring unless it is mapped.
    pub fn map(&mut self) -> Result<(), MapError> {
        if self.mapped.is_none() {
            let fd = self.map.try_clone().map_err(|io_error| MapError::SyscallError(dup_error(io_error)))?;
            self.mapped = Some(RingBuf::try_from(Map::RingBuf(MapData::from_fd(fd)?))?);
        }
        Ok(())
    }

    /// Unmaps the ring; records still in it stay for the next mapping.
    pub fn unmap(&mut self) {
        self.mapped = None;
    }

    /// The next record, when mapped and one is there.
    pub fn next(&mut self) -> Option<RingBufItem<'_>> {
        self.mapped.as_mut()?.next()
    }
}

fn dup_error(io_error: std::io::Error) -> aya::sys::SyscallError {
    aya::sys::SyscallError { call: "dup", io_error }
}
