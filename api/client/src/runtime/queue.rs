//! A work queue as client-go's: a key is queued at most once, never processed by two workers at
//! once (a key added while it is processed is queued again when `done`), and failures retry
//! with per-key exponential back-off.
//!
//! ```text
//!   add(k) ──► dirty ∪ queue ──get()──► processing ──done(k)──► (queued again if dirty)
//!   add_rate_limited(k): after base·2^failures (capped), then add(k); forget(k) resets
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
    /// The earliest pending delayed add per key: later ones are dropped, so periodic
    /// re-checks do not pile up timers.
    waiting: HashMap<String, tokio::time::Instant>,
    shutdown: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    ready: Notify,
    base: Duration,
    max: Duration,
}

impl WorkQueue {
    /// client-go's controller default is 5 ms doubling to 1000 s; ours caps at 5 min.
    pub fn new() -> Arc<Self> {
        Self::with_backoff(Duration::from_millis(5), Duration::from_secs(300))
    }

    pub fn with_backoff(base: Duration, max: Duration) -> Arc<Self> {
        Arc::new(WorkQueue { state: Mutex::default(), ready: Notify::new(), base, max })
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut st = self.state.lock().expect("queue lock");
        if st.shutdown || !st.dirty.insert(key.clone()) {
            return;
        }
        if !st.processing.contains(&key) {
            st.queue.push_back(key);
            drop(st);
            self.ready.notify_one();
        }
    }

    /// Adds `key` after `delay` (a periodic re-check, a timeout coming due).
    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, delay: Duration) {
        let (key, me) = (key.into(), Arc::downgrade(self));
        if delay.is_zero() {
            return self.add(key);
        }
        let at = tokio::time::Instant::now() + delay;
        {
            let mut st = self.state.lock().expect("queue lock");
            match st.waiting.get(&key) {
                Some(t) if *t <= at => return,
                _ => st.waiting.insert(key.clone(), at),
            };
        }
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(q) = Weak::upgrade(&me) {
                let mine = {
                    let mut st = q.state.lock().expect("queue lock");
                    let mine = st.waiting.get(&key) == Some(&at);
                    if mine {
                        st.waiting.remove(&key);
                    }
                    mine
                };
                if mine {
                    q.add(key);
                }
            }
        });
    }

    /// Adds `key` after its back-off, which doubles with every failure until `forget`.
    pub fn add_rate_limited(self: &Arc<Self>, key: impl Into<String>) {
        let key = key.into();
        let n = {
            let mut st = self.state.lock().expect("queue lock");
            let n = st.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        self.add_after(key, self.backoff(n));
    }

    pub fn backoff(&self, failures: u32) -> Duration {
        self.base.saturating_mul(1u32 << failures.min(30)).min(self.max)
    }

    pub fn forget(&self, key: &str) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.state.lock().expect("queue lock").failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process; `None` once shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.state.lock().expect("queue lock");
                if st.shutdown {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    st.dirty.remove(&key);
                    st.processing.insert(key.clone());
                    if !st.queue.is_empty() {
                        // Pass the wake-up on: another worker may take the next key.
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &str) {
        let mut st = self.state.lock().expect("queue lock");
        st.processing.remove(key);
        if st.dirty.contains(key) {
            st.queue.push_back(key.to_string());
            drop(st);
            self.ready.notify_one();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().expect("queue lock").queue.len()
    }

    #[cfg(test)]
    pub(crate) fn shutdown(&self) {
        self.state.lock().expect("queue lock").shutdown = true;
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_is_processed_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await.as_deref(), Some("a"));
        assert_eq!(q.get().await.as_deref(), Some("b"));
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn a_key_added_while_processing_is_queued_again_after_done() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.get().await.unwrap();
        q.add("a");
        // Not handed to a second worker while the first holds it.
        assert_eq!(q.len(), 0);
        q.done(&k);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await.as_deref(), Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::with_backoff(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(q.backoff(0), Duration::from_millis(100));
        assert_eq!(q.backoff(3), Duration::from_millis(800));
        assert_eq!(q.backoff(10), Duration::from_secs(1));
        q.add_rate_limited("a");
        q.add_rate_limited("a");
        assert_eq!(q.failures("a"), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(q.len(), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(q.len(), 1);
        q.forget("a");
        assert_eq!(q.failures("a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_keep_only_the_earliest_timer() {
        let q = WorkQueue::new();
        q.add_after("a", Duration::from_secs(5));
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(q.len(), 1);
        let k = q.get().await.unwrap();
        q.done(&k);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(q.len(), 0, "the superseded timers did not fire");
    }

    #[tokio::test]
    async fn shutdown_wakes_waiting_workers() {
        let q = WorkQueue::new();
        let q2 = q.clone();
        let w = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(w.await.unwrap(), None);
    }
}
