//! A decorated call: a hit returns the stored value; a miss runs the body once per key in
//! this process (followers get the leader's value) and stores the cacheable part of its
//! result.
//!
//! When not to store: the result is not cacheable (an `Err`, a `None`), it does not
//! encode or is too large, the read just failed on a connection fault (the store would
//! most likely wait out a second timeout), or an invalidation ended the flight while the
//! body ran (the result may predate it).

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt as _;
use tracing::Instrument as _;

use super::copier::Copier;
use super::read::Entry;
use super::resilience::{self, Detach, Finish, Locked};
use super::site::{BoundRef, Selected, Site};
use crate::backend::Store as _;
use crate::counters::Stamp;
use crate::error::CacheError;
use crate::flight::{self, FlightState, Role};
use crate::key::{join_call, ArgsHash, CallArgs};
use crate::l1::Ident;
use crate::shape::{Keyed, Shape};

pub(crate) use super::returns::{OkOnly, Plain, Returns, SomeOnly};

/// The identity of one call: the user segment (escaped), the serialised arguments (`None`
/// when one could not be serialised: then the call is not cached), and the site's key and
/// shape for the stored type (the shape is recorded in the value's envelope).
pub(crate) struct CallKey {
    pub(crate) user: Option<String>,
    /// The tags the entry is stored with (`tags = [...]`, built from the arguments).
    pub(crate) tags: Vec<String>,
    pub(crate) args: Option<CallArgs>,
    pub(crate) keyed: &'static Keyed,
}

impl CallKey {
    /// The argument hash (BLAKE3): only a call that needs its key text computes it (an L1
    /// hit is found by [`Self::ident`]).
    pub(crate) fn hash(&self) -> Option<ArgsHash> {
        Some(self.args.as_ref()?.hash(&self.keyed.key))
    }

    /// What the L1 finds this call's entry by.
    pub(crate) fn ident(&self) -> Option<Ident<'_>> {
        Some(Ident {
            site: std::ptr::from_ref(self.keyed) as usize,
            args: self.args.as_ref()?.as_slice(),
        })
    }

    pub(crate) fn shape(&self) -> &Shape {
        &self.keyed.shape
    }
}

/// Runs one decorated call. `D` says whether the body may finish after the call returned
/// ([`Detached`](super::resilience::Detached): soft timeouts and refresh ahead need it).
/// `copier`: L1 hits clone a kept decoded copy (stored types that allow it).
///
/// Not an `async fn`: an L1 hit is answered here, and the future returned for it holds
/// only the value. The rest of the call (store read, miss, resilience) is a future of
/// several hundred bytes that its caller would move whole on every call, hit or not; it is
/// boxed, for the calls that go there. Those moves were a tenth of an L1 hit.
pub(crate) fn run<S, R, Fut, D>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<S::Stored>>,
    body: Fut,
) -> impl Future<Output = R>
where
    S: Returns<R>,
    Fut: Future<Output = R>,
    D: Detach<R, Fut>,
{
    use futures_util::future::Either;
    // The call's span (disabled unless someone listens at DEBUG): the parent of the body's
    // spans and of the store's round trips.
    let span = crate::metrics::spans::call(site);
    if !span.is_disabled() {
        let full = run_in::<S, R, Fut, D>(site, site.cache(), key, copier, body, span.clone());
        return Either::Right(Either::Right(Box::pin(full.instrument(span))));
    }
    let cache = match l1_hit::<S::Stored>(site, &key, copier) {
        Ok(value) => {
            return Either::Left(async move {
                // An L1 hit never waits: a loop of them must still let other tasks run.
                tokio::task::consume_budget().await;
                S::rebuild(value)
            });
        }
        Err(cache) => cache,
    };
    // Nobody listens: no enter/exit around every poll (a twentieth of an L1 hit).
    Either::Right(Either::Left(Box::pin(run_in::<S, R, Fut, D>(
        site, cache, key, copier, body, span,
    ))))
}

