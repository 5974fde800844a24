//! A per-pid answer cache bounded in size and in age, so a client asking about pid
//! after pid cannot grow the agent's memory (the original keeps at most 64 pids for
//! 60 s). It uses tokio's clock so that tests can pause and advance time.

use std::collections::HashMap;

use tokio::time::{Duration, Instant};

/// At most `capacity` answers, each served for `ttl` after it was stored.
#[derive(Debug)]
pub struct BoundedPidCache<T> {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<u32, Stored<T>>,
}

#[derive(Debug)]
struct Stored<T> {
    at: Instant,
    value: T,
}

impl<T> BoundedPidCache<T> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { capacity, ttl, entries: HashMap::with_capacity(capacity) }
    }

    /// The answer stored for `pid`, unless it is older than the TTL.
    pub fn get(&self, pid: u32) -> Option<&T> {
        self.entries.get(&pid).filter(|stored| stored.at.elapsed() < self.ttl).map(|stored| &stored.value)
    }

    /// Stores an answer, first dropping expired ones and then, when still full, the
    /// oldest. The scan is linear: the capacity is small (tens of pids).
    pub fn insert(&mut self, pid: u32, value: T) {
        if self.capacity == 0 {
            return;
        }
        let ttl = self.ttl;
        self.entries.retain(|_, stored| stored.at.elapsed() < ttl);
        if !self.entries.contains_key(&pid) && self.entries.len() >= self.capacity {
            self.evict_oldest();
        }
        self.entries.insert(pid, Stored { at: Instant::now(), value });
    }

    /// Drops every entry and the table's memory.
    pub fn clear(&mut self) {
        self.entries = HashMap::new();
    }

    pub fn remove(&mut self, pid: u32) -> Option<T> {
        self.entries.remove(&pid).map(|stored| stored.value)
    }

    /// Entries held, expired ones included until the next insert.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self.entries.iter().min_by_key(|(_, stored)| stored.at).map(|(&pid, _)| pid);
        if let Some(pid) = oldest {
            self.entries.remove(&pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_ttl() {
        let mut cache = BoundedPidCache::new(4, Duration::from_secs(60));
        cache.insert(7, "seven");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.get(7), Some(&"seven"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(7), None);
        cache.insert(8, "eight");
        assert_eq!(cache.len(), 1, "the expired answer was dropped on insert");
    }

    #[tokio::test(start_paused = true)]
    async fn walking_many_pids_keeps_only_the_newest() {
        let mut cache = BoundedPidCache::new(64, Duration::from_secs(60));
        for pid in 0..10_000 {
            cache.insert(pid, pid);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(cache.len(), 64);
        assert_eq!(cache.get(10_000 - 64), Some(&(10_000 - 64)));
        assert_eq!(cache.get(10_000 - 65), None);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshing_a_pid_evicts_nothing_and_restarts_its_ttl() {
        let mut cache = BoundedPidCache::new(2, Duration::from_secs(10));
        cache.insert(1, 'a');
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.insert(2, 'b');
        tokio::time::advance(Duration::from_secs(8)).await;
        cache.insert(1, 'A');
        assert_eq!((cache.get(1), cache.get(2)), (Some(&'A'), Some(&'b')));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((cache.get(1), cache.get(2)), (Some(&'A'), None));
        cache.insert(3, 'c');
        assert_eq!((cache.get(1), cache.get(3), cache.len()), (Some(&'A'), Some(&'c'), 2));
        assert_eq!(cache.remove(1), Some('A'));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_capacity_stores_nothing() {
        let mut cache = BoundedPidCache::new(0, Duration::from_secs(10));
        cache.insert(1, ());
        assert!(cache.is_empty());
    }
}
