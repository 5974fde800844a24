//! Types shared by the eBPF program (`agent-ebpf`) and the agent that reads its maps.
//!
//! Every record is `#[repr(C)]`, `Copy` and free of padding, so the bytes the kernel
//! copies out of a map are exactly the bytes of the Rust value on both sides.
#![no_std]

pub mod cputime;
