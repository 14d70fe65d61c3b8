//! The only surface that `#[cache_result]` and `#[cache_user_specific]` expansions use.
//! Not public API: it changes with the macros, which pin this crate's exact version.
#![allow(missing_docs)]

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::CacheError;
use crate::flight::{self, FlightState, Role};
use crate::key::{escape_segment, join_call, site_key, ArgsHash, ArgsHasher};
use crate::store::{Cache, Counters};

pub use serde;

/// What the attribute knows at compile time about one function.
pub struct Site {
    /// Validated `[a-z0-9_-]+` by the macro.
    pub namespace: &'static str,
    /// `module_path!()::name`.
    pub function: &'static str,
    pub version: u32,
    /// The signature's tokens (argument and return types), so a changed signature never
    /// reads old values.
    pub fingerprint: &'static str,
    /// 0: the namespace's TTL strategy.
    pub ttl_secs: u64,
    /// Computed on first use.
    derived: OnceLock<Derived>,
    bound: OnceLock<Bound>,
}

impl Site {
    /// What expansions call (a constructor, so fields can be added without changing what
    /// the attributes generate).
    pub const fn new(
        namespace: &'static str,
        function: &'static str,
        version: u32,
        fingerprint: &'static str,
        ttl_secs: u64,
    ) -> Self {
        Self {
            namespace,
            function,
            version,
            fingerprint,
            ttl_secs,
            derived: OnceLock::new(),
            bound: OnceLock::new(),
        }
    }

    /// The BLAKE3 key of this function's identity, computed once.
    fn site_key(&self) -> &[u8; 32] {
        &self
            .derived
            .get_or_init(|| Derived {
                key: site_key(self.function, self.version, self.fingerprint),
            })
            .key
    }

    /// What depends on the global cache (key parts, counters, TTL), computed once: a site
    /// only ever talks to the global cache.
    fn bound(&self, cache: &Cache) -> &Bound {
        self.bound.get_or_init(|| {
            let (head, tail) = cache
                .keys()
                .call_parts(self.namespace, self.function, self.version);
            Bound {
                head,
                tail,
                counters: cache.counters_for(self.namespace),
                ttl: if self.ttl_secs == 0 {
                    cache.ttl_for(self.namespace)
                } else {
                    Duration::from_secs(self.ttl_secs)
                },
            }
        })
    }
}

/// Per-function state that does not depend on the cache.
pub struct Derived {
    key: [u8; 32],
}

/// Per-function state tied to the global cache.
pub struct Bound {
    head: String,
    tail: String,
    counters: Arc<Counters>,
    ttl: Duration,
}

/// The identity of one call: optional user segment and the argument hash.
pub struct CallKey {
    user: Option<String>,
    hash: Option<ArgsHash>,
}

pub struct KeyBuilder {
    hasher: ArgsHasher,
    user: Option<String>,
}

impl KeyBuilder {
    pub fn new(site: &'static Site) -> Self {
        Self {
            hasher: ArgsHasher::with_site_key(site.site_key()),
            user: None,
        }
    }

    /// The user id of a user-specific function: becomes the `user:{id}` segment.
    pub fn user<U: Display + ?Sized>(&mut self, id: &U) {
        let id = id.to_string();
        self.hasher.raw(id.as_bytes());
        self.user = Some(escape_segment(&id).into_owned());
    }

    pub fn arg<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.hasher.arg(value);
    }

    /// Mixes in a generic parameter, so `f::<u32>` and `f::<String>` never share keys.
    pub fn type_param<T: ?Sized>(&mut self) {
        self.hasher.raw(std::any::type_name::<T>().as_bytes());
    }

    pub fn finish(self) -> CallKey {
        CallKey {
            user: self.user,
            hash: self.hasher.finish(),
        }
    }
}

impl CallKey {
    /// `{prefix}:{namespace}[:user:{id}]:{function}:v{version}:{hash}`.
    fn render(&self, cache: &Cache, site: &Site) -> Option<String> {
        let hash = self.hash.as_ref()?;
        let bound = site.bound(cache);
        Some(join_call(
            &bound.head,
            self.user.as_deref(),
            &bound.tail,
            hash,
        ))
    }
}

/// The full key of a call, for companions that invalidate or inspect one entry.
pub fn key_of(site: &'static Site, key: &CallKey) -> Option<String> {
    key.render(crate::global()?, site)
}

