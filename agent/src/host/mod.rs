//! Host access, the bottom room: the files of `/proc` (kept open and re-read in
//! place, listed by getdents64), the parser of `/proc/PID/stat`, and the host's
//! clock and units. The CPU-time sources and the collectors above both build on
//! it; it imports no other room of the agent.

pub mod clock;
pub mod procfs;
pub mod stat;
