//! The agent's own heap: glibc's allocator, set up so that memory the agent frees
//! goes back to the system instead of staying resident in an idle agent.

use std::ffi::OsString;

/// Where glibc reads its tunables from: the environment, once, as a program starts.
const TUNABLES: &str = "GLIBC_TUNABLES";
/// The tunable that sizes each thread's cache of freed small blocks.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
/// Set for the restarted agent only, so that it restarts at most once whatever
/// glibc makes of `GLIBC_TUNABLES`.
const RESTARTED: &str = "SOCKTOP_AGENT_HEAP_RESTARTED";

/// Restarts the agent in place (same pid, arguments and environment) with glibc's
/// per-thread caches of freed blocks (tcache) off, unless `GLIBC_TUNABLES`
/// already sets their size (the user's choice), this is the restarted agent, or
/// it runs in secure-execution mode (setuid, or file capabilities such as
/// `setcap cap_bpf,cap_perfmon+ep`: glibc then drops the tunable, and restarting
/// would only loop). Call first thing in `main`; returns when nothing is to be
/// done or the exec failed (then the agent runs with the caches).
///
/// Why: a thread keeps up to 7 freed blocks of each size up to 1 KiB for itself,
/// and a busy agent leaves each of its threads' caches full of blocks scattered
/// over the heap, which then pins pages that `malloc_trim` would give back; an
/// idle thread never empties its cache, and glibc has no call to empty another
/// thread's. Measured (`cargo xtask bench --only scrape`, 1,000 extra processes):
/// the anonymous memory an idle agent keeps after the scrapes grew 1.04 MiB with
/// the caches, 0.46 MiB without. glibc reads the tunable only at start-up, hence
/// the exec. Without the caches, small blocks come from the (one) arena under its
/// lock, which the agent's few threads rarely contend for.
pub fn restart_without_thread_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        if std::env::var_os(RESTARTED).is_some() {
            // SAFETY: first thing in `main`: no other thread runs yet.
            unsafe { std::env::remove_var(RESTARTED) };
            return;
        }
        // SAFETY: getauxval only reads the auxiliary vector the kernel passed.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return;
        }
        let current = std::env::var_os(TUNABLES);
        let Some(tunables) = with_tcache_off(current.as_deref()) else { return };
        // By its path, not /proc/self/exe: the kernel names the process (its
        // `comm`, what ps and top show) after the file executed.
        let program = match std::env::current_exe() {
            Ok(program) => program,
            Err(e) => {
                return eprintln!("socktop_agent: cannot find its own binary ({e}); glibc's thread caches stay on");
            }
        };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| program.clone().into_os_string());
        let error = std::process::Command::new(&program)
            .arg0(arg0)
            .args(args)
            .env(TUNABLES, tunables)
            .env(RESTARTED, "1")
            .exec();
        // Logging starts later; say it plainly on stderr.
        eprintln!("socktop_agent: could not restart with glibc's thread caches off ({error}); they stay on");
    }
}

/// `GLIBC_TUNABLES` with the thread caches off added, or None when it already
/// sizes them.
fn with_tcache_off(current: Option<&std::ffi::OsStr>) -> Option<OsString> {
    let off = format!("{TCACHE_COUNT}=0");
    match current.filter(|current| !current.is_empty()) {
        None => Some(OsString::from(off)),
        Some(current) => {
            let sets_it = current
                .to_string_lossy()
                .split(':')
                .any(|setting| setting.split_once('=').is_some_and(|(name, _)| name == TCACHE_COUNT));
            if sets_it {
                return None;
            }
            let mut both = current.to_owned();
            both.push(":");
            both.push(off);
            Some(both)
        }
    }
}

/// Sets the allocator up; call first thing in `main`, before any thread starts.
///
/// - One arena. glibc gives each thread that allocates its own arena (up to
///   eight per CPU), and freed memory in one is reusable only by its threads and
///   hard to give back. Measured with the agent released after 200 scrapes (no
///   extra processes): idle anonymous memory grew 0.6-0.9 MiB with the default
///   arenas, 0.44 MiB with one. The agent allocates little per answer and runs
///   few threads: they rarely wait for the shared arena's lock.
/// - A fixed trim threshold of 128 KiB. glibc raises it after large blocks are
///   freed (up to 64 MiB), and loading the eBPF program frees megabytes on a
///   scratch thread: measured, that thread's arena then kept 132 KiB resident in
///   an idle agent, and none with the threshold fixed. Fixing it also keeps blocks
///   of 128 KiB and more in their own mappings, returned when freed.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Hands the allocator's free pages back to the system. glibc keeps freed memory
/// for the next allocation; after loading the eBPF program (it parses the
/// kernel's BTF, megabytes, all freed once loaded: measured, an idle agent held
/// 25 MiB instead of 6) and when the agent goes idle, that memory would stay
/// resident for nothing. Costs a walk of the free lists: not per answer.
pub fn return_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own
    // free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn the_thread_caches_are_turned_off_beside_the_users_tunables_unless_already_sized() {
        let off = |current: Option<&str>| with_tcache_off(current.map(OsStr::new));
        assert_eq!(off(None), Some("glibc.malloc.tcache_count=0".into()));
        assert_eq!(off(Some("")), Some("glibc.malloc.tcache_count=0".into()));
        assert_eq!(
            off(Some("glibc.malloc.arena_max=2")),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0".into())
        );
        // Already set, by the user or by the restart itself: no restart (no loop).
        assert_eq!(off(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(off(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")), None);
        // A tunable whose name only starts alike is another one.
        assert_eq!(
            off(Some("glibc.malloc.tcache_count_x=1")),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0".into())
        );
    }
}
