//! The closure method: is every CPU-second accounted? Under a shell loop running
//! `/bin/true` back to back (the shape of a build: most of the busy time belongs
//! to processes that start and exit between two samples), the rows of consecutive
//! processes lists, summed, against the busy time the kernel reports for the whole
//! machine (`/proc/stat`) over the same windows. The agent's own tests
//! (agent/tests/cpu_closure.rs) take the rows from its scanner, the bench
//! (`cargo xtask bench`, closure phase) from each agent's answers on the wire.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::kernel;

/// Lets the fork loop reach its pace before the first sample.
pub const LOOP_SETTLE: Duration = Duration::from_millis(300);

/// A shell running `/bin/true` back to back for at most `bound`, killed when dropped.
pub struct ForkLoop(Child);

impl ForkLoop {
    /// Starts the loop; `prepare` may set more on the command (CPUs, a parent-death
    /// signal) before it is spawned.
    pub fn start(bound: Duration, prepare: impl FnOnce(&mut Command)) -> std::io::Result<ForkLoop> {
        let script = format!("while [ $SECONDS -lt {} ]; do /bin/true; done", bound.as_secs().max(1));
        let mut command = Command::new("bash");
        command.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        prepare(&mut command);
        Ok(ForkLoop(command.spawn()?))
    }
}

impl Drop for ForkLoop {
    fn drop(&mut self) {
        // Killing the shell ends the loop; a `/bin/true` running then exits by itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two sides of one closure run, kept over consecutive windows: the rows'
/// CPU time as they are added, the machine's busy time from when it was opened.
pub struct Ledger {
    busy_before: Duration,
    rows: Duration,
}

impl Ledger {
    /// Starts counting the machine's busy time; open it right after the sample that
    /// starts the first window.
    pub fn open() -> std::io::Result<Ledger> {
        Ok(Ledger { busy_before: kernel::busy_time()?, rows: Duration::ZERO })
    }

    /// Adds the CPU time one window's rows account for.
    pub fn add_rows(&mut self, cpu: Duration) {
        self.rows += cpu;
    }

    /// Closes the run right after its last sample.
    pub fn close(self) -> std::io::Result<Closure> {
        let busy = kernel::busy_time()?.saturating_sub(self.busy_before);
        Ok(Closure { rows: self.rows, busy })
    }
}

/// One closure run: the rows' CPU time and the machine's busy time over the same windows.
#[derive(Debug, Clone, Copy)]
pub struct Closure {
    pub rows: Duration,
    pub busy: Duration,
}

impl Closure {
    /// The rows' sum as a share of the busy time, in %.
    pub fn percent(&self) -> f64 {
        self.rows.as_secs_f64() / self.busy.as_secs_f64() * 100.0
    }
}
