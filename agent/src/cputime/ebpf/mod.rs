//! The eBPF CPU-time source: loads the embedded `sched_switch` program (built by
//! `cargo xtask build-ebpf`), attaches it, and reads per-process on-CPU time from
//! its map, including the slices still running at the instant of the read.
//!
//! Values count from the moment the program was attached, not from process start:
//! the processes collector only ever uses their differences.
//!
//! One file per job: [`load`] checks privileges, loads and attaches the programs;
//! [`source`] is the runtime source the agent reads; [`blind`] reads from /proc the
//! processes the kernel's task iterator does not visit; [`map_full`] decides which
//! processes are read from /proc while the program's map is full; [`verifier`]
//! picks the verifier's reason out of its log; `diagnostics`
//! (tests and measurements only, behind the `testing` feature) looks inside.

mod blind;
#[cfg(any(test, feature = "testing"))]
mod diagnostics;
mod exit_ring;
mod load;
mod map_full;
mod source;
mod verifier;

#[cfg(any(test, feature = "testing"))]
pub use diagnostics::{ProgramStats, load_kind, load_summing_in_user_space, load_with_capacity, load_with_memory};
pub use load::{AttachKind, EbpfLoadError, MapMemory, load};
pub use source::{EbpfCpuTime, ErrorCounts};
