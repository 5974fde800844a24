//! A TTL cache of collected snapshots that also makes concurrent requests share
//! one collection: collectors are expensive (a processes scan reads every
//! `/proc/PID/stat`), and fifty clients polling at once must not scan fifty times.
//! Each snapshot keeps its renderings, one per request form, so those clients also
//! share one encoding and one gzip.

use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::time::Duration;

use tokio::time::Instant;

use crate::collect::{Collect, CollectError};
use crate::protocol::frame::Frame;
use crate::protocol::request::Form;

/// A value with its renderings, each made once, by the first request that needs it.
#[derive(Debug)]
pub struct Rendered<T> {
    value: T,
    /// One rendering per request form (see [`Form`]).
    frames: [OnceLock<Frame>; 2],
}

impl<T> Rendered<T> {
    pub fn new(value: T) -> Self {
        Self { value, frames: Default::default() }
    }

    pub fn value(&self) -> &T {
        &self.value
    }

    /// The frame for `form`, rendered by `render` unless an earlier request did.
    pub fn frame(&self, form: Form, render: impl FnOnce(&T) -> Frame) -> Frame {
        let slot = match form {
            Form::Command => &self.frames[0],
            Form::Json => &self.frames[1],
        };
        slot.get_or_init(|| render(&self.value)).clone()
    }
}

/// A collection's outcome with its renderings.
pub type Collected<S> = Arc<Rendered<Result<S, CollectError>>>;

pub struct Cached<C: Collect> {
    ttl: Duration,
    collector: Arc<Mutex<C>>,
    /// The last collection and when it finished.
    last: tokio::sync::Mutex<Option<(Instant, Collected<C::Snapshot>)>>,
}

impl<C: Collect> Cached<C> {
    pub fn new(collector: C, ttl: Duration) -> Self {
        Self { ttl, collector: Arc::new(Mutex::new(collector)), last: tokio::sync::Mutex::new(None) }
    }

    /// The cached collection when it is younger than the TTL or was made while this
    /// request waited; otherwise a fresh one.
    pub async fn get(&self) -> Collected<C::Snapshot> {
        self.get_within(self.ttl).await
    }

    /// The same with the age bounded by `max_age` too, for readers that need
    /// fresher values than the TTL gives (a scrape: see `service::prometheus`).
    pub async fn get_fresh(&self, max_age: Duration) -> Collected<C::Snapshot> {
        self.get_within(self.ttl.min(max_age)).await
    }

    async fn get_within(&self, max_age: Duration) -> Collected<C::Snapshot> {
        let asked_at = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((finished_at, collected)) = last.as_ref()
            && (*finished_at >= asked_at || asked_at.duration_since(*finished_at) < max_age)
        {
            return Arc::clone(collected);
        }
        let result = match self.collect_inline() {
            Some(result) => result,
            None => self.collect_blocking().await,
        };
        let collected = Arc::new(Rendered::new(result));
        *last = Some((Instant::now(), Arc::clone(&collected)));
        collected
    }

    /// Forgets the last collection (the next request collects anew) and lets the
    /// collector drop what it keeps only for speed. Blocks on a running
    /// collection: call it off the async workers.
    pub fn release(&self) {
        self.last.blocking_lock().take();
        crate::sync::lock(&self.collector).release();
    }