/// The value of a fresh L1 hit that needs nothing more (no refresh ahead due), counted;
/// else the call's cache (found once), for the whole way, which reads the L1 again.
/// Found by the call's [`Ident`]: neither the argument hash nor the key text is computed.
fn l1_hit<T: serde::Serialize + serde::de::DeserializeOwned>(
    site: &'static Site,
    key: &CallKey,
    copier: Option<Copier<T>>,
) -> Result<T, Option<Selected>> {
    let Some(cache) = site.cache() else {
        return Err(None);
    };
    let (Some(ident), Some(_)) = (key.ident(), cache.l1()) else {
        return Err(Some(cache));
    };
    let bound = site.bound(&cache);
    let Some((value, fresh_until)) = cache.l1_fresh(&ident, key.shape(), copier) else {
        return Err(Some(cache));
    };
    if let (Some(fraction), Some(until)) = (bound.resilience.refresh_ahead, fresh_until) {
        if resilience::refresh_due(until, bound.ttl, fraction) {
            return Err(Some(cache));
        }
    }
    bound.counters.l1_hit();
    if tracing::enabled!(target: "cache_runtime::store", tracing::Level::DEBUG) {
        if let Some(full) = key_in(&cache, &bound, key) {
            tracing::debug!(target: "cache_runtime::store", key = full, "hit (L1)");
        }
    }
    Ok(value)
}

/// The full key of `key` in `cache` (`bound`: the site's state for it).
fn key_in(cache: &Selected, bound: &BoundRef<'_>, key: &CallKey) -> Option<String> {
    Some(join_call(
        &bound.head,
        key.user.as_deref(),
        !cache.keys().seed_users(),
        &bound.tail,
        &key.hash()?,
    ))
}

/// The call past the L1: `cache` is the site's ([`Site::cache`]), none when the
/// configuration is invalid (the body just runs).
///
/// An `async move` block rather than an `async fn`: an `async fn` copies its arguments
/// into locals that its future keeps beside them, and this future is boxed on every call
/// that reaches the store; at more than 1 KiB, glibc serves the box from its slow path
/// (a few hundred instructions a hit).
#[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
fn run_in<S, R, Fut, D>(
    site: &'static Site,
    cache: Option<Selected>,
    key: CallKey,
    copier: Option<Copier<S::Stored>>,
    body: Fut,
    span: tracing::Span,
) -> impl Future<Output = R>
where
    S: Returns<R>,
    Fut: Future<Output = R>,
    D: Detach<R, Fut>,
{
    async move {
        let Some(cache) = cache else {
            return body.await;
        };
        let bound = site.bound(&cache);
        let Some(full) = key_in(&cache, &bound, &key) else {
            tracing::warn!(target: "cache_runtime::store", function = site.function, "an argument could not be serialised; call not cached");
            return body.await;
        };
        crate::metrics::spans::bind(&span, &cache);
        // Boxed apart: with the read inline, this future passed 1 KiB (above, on `run_in`).
        let read = Box::pin(cache.read_entry::<S::Stored>(
            &bound.counters,
            &full,
            key.ident(),
            key.shape(),
            !bound.resilience.fail_safe.is_zero(),
            copier,
        ));
        let read = read.await;
        crate::metrics::spans::read(&span, &read);
        // Past the read's await: the future keeps no room for these meanwhile.
        let r = bound.resilience;
        let mut store = true;
        let mut stale = None;
        match read {
            Ok(Entry::Fresh { value, fresh_until }) => {
                if let (Some(fraction), Some(until)) = (r.refresh_ahead, fresh_until) {
                    if resilience::refresh_due(until, bound.ttl, fraction) {
                        refresh_ahead::<S, R, Fut, D>(&cache, bound, full, key, body);
                    }
                }
                return S::rebuild(value);
            }
            Ok(Entry::Stale(value)) => stale = Some(value),
            Ok(Entry::Missing) => {}
            // The breaker already said so once; don't log every bypassed call.
            Err(e) if e.reported_by_breaker() => {
                store = false;
                tracing::debug!(target: "cache_runtime::store", key = %full, "skip: cache bypassed");
            }
            Err(e) => {
                store = !e.trips_breaker();
                tracing::warn!(target: "cache_runtime::store", key = %full, error = %e, "cache read failed; running the function");
            }
        }
        // The miss path in a box of its own, so the future every hit awaits (and its caller
        // moves) stays small: its copies were a tenth of a Redis hit's instructions.
        Box::pin(miss::<S, R, Fut, D>(
            site, cache, bound, full, key, body, stale, store,
        ))
        .await
    }
}

