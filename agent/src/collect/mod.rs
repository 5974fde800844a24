//! Collectors: each reads one part of the host, parsing from text so tests feed
//! fixtures. Roots (`/proc`, `/sys`) are passed in, never assumed.

pub mod cpu;
pub mod disks;
pub mod gpu;
pub mod journal;
pub mod memory;
pub mod network;
pub mod pid_cache;
pub mod process_detail;
pub mod processes;
pub mod temperature;
