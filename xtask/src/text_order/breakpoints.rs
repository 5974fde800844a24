//! Which functions a program enters, in the order it first enters them: a one-shot
//! breakpoint (`int3`) on the first byte of every function, each put back to its
//! original byte when first hit. A function costs one trap in the whole run, so the
//! program runs at nearly its own speed, and every thread is followed (clones are
//! traced too). x86-64 only: the trap and the instruction pointer are its.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::{fs::FileExt as _, process::CommandExt as _},
    path::Path,
    process::Command,
    sync::mpsc,
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail, ensure};

const INT3: u8 = 0xcc;

/// A program started under the tracer: its pid, and the thread that traces it,
/// which returns the link-time addresses of the functions entered, in order, once
/// the program has exited (kill it to end the trace).
pub struct Traced {
    pub pid: u32,
    tracer: JoinHandle<Result<Vec<u64>>>,
}

impl Traced {
    /// Ends the program (if it still runs) and returns the functions it entered.
    pub fn stop(self) -> Result<Vec<u64>> {
        if !self.tracer.is_finished() {
            // SAFETY: kill takes no pointer. The tracer returns as soon as it has
            // reaped the program, so while it runs the pid is still the program's.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
        self.entered()
    }

    /// Waits for the program's end and returns the functions it entered.
    pub fn entered(self) -> Result<Vec<u64>> {
        self.tracer.join().map_err(|_| anyhow::anyhow!("the tracer panicked"))?
    }
}

/// Starts `command` (running `binary`) traced, with a breakpoint on each of
/// `functions` (link-time addresses of a position-independent binary).
pub fn trace(mut command: Command, binary: &Path, functions: Vec<u64>) -> Result<Traced> {
    let binary = binary.to_string_lossy().into_owned();
    let (started, pid) = mpsc::channel();
    // ptrace requests must come from the thread that is the tracer: the one that
    // started the program.
    let tracer = std::thread::spawn(move || -> Result<Vec<u64>> {
        // SAFETY: between fork and exec the child only makes this system call.
        unsafe {
            command.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().context("starting the traced program");
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = started.send(None);
                return Err(error);
            }
        };
        let pid = child.id() as libc::pid_t;
        let _ = started.send(Some(pid as u32));
        match Tracer::attach(pid, &binary, &functions) {
            Ok(tracer) => tracer.run(),
            Err(error) => {
                // SAFETY: kill takes no pointer; the child is ours and not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait(pid);
                Err(error)
            }
        }
    });
    match pid.recv() {
        Ok(Some(pid)) => Ok(Traced { pid, tracer }),
        _ => {
            let failure = tracer.join().map_err(|_| anyhow::anyhow!("the tracer panicked"))?;
            Err(failure.err().unwrap_or_else(|| anyhow::anyhow!("the traced program did not start")))
        }
    }
}

struct Tracer {
    pid: libc::pid_t,
    memory: File,
    /// Runtime address of each breakpoint still set, with the byte it replaced.
    armed: HashMap<u64, u8>,
    /// Runtime address of every breakpoint ever set: a thread may trap on one that
    /// another thread's trap has just removed.
    placed: HashMap<u64, u64>,
    entered: Vec<u64>,
}

