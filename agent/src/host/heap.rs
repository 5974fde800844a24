//! The agent's own heap: glibc's allocator, set up so that memory the agent frees
//! goes back to the system instead of staying resident in an idle agent.
//!
//! glibc also keeps, in each thread, a cache of up to seven freed blocks of each
//! small size (tcache), which pins the pages those blocks lie on; it can be
//! turned off only through `GLIBC_TUNABLES` as a program starts, which the agent
//! does not set (it once restarted itself to, a process-level trick). A thread's
//! cache goes back to the shared heap when the thread exits: the blocking pool's
//! threads, which render most answers, exit soon after their last task
//! (`main.rs`), before the agent goes idle and calls [`return_free_pages`].

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
