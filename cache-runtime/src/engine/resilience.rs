//! What surrounds a decorated call's body beyond fail-open:
//!
//! - fail-safe: entries are kept past their TTL (timed envelopes record when they stop
//!   being fresh); when the body fails (an uncacheable result, a panic) or is slow (soft
//!   timeout), the last good value is returned instead;
//! - refresh ahead: a hit late in the TTL starts one background refresh of that key;
//! - the distributed lock: a miss takes a short lock in the store, so one process runs the
//!   body and the others wait for its value (bounded by the lease) before running their own.
//!
//! Finishing a body (store, publish to followers, release the lock) is [`Finish`], so a
//! body that outlives its caller (soft timeout, refresh ahead) finishes the same way in a
//! background task. Only bodies that own their data can do that: [`Detached`] sites
//! (checked at compile time), the others are [`Attached`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

use super::returns::Returns;
use super::site::{BoundRef, Selected, Site};
use super::unix_ms;
use crate::backend::{Store, Write};
use crate::cache::Cache;
use crate::error::CacheError;
use crate::flight::{FlightState, Leader};
use crate::shape::Shape;

/// Whether a call's body may finish after the call returned.
pub(crate) trait Detach<R, Fut> {
    /// Runs `fut` to its end in a background task and finishes it there; hands both back
    /// when this site cannot (its body borrows from the caller, or no Tokio runtime).
    /// `refresh`: a refresh ahead (takes the distributed lock first, when configured).
    fn detach<S: Returns<R>>(
        fut: Pin<Box<Fut>>,
        finish: Finish,
        refresh: bool,
    ) -> Option<(Pin<Box<Fut>>, Finish)>;
}

/// A body that borrows from its caller: it always finishes inside the call.
pub(crate) struct Attached;

/// A body that owns its data (`Send + 'static`): it may finish in the background.
pub(crate) struct Detached;

impl<R, Fut> Detach<R, Fut> for Attached {
    fn detach<S: Returns<R>>(
        fut: Pin<Box<Fut>>,
        finish: Finish,
        _refresh: bool,
    ) -> Option<(Pin<Box<Fut>>, Finish)> {
        Some((fut, finish))
    }
}

impl<R, Fut> Detach<R, Fut> for Detached
where
    R: Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
{
    fn detach<S: Returns<R>>(
        fut: Pin<Box<Fut>>,
        finish: Finish,
        refresh: bool,
    ) -> Option<(Pin<Box<Fut>>, Finish)> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some((fut, finish));
        };
        finish.bound.counters.refresh();
        runtime.spawn(async move {
            let mut finish = finish;
            if refresh && !finish.take_lock_for_refresh().await {
                tracing::debug!(target: "cache_runtime::store", key = %finish.key, "refresh skipped: another process holds the lock");
                return;
            }
            let result = fut.await;
            let _ = finish.complete::<S, R>(result).await;
        });
        None
    }
}

/// Sleeps `d`; `false` when there is no timer to sleep on (outside Tokio, or a runtime
/// built without timers).
async fn pause(d: Duration) -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    match std::panic::catch_unwind(|| tokio::time::sleep(d)) {
        Ok(sleep) => {
            sleep.await;
            true
        }
        Err(_) => false,
    }
}

/// Runs `fut`, giving up after `limit`. Without a timer (outside Tokio) it just runs.
pub(crate) async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Some(fut.await);
    }
    // A runtime without timers panics on `sleep`: then no soft timeout, rather than a
    // panic in the caller.
    let Ok(sleep) = std::panic::catch_unwind(|| tokio::time::sleep(limit)) else {
        return Some(fut.await);
    };
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = sleep => None,
    }
}

/// Whether a hit on an entry fresh until `fresh_until` is in the last part of its TTL.
pub(crate) fn refresh_due(fresh_until: u64, ttl: Duration, fraction: f64) -> bool {
    let remaining = fresh_until.saturating_sub(unix_ms()) as f64;
    remaining < ttl.as_millis() as f64 * (1.0 - fraction)
}

/// Returns a stale value, counting and logging it.
pub(crate) fn serve_stale<S: Returns<R>, R>(
    site: &Site,
    finish_key: &str,
    bound: &BoundRef<'_>,
    value: S::Stored,
    why: &'static str,
) -> R {
    bound.counters.stale_served();
    crate::metrics::spans::stale();
    // Once per function per 10 s: during an outage every call would say it.
    static QUIET_MS: u64 = 10_000;
    let now = unix_ms();
    let last = site.stale_logged.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= QUIET_MS
        && site
            .stale_logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(target: "cache_runtime::store", function = site.function, key = finish_key, why, "serving the last good value past its TTL (fail-safe); see the stale_served counter");
    } else {
        tracing::debug!(target: "cache_runtime::store", key = finish_key, why, "serving the last good value past its TTL (fail-safe)");
    }
    S::rebuild(value)
}

