//! A TTL cache of ready-to-send answers that also makes concurrent requests share
//! one collection: collectors are expensive (a processes scan reads every
//! `/proc/PID/stat`), and fifty clients polling at once must not scan fifty times.

use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use hyper_tungstenite::tungstenite::Message;
use tokio::time::Instant;

/// Something that collects one kind of answer. Runs on a blocking thread, unless
/// it says it never waits.
pub trait Collect: Send + 'static {
    fn collect(&mut self) -> Message;

    /// True when the next collection only reads procfs, sysfs and memory, a few
    /// microseconds, and cannot wait on a device, a disk or the network. Such a
    /// collection runs on the async worker itself: handing it to the blocking pool
    /// costs two thread wake-ups, more CPU than the collection. Asked before each
    /// collection (what a collector reads may change, as mounts do); it must itself
    /// never wait.
    fn never_waits(&mut self) -> bool {
        false
    }
}

pub struct Cached<C> {
    ttl: Duration,
    collector: Arc<Mutex<C>>,
    /// The last answer and when its collection finished.
    last: tokio::sync::Mutex<Option<(Instant, Message)>>,
}

impl<C: Collect> Cached<C> {
    pub fn new(collector: C, ttl: Duration) -> Self {
        Self { ttl, collector: Arc::new(Mutex::new(collector)), last: tokio::sync::Mutex::new(None) }
    }

    /// The collector, for a reader that needs its typed values rather than the
    /// framed answer (the Prometheus scrape).
    pub fn collector(&self) -> Arc<Mutex<C>> {
        Arc::clone(&self.collector)
    }

    /// The cached answer when it is younger than the TTL or was collected while this
    /// request waited; otherwise a fresh collection.
    pub async fn get(&self) -> Message {
        let asked_at = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((finished_at, frame)) = last.as_ref()
            && (*finished_at >= asked_at || asked_at.duration_since(*finished_at) < self.ttl)
        {
            return frame.clone();
        }
        let frame = match self.collect_inline() {
            Some(frame) => frame,
            None => self.collect_blocking().await,
        };
        *last = Some((Instant::now(), frame.clone()));
        frame
    }

    /// The collection, run here when the collector says it cannot wait.
    fn collect_inline(&self) -> Option<Message> {
        // A collection still running on the blocking pool (its requester gone)
        // holds the collector; waiting for it here would stall the async worker.
        let mut collector = match self.collector.try_lock() {
            Ok(collector) => collector,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        collector.never_waits().then(|| collector.collect())
    }

    async fn collect_blocking(&self) -> Message {
        let collector = Arc::clone(&self.collector);
        let collected = tokio::task::spawn_blocking(move || {
            let mut collector = crate::sync::lock(&collector);
            collector.collect()
        })
        .await;
        collected.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a collector panicked");
            Message::text(r#"{"error":"collection failed"}"#)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    impl Collect for Counting {
        fn collect(&mut self) -> Message {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Message::text(n.to_string())
        }
    }

    fn cached(ttl: Duration) -> (Arc<Cached<Counting>>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        (Arc::new(Cached::new(Counting(Arc::clone(&count)), ttl)), count)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_until_the_ttl_passes() {
        let (cache, count) = cached(Duration::from_millis(250));
        assert_eq!(cache.get().await, Message::text("1"));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(cache.get().await, Message::text("1"));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(cache.get().await, Message::text("2"));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    /// Collects on the caller's thread when allowed to.
    struct Inline(Arc<AtomicUsize>);

    impl Collect for Inline {
        fn collect(&mut self) -> Message {
            self.0.fetch_add(1, Ordering::SeqCst);
            Message::text(format!("{:?}", std::thread::current().id()))
        }
        fn never_waits(&mut self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn collectors_that_never_wait_run_on_the_caller_unless_busy() {
        let count = Arc::new(AtomicUsize::new(0));
        let cache = Cached::new(Inline(Arc::clone(&count)), Duration::ZERO);
        let here = format!("{:?}", std::thread::current().id());
        assert_eq!(cache.get().await, Message::text(here.clone()));
        // A collection left running on the blocking pool holds the collector.
        let held = Arc::clone(&cache.collector);
        let guard = held.lock().unwrap();
        assert!(cache.collect_inline().is_none(), "a busy collector is not waited for on the worker");
        drop(guard);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_collects_for_every_request_in_sequence() {
        let (cache, count) = cached(Duration::ZERO);
        for expected in 1..=3 {
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(cache.get().await, Message::text(expected.to_string()));
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_collection() {
        let (cache, count) = cached(Duration::ZERO);
        // Hold the cache so all requests queue up behind one collection.
        let guard = cache.last.lock().await;
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn({
                    let cache = Arc::clone(&cache);
                    async move { cache.get().await }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Message::text("1"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
