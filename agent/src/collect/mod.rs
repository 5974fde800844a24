//! Collectors: each reads one part of the host, parsing from text so tests feed
//! fixtures. Roots (`/proc`, `/sys`) are passed in, never assumed.

pub mod cpu;
pub mod disks;
pub mod gpu;
pub mod memory;
pub mod network;
pub mod processes;
pub mod stat;
pub mod temperature;
