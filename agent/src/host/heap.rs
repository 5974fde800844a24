//! The agent's own heap.

/// Hands the allocator's free pages back to the system. glibc keeps memory freed
/// by the program in its arenas (one per thread that allocated, up to eight per
/// CPU) for the next allocation; once the agent has let go of what it kept for its
/// watchers, that memory would stay resident for nothing until they come back.
/// Costs a walk of the arenas' free lists: call it when going idle, not per answer.
pub fn return_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own
    // free lists, under the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