/// Deletes the entry of one call; `Ok(false)` when there was none.
pub async fn invalidate(site: &'static Site, key: CallKey) -> Result<bool, CacheError> {
    let Some(cache) = crate::global() else {
        return Ok(false);
    };
    let Some(full) = key.render(cache, site) else {
        return Ok(false);
    };
    cache.forget_invalidated(&full);
    let result = cache.backend().delete(&full).await;
    cache.forget_invalidated(&full);
    result
}

/// `async fn -> T`: every result is cached.
pub async fn cached_value<T, Fut>(site: &'static Site, key: CallKey, body: Fut) -> T
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = T>,
{
    run::<Plain, _, _>(site, key, body).await
}

/// `async fn -> Result<T, E>`: only `Ok` is cached; `E` needs no trait.
pub async fn cached_result<T, E, Fut>(site: &'static Site, key: CallKey, body: Fut) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Result<T, E>>,
{
    run::<OkOnly, _, _>(site, key, body).await
}

/// `async fn -> Option<T>`: only `Some` is cached (use `cached_value` to cache `None`).
pub async fn cached_option<T, Fut>(site: &'static Site, key: CallKey, body: Fut) -> Option<T>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Option<T>>,
{
    run::<SomeOnly, _, _>(site, key, body).await
}

/// Which part of a return value is stored, and how a stored value becomes a return value.
trait Shape<R> {
    type Stored: Serialize + DeserializeOwned;
    fn cacheable(result: &R) -> Option<&Self::Stored>;
    fn rebuild(stored: Self::Stored) -> R;
}

struct Plain;
struct OkOnly;
struct SomeOnly;

impl<T: Serialize + DeserializeOwned> Shape<T> for Plain {
    type Stored = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn rebuild(stored: T) -> T {
        stored
    }
}

impl<T: Serialize + DeserializeOwned, E> Shape<Result<T, E>> for OkOnly {
    type Stored = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn rebuild(stored: T) -> Result<T, E> {
        Ok(stored)
    }
}

impl<T: Serialize + DeserializeOwned> Shape<Option<T>> for SomeOnly {
    type Stored = T;
    fn cacheable(result: &Option<T>) -> Option<&T> {
        result.as_ref()
    }
    fn rebuild(stored: T) -> Option<T> {
        Some(stored)
    }
}

async fn run<S, R, Fut>(site: &'static Site, key: CallKey, body: Fut) -> R
where
    S: Shape<R>,
    Fut: Future<Output = R>,
{
    let (cacheable, rebuild) = (S::cacheable, S::rebuild);
    let Some(cache) = crate::global() else {
        return body.await;
    };
    let Some(full) = key.render(cache, site) else {
        tracing::warn!(target: "cache_runtime::store", function = site.function, "an argument could not be serialised; call not cached");
        return body.await;
    };
    let bound = site.bound(cache);
    // After a connection fault on the read, the store would most likely wait out another
    // timeout: skip it, so a call costs at most one socket timeout plus its body.
    let mut store = true;
    match cache.get_counted::<S::Stored>(&bound.counters, &full).await {
        Ok(Some(v)) => return rebuild(v),
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
                if let Ok(v) = cache.codec().decode::<S::Stored>(&bytes) {
                    return rebuild(v);
                }
            }
            return body.await;
        }
        Role::Leader(leader) => leader,
    };
    let result = body.await;
    let Some(value) = cacheable(&result) else {
        tracing::debug!(target: "cache_runtime::store", key = %full, "skip: result not cacheable");
        leader.publish(FlightState::NotCached);
        return result;
    };
    let Ok(bytes) = cache.encode_counted(&bound.counters, &full, value) else {
        leader.publish(FlightState::NotCached);
        return result;
    };
    // Published whether or not anyone waits yet: callers arriving during the store
    // below join this flight and get the value instead of running the body again.
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
    let ttl = bound.ttl;
    if let Err(e) = cache
        .set_counted(&bound.counters, &full, &bytes, Some(ttl), index.as_deref())
        .await
    {
        if matches!(e, CacheError::Unavailable) {
            tracing::debug!(target: "cache_runtime::store", key = %full, "skip store: cache bypassed");
        } else {
            tracing::warn!(target: "cache_runtime::store", key = %full, error = %e, "cache write failed; the result is returned uncached");
        }
    }
    drop(leader);
    result
}

/// Hooks for the project's own reliability tests. Not API.
pub mod testing {
    /// Makes this share (0.0 to 1.0) of Redis operations fail before being sent.
    pub fn set_fault_rate(rate: f64) {
        crate::backend::faults::set_rate(rate);
    }
}