/// What finishing a body needs: where to store, whom to tell, which lock to release.
pub(crate) struct Finish {
    pub(crate) cache: Selected,
    pub(crate) bound: BoundRef<'static>,
    pub(crate) key: String,
    pub(crate) user: Option<String>,
    /// Tags to list the entry under.
    pub(crate) tags: Vec<String>,
    pub(crate) shape: Shape,
    pub(crate) leader: Leader<'static>,
    /// `(lock key, token)` while this body holds the distributed lock.
    pub(crate) lock: Option<(String, String)>,
    /// The read failed on a connection fault: do not wait out a second timeout.
    pub(crate) store: bool,
    /// When the body started (`cache_body_duration_seconds`).
    pub(crate) body_start: crate::counters::Stamp,
}

impl Finish {
    /// The body failed: followers are told to do their own work, the lock is released.
    pub(crate) async fn fail(mut self) {
        self.leader.publish(FlightState::NotCached);
        self.unlock().await;
    }

    /// Stores the cacheable part of `result` (and tells followers), releases the lock, and
    /// returns `result`.
    pub(crate) async fn complete<S: Returns<R>, R>(mut self, result: R) -> R {
        self.bound.counters.body_took(self.body_start);
        let Some(value) = S::cacheable(&result) else {
            tracing::debug!(target: "cache_runtime::store", key = %self.key, "skip: result not cacheable");
            self.fail().await;
            return result;
        };
        let r = self.bound.resilience;
        let fresh_until = r.timed.then(|| {
            unix_ms().saturating_add(u64::try_from(self.bound.ttl.as_millis()).unwrap_or(u64::MAX))
        });
        let cache: &Cache = &self.cache;
        let Ok(bytes) = cache.encode_entry(
            &self.bound.counters,
            &self.key,
            value,
            &self.shape,
            fresh_until,
        ) else {
            self.leader.publish(FlightState::NotCached);
            self.unlock().await;
            return result;
        };
        // Published whether or not anyone waits yet: callers arriving during the store below
        // join this flight and get the value instead of running the body again.
        self.leader
            .publish(FlightState::Done(bytes.as_slice().into()));
        if !self.store {
            tracing::debug!(target: "cache_runtime::store", key = %self.key, "skip store: the read just failed");
        } else if !self.leader.is_current() {
            tracing::debug!(target: "cache_runtime::store", key = %self.key, "skip store: invalidated while the function ran");
        } else {
            let index = self
                .user
                .as_deref()
                .map(|user| cache.keys().user_index_escaped(user));
            let tags: Vec<String> = self
                .tags
                .iter()
                .map(|t| cache.keys().tag_index(t))
                .collect();
            // Kept past the TTL for fail-safe; the envelope says when it stops being fresh.
            let write = Write {
                key: &self.key,
                value: &bytes,
                ttl: Some(self.bound.ttl.saturating_add(r.fail_safe)),
                index: index.as_deref(),
                tags: &tags,
            };
            if let Err(e) = cache.write(&self.bound.counters, write).await {
                if matches!(e, CacheError::Unavailable) {
                    tracing::debug!(target: "cache_runtime::store", key = %self.key, "skip store: cache bypassed");
                } else {
                    tracing::warn!(target: "cache_runtime::store", key = %self.key, error = %e, "cache write failed; the result is returned uncached");
                }
            }
        }
        // Stored first, then released: a waiting process that sees the lock gone finds the value.
        self.unlock().await;
        result
    }

    async fn unlock(&mut self) {
        if let Some((key, token)) = self.lock.take() {
            if let Err(e) = self.cache.inner.backend.unlock(&key, &token).await {
                tracing::debug!(target: "cache_runtime::store", key = %key, error = %e, "lock not released (it expires by its lease)");
            }
        }
    }

    /// A refresh ahead takes the lock once, without waiting: if another process holds it,
    /// that process is already refreshing.
    async fn take_lock_for_refresh(&mut self) -> bool {
        let Some(lease) = self.bound.resilience.lock_lease else {
            return true;
        };
        if !self.cache.inner.backend.shared_by_processes() {
            return true;
        }
        let key = lock_key(&self.key);
        let token = token();
        match self.cache.inner.backend.try_lock(&key, &token, lease).await {
            Ok(true) => {
                self.lock = Some((key, token));
                true
            }
            Ok(false) | Err(_) => false,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Dropped without `complete` (a panicking body, a cancelled call): release the lock
        // now rather than make other processes wait out the lease.
        if let Some((key, token)) = self.lock.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let cache = self.cache.clone();
                runtime.spawn(async move {
                    let _ = cache.inner.backend.unlock(&key, &token).await;
                });
            }
        }
    }
}

/// The lock of one entry: next to it, in its hash slot (`{user:…}` tags included).
fn lock_key(key: &str) -> String {
    format!("{key}:__lock")
}