    /// The collection, run here when the collector says it cannot wait.
    fn collect_inline(&self) -> Option<Result<C::Snapshot, CollectError>> {
        // A collection still running on the blocking pool (its requester gone)
        // holds the collector; waiting for it here would stall the async worker.
        let mut collector = match self.collector.try_lock() {
            Ok(collector) => collector,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        collector.never_waits().then(|| collector.collect())
    }

    async fn collect_blocking(&self) -> Result<C::Snapshot, CollectError> {
        let collector = Arc::clone(&self.collector);
        let collected = tokio::task::spawn_blocking(move || {
            let mut collector = crate::sync::lock(&collector);
            collector.collect()
        })
        .await;
        collected.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a collector panicked");
            Err(CollectError::Aborted(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);

    impl Collect for Counting {
        type Snapshot = usize;

        fn collect(&mut self) -> Result<usize, CollectError> {
            Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
        }
    }

    fn cached(ttl: Duration) -> (Arc<Cached<Counting>>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        (Arc::new(Cached::new(Counting(Arc::clone(&count)), ttl)), count)
    }

    /// The collection number a cached answer carries.
    fn number(collected: &Collected<usize>) -> usize {
        *collected.value().as_ref().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_until_the_ttl_passes() {
        let (cache, count) = cached(Duration::from_millis(250));
        assert_eq!(number(&cache.get().await), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(number(&cache.get().await), 1);
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(number(&cache.get().await), 2);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    /// Collects on the caller's thread when allowed to.
    struct Inline(Arc<AtomicUsize>);

    impl Collect for Inline {
        type Snapshot = String;

        fn collect(&mut self) -> Result<String, CollectError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(format!("{:?}", std::thread::current().id()))
        }
        fn never_waits(&mut self) -> bool {
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_reader_bounds_the_age_below_the_ttl() {
        let (cache, count) = cached(Duration::from_secs(1));
        assert_eq!(number(&cache.get().await), 1);
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(number(&cache.get_fresh(Duration::from_millis(50)).await), 1, "young enough for both");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(number(&cache.get().await), 1, "within the TTL");
        assert_eq!(number(&cache.get_fresh(Duration::from_millis(50)).await), 2, "older than the bound");
        // The fresh collection serves the TTL readers too.
        assert_eq!(number(&cache.get().await), 2);
        // A bound above the TTL changes nothing.
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(number(&cache.get_fresh(Duration::from_secs(5)).await), 3);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn collectors_that_never_wait_run_on_the_caller_unless_busy() {
        let count = Arc::new(AtomicUsize::new(0));
        let cache = Cached::new(Inline(Arc::clone(&count)), Duration::ZERO);
        let here = format!("{:?}", std::thread::current().id());
        assert_eq!(cache.get().await.value().as_ref().unwrap(), &here);
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
            assert_eq!(number(&cache.get().await), expected);
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
            assert_eq!(number(&waiter.await.unwrap()), 1);
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_rendering_per_form() {
        let (cache, _) = cached(Duration::from_secs(60));
        let renders = Arc::new(AtomicUsize::new(0));
        let ask = |form: Form| {
            let (cache, renders) = (Arc::clone(&cache), Arc::clone(&renders));
            tokio::spawn(async move {
                cache.get().await.frame(form, |value| {
                    renders.fetch_add(1, Ordering::SeqCst);
                    Frame::text(format!("{form:?} {}", value.as_ref().unwrap()))
                })
            })
        };
        let answers: Vec<_> = (0..50).map(|i| ask(if i % 2 == 0 { Form::Command } else { Form::Json })).collect();
        for (i, answer) in answers.into_iter().enumerate() {
            let expected = if i % 2 == 0 { "Command 1" } else { "Json 1" };
            assert_eq!(answer.await.unwrap(), Frame::text(expected));
        }
        assert_eq!(renders.load(Ordering::SeqCst), 2, "one rendering per form for fifty requests");
    }

    struct Panicking;

    impl Collect for Panicking {
        type Snapshot = ();

        fn collect(&mut self) -> Result<(), CollectError> {
            panic!("a collector bug")
        }
    }

    #[tokio::test]
    async fn a_panicking_collector_gives_an_error_not_a_dead_agent() {
        let cache = Cached::new(Panicking, Duration::ZERO);
        let collected = cache.get().await;
        let error = collected.value().as_ref().unwrap_err();
        assert!(matches!(error, CollectError::Aborted(e) if e.is_panic()), "{error:?}");
        assert_eq!(error.to_string(), "collection failed", "the error answer's text");
    }
}
