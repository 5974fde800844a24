//! The test kit: what the end-to-end tests (`tests/`), the agent's own integration
//! tests (`agent/tests/`) and the measurements of `cargo xtask` (bench, soak) would
//! otherwise each write for themselves. It depends on nothing of the agent's: its
//! readings of the kernel are the independent truth the agent's answers are
//! checked against.
//!
//! - [`skip`]: a test that cannot run here says so on one line and in the run's
//!   summary; `SOCKTOP_REQUIRE_ALL=1` turns every skip into a failure.
//! - [`kernel`]: a process's CPU time and memory and the machine's busy time, from
//!   /proc, parsed from text with fixtures.
//! - [`listen`]: the address an agent reports once bound (started with `--port 0`,
//!   so the kernel picks a port nobody holds).
//! - [`http`]: a plain HTTP/1.0 GET.
//! - [`closure`]: the closure method, a fork loop and the machine's busy time over
//!   the same windows as the rows being checked.
//! - [`limits`]: the open-files limit raised for many clients.

pub mod closure;
pub mod http;
pub mod kernel;
pub mod limits;
pub mod listen;
pub mod skip;
