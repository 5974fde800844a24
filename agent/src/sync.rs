//! Locking shared by the collectors and the service.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, taking the data even if a panicking thread poisoned it: every
/// value the agent keeps behind a mutex (collectors, caches, the CPU-time source)
/// is valid on its own, and one panicked collection must not stop all later ones.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
