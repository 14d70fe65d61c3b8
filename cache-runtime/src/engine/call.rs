//! A decorated call: a hit returns the stored value; a miss runs the body once per key in
//! this process (followers get the leader's value) and stores the cacheable part of its
//! result.
//!
//! When not to store: the result is not cacheable (an `Err`, a `None`), it does not
//! encode or is too large, the read just failed on a connection fault (the store would
//! most likely wait out a second timeout), or an invalidation ended the flight while the
//! body ran (the result may predate it).

use std::future::Future;

use serde::{de::DeserializeOwned, Serialize};

use super::site::Site;
use crate::backend::Write;
use crate::error::CacheError;
use crate::flight::{self, FlightState, Role};
use crate::key::{join_call, ArgsHash};
use crate::shape::Shape;

/// Which part of a return value is stored, and how a stored value becomes a return value.
pub(crate) trait Returns<R> {
    type Stored: Serialize + DeserializeOwned;
    fn cacheable(result: &R) -> Option<&Self::Stored>;
    fn rebuild(stored: Self::Stored) -> R;
}

/// Every value is cached.
pub(crate) struct Plain;
/// Only `Ok` is cached.
pub(crate) struct OkOnly;
/// Only `Some` is cached.
pub(crate) struct SomeOnly;

impl<T: Serialize + DeserializeOwned> Returns<T> for Plain {
    type Stored = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn rebuild(stored: T) -> T {
        stored
    }
}

impl<T: Serialize + DeserializeOwned, E> Returns<Result<T, E>> for OkOnly {
    type Stored = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn rebuild(stored: T) -> Result<T, E> {
        Ok(stored)
    }
}

impl<T: Serialize + DeserializeOwned> Returns<Option<T>> for SomeOnly {
    type Stored = T;
    fn cacheable(result: &Option<T>) -> Option<&T> {
        result.as_ref()
    }
    fn rebuild(stored: T) -> Option<T> {
        Some(stored)
    }
}

/// The identity of one call: the user segment (escaped), the argument hash (`None` when an
/// argument could not be serialised: then the call is not cached), and the stored type's
/// shape (recorded in the value's envelope).
pub(crate) struct CallKey {
    pub(crate) user: Option<String>,
    pub(crate) hash: Option<ArgsHash>,
    pub(crate) shape: Shape,
}

/// Runs one decorated call.
pub(crate) async fn run<S, R, Fut>(site: &'static Site, key: CallKey, body: Fut) -> R
where
    S: Returns<R>,
    Fut: Future<Output = R>,
{
    let Some(cache) = site.cache() else {
        return body.await;
    };
    let Some(hash) = key.hash.as_ref() else {
        tracing::warn!(target: "cache_runtime::store", function = site.function, "an argument could not be serialised; call not cached");
        return body.await;
    };
    let bound = site.bound(&cache);
    let full = join_call(
        &bound.head,
        key.user.as_deref(),
        !cache.keys().seed_users(),
        &bound.tail,
        hash,
    );
    let mut store = true;
    match cache
        .read_value::<S::Stored>(&bound.counters, &full, &key.shape)
        .await
    {
        Ok(Some(v)) => return S::rebuild(v),
        Ok(None) => {}
        // The breaker already said so once; don't log every bypassed call.
        Err(CacheError::Unavailable) => {
            store = false;
            tracing::debug!(target: "cache_runtime::store", key = %full, "skip: cache bypassed");
        }
        Err(e) => {
            store = !e.is_connection_fault();
            tracing::warn!(target: "cache_runtime::store", key = %full, error = %e, "cache read failed; running the function");
        }
    }
    let leader = match cache.inner.flights.join(&full) {
        Role::Follower(rx) => {
            tracing::debug!(target: "cache_runtime::store", key = %full, "waiting for the call in flight");
            if let FlightState::Done(bytes) = flight::wait(rx).await {
                if let Ok(v) = cache.codec().decode_shaped::<S::Stored>(&bytes, &key.shape) {
                    return S::rebuild(v);
                }
            }
            return body.await;
        }
        Role::Leader(leader) => leader,
    };
    let result = body.await;
    let Some(value) = S::cacheable(&result) else {
        tracing::debug!(target: "cache_runtime::store", key = %full, "skip: result not cacheable");
        leader.publish(FlightState::NotCached);
        return result;
    };
    let Ok(bytes) = cache.encode(&bound.counters, &full, value, &key.shape) else {
        leader.publish(FlightState::NotCached);
        return result;
    };
    // Published whether or not anyone waits yet: callers arriving during the store below
    // join this flight and get the value instead of running the body again.
    leader.publish(FlightState::Done(bytes.as_slice().into()));
    if !store {
        tracing::debug!(target: "cache_runtime::store", key = %full, "skip store: the read just failed");
        return result;
    }
    if !leader.is_current() {
        tracing::debug!(target: "cache_runtime::store", key = %full, "skip store: invalidated while the function ran");
        return result;
    }
    let index = key
        .user
        .as_deref()
        .map(|user| cache.keys().user_index_escaped(user));
    let write = Write {
        key: &full,
        value: &bytes,
        ttl: Some(bound.ttl),
        index: index.as_deref(),
    };
    if let Err(e) = cache.write(&bound.counters, write).await {
        if matches!(e, CacheError::Unavailable) {
            tracing::debug!(target: "cache_runtime::store", key = %full, "skip store: cache bypassed");
        } else {
            tracing::warn!(target: "cache_runtime::store", key = %full, error = %e, "cache write failed; the result is returned uncached");
        }
    }
    drop(leader);
    result
}

/// The full key of one call in the cache it would use.
pub(crate) fn key_of(site: &'static Site, key: &CallKey) -> Option<String> {
    let cache = site.cache()?;
    let hash = key.hash.as_ref()?;
    let bound = site.bound(&cache);
    Some(join_call(
        &bound.head,
        key.user.as_deref(),
        !cache.keys().seed_users(),
        &bound.tail,
        hash,
    ))
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
