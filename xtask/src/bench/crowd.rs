//! Extra idle processes, so the processes scan can be timed on a busier host:
//! `sleep` children that the bench kills when the crowd is dropped. They also stop
//! by themselves: the kernel kills them if the bench dies (see
//! [`die_with_parent`]), and each sleeps for a bounded time anyway.

use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::agent::die_with_parent;

/// Longer than any bench run; a safety net only.
const SLEEP_SECONDS: &str = "3600";

pub struct Crowd {
    children: Vec<Child>,
}

impl Crowd {
    /// Starts `count` idle processes. Must be called from the main thread (see
    /// [`die_with_parent`]).
    pub fn spawn(count: usize) -> anyhow::Result<Crowd> {
        let mut crowd = Crowd { children: Vec::with_capacity(count) };
        for _ in 0..count {
            let mut command = Command::new("sleep");
            command.arg(SLEEP_SECONDS).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            die_with_parent(&mut command);
            // On failure the crowd built so far is dropped, and so killed.
            crowd.children.push(command.spawn().context("starting an idle `sleep` process")?);
        }
        Ok(crowd)
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // Kill all first, then reap, so the crowd goes away in one sweep.
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}