impl Tracer {
    /// Takes the program stopped at its exec, follows its threads, sets the breakpoints.
    fn attach(pid: libc::pid_t, binary: &str, functions: &[u64]) -> Result<Tracer> {
        let status = wait(pid)?;
        ensure!(
            libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP,
            "the program did not stop at its exec (status {status:#x})"
        );
        let options = libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;
        // SAFETY: a ptrace request on our stopped tracee; no pointer is passed.
        if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) } != 0 {
            return Err(std::io::Error::last_os_error()).context("PTRACE_SETOPTIONS");
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let base = super::symbols::load_base(&maps, binary).context("the binary's mapping in the program")?;
        let memory = File::options().read(true).write(true).open(format!("/proc/{pid}/mem"))?;
        let mut tracer = Tracer { pid, memory, armed: HashMap::new(), placed: HashMap::new(), entered: Vec::new() };
        for &function in functions {
            let address = base + function;
            let mut original = [0u8];
            tracer.memory.read_exact_at(&mut original, address)?;
            tracer.memory.write_all_at(&[INT3], address)?;
            tracer.armed.insert(address, original[0]);
            tracer.placed.insert(address, function);
        }
        cont(pid, 0)?;
        Ok(tracer)
    }

    /// Follows the program until it exits; returns the functions entered.
    fn run(mut self) -> Result<Vec<u64>> {
        loop {
            let mut status = 0;
            // SAFETY: waits for any traced thread; `status` is ours to write.
            let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
            if tid < 0 {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => return Ok(self.entered),
                    _ => return Err(error).context("waitpid"),
                }
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                if tid == self.pid {
                    return Ok(self.entered);
                }
                continue;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            let signal = match (libc::WSTOPSIG(status), status >> 16) {
                // A new thread (clone event), or a thread's first stop: no signal of the program's.
                (libc::SIGTRAP, event) if event != 0 => 0,
                (libc::SIGSTOP, _) => 0,
                (libc::SIGTRAP, _) => self.on_trap(tid)?,
                (other, _) => other,
            };
            // A thread may have exited between its stop and this (ESRCH): nothing to resume.
            let _ = cont(tid, signal);
        }
    }

    /// A thread trapped: when on one of ours, records the function the first time,
    /// puts its byte back and runs the thread from the function's start. Returns the
    /// signal to deliver (none for ours).
    fn on_trap(&mut self, tid: libc::pid_t) -> Result<i32> {
        // SAFETY: user_regs_struct is plain data; PTRACE_GETREGS fills it whole.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: a stopped tracee; `regs` is a valid buffer of the size the request writes.
        if unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut libc::user_regs_struct) } != 0 {
            return Ok(0);
        }
        let address = regs.rip - 1;
        let Some(&function) = self.placed.get(&address) else {
            return Ok(libc::SIGTRAP);
        };
        if let Some(original) = self.armed.remove(&address) {
            self.memory.write_all_at(&[original], address)?;
            self.entered.push(function);
        }
        regs.rip = address;
        // SAFETY: as above; the registers read, with the instruction pointer moved back.
        if unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &regs as *const libc::user_regs_struct) } != 0 {
            bail!("PTRACE_SETREGS: {}", std::io::Error::last_os_error());
        }
        Ok(0)
    }
}

/// Waits for `pid`'s next state change; the raw status.
fn wait(pid: libc::pid_t) -> Result<i32> {
    let mut status = 0;
    // SAFETY: `status` is ours to write.
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } < 0 {
        return Err(std::io::Error::last_os_error()).context("waitpid");
    }
    Ok(status)
}

/// Resumes a stopped thread, delivering `signal` (0 for none).
fn cont(tid: libc::pid_t, signal: i32) -> Result<()> {
    // SAFETY: a ptrace request on a stopped tracee; no pointer is passed.
    if unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("PTRACE_CONT");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text_order::symbols;

    #[inline(never)]
    fn marker_entered() -> u64 {
        std::hint::black_box(7)
    }

    #[inline(never)]
    fn marker_not_entered() -> u64 {
        std::hint::black_box(11)
    }

    /// Run by the test below, in a traced copy of this test binary; ignored otherwise.
    #[test]
    #[ignore = "run traced by every_function_entered_is_recorded_once_and_no_other"]
    fn traced_helper() {
        // On a thread of its own, as a traced clone.
        let entered = std::thread::spawn(marker_entered).join().unwrap();
        assert_eq!(entered, 7);
        if std::env::var_os("NEVER_SET_BY_THE_TEST").is_some() {
            marker_not_entered();
        }
    }

    #[test]
    fn every_function_entered_is_recorded_once_and_no_other() {
        let binary = std::env::current_exe().unwrap();
        let functions = symbols::functions(&std::fs::read(&binary).unwrap()).unwrap();
        // The function itself has the shortest mangled name of those naming it (shims
        // that call it name it too); identifiers are mangled with their length first.
        let address_of = |identifier: &str| {
            let needle = format!("{}{identifier}", identifier.len());
            let named = functions.iter().filter(|function| function.name.contains(&needle));
            named
                .min_by_key(|function| function.name.len())
                .unwrap_or_else(|| panic!("no function {identifier}"))
                .address
        };
        let (entered, not_entered) = (address_of("marker_entered"), address_of("marker_not_entered"));
        let mut command = Command::new(&binary);
        command
            .args(["text_order::breakpoints::tests::traced_helper", "--exact", "--ignored", "--test-threads=1"])
            .stdout(std::process::Stdio::null());
        let traced = trace(command, &binary, functions.iter().map(|function| function.address).collect()).unwrap();
        let recorded = traced.entered().unwrap();
        assert!(recorded.contains(&entered), "{} functions entered, not the marker", recorded.len());
        assert!(!recorded.contains(&not_entered));
        let mut unique = recorded.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), recorded.len(), "a function recorded twice");
        assert!(recorded.len() < functions.len() / 2, "{} of {} recorded", recorded.len(), functions.len());
    }
}