/// A miss (or a stale entry): one body run per key, stored by its leader.
#[allow(clippy::too_many_arguments)]
async fn miss<S, R, Fut, D>(
    site: &'static Site,
    cache: Selected,
    bound: BoundRef<'static>,
    full: String,
    key: CallKey,
    body: Fut,
    mut stale: Option<S::Stored>,
    store: bool,
) -> R
where
    S: Returns<R>,
    Fut: Future<Output = R>,
    D: Detach<R, Fut>,
{
    let r = bound.resilience;
    let leader = match cache.inner.flights.join(&full) {
        Role::Follower(rx) => {
            tracing::debug!(target: "cache_runtime::store", key = %full, "waiting for the call in flight");
            let waited = match (r.soft_timeout, stale.is_some()) {
                (Some(soft), true) => resilience::within(soft, flight::wait(rx)).await,
                _ => Some(flight::wait(rx).await),
            };
            if let Some(FlightState::Done(bytes)) = &waited {
                if let Ok((v, _)) = cache.codec().decode_timed::<S::Stored>(bytes, key.shape()) {
                    return S::rebuild(v);
                }
            }
            // The leader's body failed, or is still running at the soft timeout.
            if let Some(v) = stale {
                let why = if waited.is_none() {
                    "soft timeout while another call runs the function"
                } else {
                    "the function failed in the call this one waited for"
                };
                return resilience::serve_stale::<S, R>(site, &full, &bound, v, why);
            }
            let start = Stamp::now();
            let result = body.await;
            bound.counters.body_took(start);
            return result;
        }
        Role::Leader(leader) => leader.into_owned(Arc::clone(&cache.inner.flights)),
    };
    let mut finish = Finish {
        cache: cache.clone(),
        bound,
        key: full,
        user: key.user,
        tags: key.tags,
        shape: key.keyed.shape,
        leader,
        lock: None,
        store,
        body_start: Stamp::now(),
    };

    // One body run across processes.
    if let Some(lease) = r
        .lock_lease
        .filter(|_| store && finish.cache.inner.backend.shared_by_processes())
    {
        // With a stale value to fall back on, wait no longer than the soft timeout.
        let wait = match (r.soft_timeout, stale.is_some()) {
            (Some(soft), true) => soft.min(lease),
            _ => lease,
        };
        let counters = Arc::clone(&finish.bound.counters);
        match resilience::lock_or_wait::<S::Stored>(
            &cache,
            &finish.key,
            &finish.shape,
            lease,
            wait,
            || counters.lock_wait(),
        )
        .await
        {
            Locked::Taken(lock, token) => finish.lock = Some((lock, token)),
            Locked::Value(bytes, v) => {
                finish.leader.publish(FlightState::Done(bytes));
                return S::rebuild(v);
            }
            Locked::TimedOut if stale.is_some() => {
                if let Some(v) = stale.take() {
                    let out = resilience::serve_stale::<S, R>(
                        site,
                        &finish.key,
                        &finish.bound,
                        v,
                        "soft timeout while another process runs the function",
                    );
                    finish.fail().await;
                    return out;
                }
            }
            Locked::TimedOut | Locked::Unavailable => {}
        }
    }

    // The body (timed from here, not from before the lock).
    finish.body_start = Stamp::now();
    let Some(stale) = stale else {
        let result = body.await;
        return finish.complete::<S, R>(result).await;
    };
    let mut body = Box::pin(body);
    if let Some(soft) = r.soft_timeout {
        // The stale value at the soft timeout; the body goes on in the background.
        match resilience::within(
            soft,
            std::panic::AssertUnwindSafe(body.as_mut()).catch_unwind(),
        )
        .await
        {
            Some(Ok(result)) => return settle::<S, R>(finish, result, stale, site).await,
            Some(Err(panic)) => return panicked::<S, R>(finish, panic, stale, site).await,
            None => {
                let (key, bound) = (finish.key.clone(), finish.bound.clone());
                match D::detach::<S>(body, finish, false) {
                    None => {
                        return resilience::serve_stale::<S, R>(
                            site,
                            &key,
                            &bound,
                            stale,
                            "soft timeout: the function goes on in the background",
                        );
                    }
                    Some((rest, f)) => {
                        body = rest;
                        finish = f;
                    }
                }
            }
        }
    }
    // Fail-safe: an error, a `None` or a panic serves the stale value.
    match std::panic::AssertUnwindSafe(body).catch_unwind().await {
        Ok(result) => settle::<S, R>(finish, result, stale, site).await,
        Err(panic) => panicked::<S, R>(finish, panic, stale, site).await,
    }
}