/// A token no other lock owner has: this process, the time, a counter.
fn token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&unix_ms().to_le_bytes());
    h.update(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(&(std::ptr::from_ref(&NEXT) as usize).to_le_bytes());
    let digest = h.finalize();
    digest.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How a miss got on with the distributed lock.
pub(crate) enum Locked<T> {
    /// This process runs the body: `(lock key, token)`.
    Taken(String, String),
    /// Another process stored the value meanwhile.
    Value(Arc<[u8]>, T),
    /// Waited `wait` without a value (the owner is slow or died): go on without it.
    TimedOut,
    /// The store cannot lock right now: go on without it.
    Unavailable,
}

/// Takes the lock of `key`, or waits (at most `wait`) for the process that holds it to
/// store the value; retakes the lock when it is released without a value (its owner's body
/// failed) or its lease ran out (its owner died).
pub(crate) async fn lock_or_wait<T: Serialize + DeserializeOwned>(
    cache: &Cache,
    key: &str,
    shape: &Shape,
    lease: Duration,
    wait: Duration,
    on_wait: impl FnOnce(),
) -> Locked<T> {
    let backend = &cache.inner.backend;
    let lock = lock_key(key);
    let token = token();
    match backend.try_lock(&lock, &token, lease).await {
        Ok(true) => {
            let locked = taken_unless_stored(cache, key, shape, lock, token).await;
            if matches!(locked, Locked::Value(..)) {
                // Answered by another process's run, like a wait that found the value.
                on_wait();
            }
            return locked;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(target: "cache_runtime::store", key, error = %e, "distributed lock unavailable; running the function");
            return Locked::Unavailable;
        }
    }
    on_wait();
    tracing::debug!(target: "cache_runtime::store", key, "another process is running this call; waiting for its value");
    let start = Instant::now();
    let mut step = Duration::from_millis(5);
    loop {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Locked::TimedOut;
        }
        if !pause(step.min(left)).await {
            // No timer: waiting is impossible.
            return Locked::Unavailable;
        }
        step = (step * 2).min(Duration::from_millis(50));
        // The owner stores before it releases: a fresh value means it is done.
        if let Some((bytes, value)) = fresh_value(cache, key, shape).await {
            return Locked::Value(bytes, value);
        }
        match backend.try_lock(&lock, &token, lease).await {
            Ok(true) => return taken_unless_stored(cache, key, shape, lock, token).await,
            Ok(false) => {}
            Err(_) => return Locked::Unavailable,
        }
    }
}

/// A fresh value of `key` in the store, decoded.
async fn fresh_value<T: Serialize + DeserializeOwned>(
    cache: &Cache,
    key: &str,
    shape: &Shape,
) -> Option<(Arc<[u8]>, T)> {
    let bytes = cache.inner.backend.get(key).await.ok()??;
    let (value, until) = cache.codec().decode_timed::<T>(&bytes, shape).ok()?;
    until
        .is_none_or(|u| u > unix_ms())
        .then(|| (bytes.into_shared(), value))
}

/// The lock just taken, unless the value is stored already: a caller whose read missed
/// just before another process stored and released would otherwise run the body a second
/// time. The owner stores before it releases, so a lock taken after a release sees the
/// store. Then the lock is given back and the stored value used.
async fn taken_unless_stored<T: Serialize + DeserializeOwned>(
    cache: &Cache,
    key: &str,
    shape: &Shape,
    lock: String,
    token: String,
) -> Locked<T> {
    let Some((bytes, value)) = fresh_value(cache, key, shape).await else {
        return Locked::Taken(lock, token);
    };
    if let Err(e) = cache.inner.backend.unlock(&lock, &token).await {
        // Waiters find the value at their next look; the lease frees the lock.
        tracing::debug!(target: "cache_runtime::store", key, error = %e, "could not release a lock taken after the value was stored");
    }
    Locked::Value(bytes, value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{lock_or_wait, Locked};
    use crate::cache::Cache;
    use crate::config::CacheConfig;
    use crate::counters::Counters;
    use crate::shape::shape_of;

    /// A caller whose read missed just before another process stored its value and
    /// released the lock takes the free lock; it must use the stored value, not run the
    /// body a second time. (The embedded store's lock is always free: the race, settled.)
    #[tokio::test]
    async fn a_lock_taken_after_the_value_was_stored_yields_the_value() {
        let cache = Cache::new(CacheConfig::default()).expect("embedded cache");
        let shape = shape_of::<u32>();
        let counters = Counters::new("n");
        let (key, lease) = ("p:n:k", Duration::from_secs(1));
        let mut waited = false;
        let locked = lock_or_wait::<u32>(&cache, key, &shape, lease, lease, || waited = true);
        assert!(
            matches!(locked.await, Locked::Taken(..)),
            "nothing stored: run"
        );
        assert!(!waited);
        cache
            .write_value(&counters, key, (&7u32, &shape), None, None, &[])
            .await
            .expect("stored");
        let locked = lock_or_wait::<u32>(&cache, key, &shape, lease, lease, || waited = true);
        assert!(
            matches!(locked.await, Locked::Value(_, 7)),
            "stored: use it"
        );
        assert!(waited, "counted as answered by another run");
    }
}
