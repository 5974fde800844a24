//! Collectors: each reads one part of the host, parsing from text so tests feed fixtures.

pub mod clock;
pub mod journal;
pub mod pid_cache;
pub mod process_detail;
pub mod stat;
