//! socktop_agent: an on-demand host-metrics server speaking the socktop WebSocket
//! protocol, with per-process CPU time counted by an eBPF program where the kernel
//! allows it and read from /proc where it does not.

// The command line, in the library so `cargo xtask deb` writes the man page and
// completions from the same definition the binary parses.
pub mod cli;
pub mod collect;
pub mod config;
pub mod cputime;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
#[cfg(test)]
mod layering;
pub mod protocol;
pub mod server;
pub mod service;
mod sync;
pub mod tls;