/// Starts one background refresh of `full` (refresh ahead), unless one is running (or the
/// site's body cannot outlive the call).
fn refresh_ahead<S, R, Fut, D>(
    cache: &Selected,
    bound: BoundRef<'static>,
    full: String,
    key: CallKey,
    body: Fut,
) where
    S: Returns<R>,
    Fut: Future<Output = R>,
    D: Detach<R, Fut>,
{
    // The flight makes it one refresh per key: later hits find it and go on.
    let Role::Leader(leader) = cache.inner.flights.join(&full) else {
        return;
    };
    tracing::debug!(target: "cache_runtime::store", key = %full, "refresh ahead");
    let finish = Finish {
        cache: cache.clone(),
        bound,
        key: full,
        user: key.user,
        tags: key.tags,
        shape: key.keyed.shape,
        leader: leader.into_owned(Arc::clone(&cache.inner.flights)),
        lock: None,
        store: true,
        body_start: Stamp::now(),
    };
    // `Some`: it cannot run in the background here (no runtime): no refresh.
    let _ = D::detach::<S>(Box::pin(body), finish, true);
}

/// A body's result with a stale value to fall back on: stored when cacheable, else the
/// stale value.
async fn settle<S: Returns<R>, R>(
    finish: Finish,
    result: R,
    stale: S::Stored,
    site: &'static Site,
) -> R {
    if S::cacheable(&result).is_some() {
        return finish.complete::<S, R>(result).await;
    }
    finish.bound.counters.body_took(finish.body_start);
    let out = resilience::serve_stale::<S, R>(
        site,
        &finish.key,
        &finish.bound,
        stale,
        "the function returned an error or None",
    );
    finish.fail().await;
    out
}

/// A panicking body with a stale value to fall back on.
async fn panicked<S: Returns<R>, R>(
    finish: Finish,
    panic: Box<dyn std::any::Any + Send>,
    stale: S::Stored,
    site: &'static Site,
) -> R {
    finish.bound.counters.body_took(finish.body_start);
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(target: "cache_runtime::store", key = %finish.key, panic = %message, "the function panicked; serving the last good value (fail-safe)");
    let out = resilience::serve_stale::<S, R>(
        site,
        &finish.key,
        &finish.bound,
        stale,
        "the function panicked",
    );
    finish.fail().await;
    out
}

/// The full key of one call in the cache it would use.
pub(crate) fn key_of(site: &'static Site, key: &CallKey) -> Option<String> {
    let cache = site.cache()?;
    key_in(&cache, &site.bound(&cache), key)
}

/// Deletes the entry of one call; `Ok(false)` when there was none.
pub(crate) async fn invalidate(site: &'static Site, key: CallKey) -> Result<bool, CacheError> {
    let Some(cache) = site.cache() else {
        return Ok(false);
    };
    let Some(full) = key_of(site, &key) else {
        return Ok(false);
    };
    cache.remove(&full).await
}
