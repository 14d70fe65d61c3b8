//! The cache handle and its typed, namespaced operations (the seed's `redis_service`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{de::DeserializeOwned, Serialize};

use crate::backend::{Backend, Bytes, KeyTtl, PoolStats};
use crate::codec::CodecKind;
use crate::config::{BackendConfig, CacheConfig};
use crate::error::CacheError;
use crate::flight::{self, FlightState, Flights, Role};
use crate::key::KeyBuilder;
use crate::l1::L1;
use crate::namespace::{self, Namespace};

/// Hit, miss, store and error counts of one namespace.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) l1_hits: AtomicU64,
}

/// A snapshot of one namespace's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct NamespaceCounters {
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found nothing usable.
    pub misses: u64,
    /// Values written.
    pub stores: u64,
    /// Cache operations that failed (the call still returned its result).
    pub errors: u64,
    /// Hits served by the in-process L1 (included in `hits`).
    pub l1_hits: u64,
    /// `hits / (hits + misses)`, `None` before the first read.
    pub hit_ratio: Option<f64>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) keys: KeyBuilder,
    pub(crate) config: CacheConfig,
    /// Read on every call, written once per new namespace: copy-on-write.
    counters: ArcSwap<HashMap<String, Arc<Counters>>>,
    pub(crate) flights: Flights,
    /// Concurrent reads of one key share one round trip.
    reads: Flights,
    pub(crate) started: Instant,
    l1: Option<Arc<L1>>,
}

/// A cache: the embedded store or a Redis connection pool, plus key layout and codec.
///
/// Cheap to clone (an `Arc`). Decorated functions use the global one ([`crate::global`]);
/// tests and embedders can create as many independent ones as they like.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cache_runtime::Cache;
/// use std::time::Duration;
///
/// let cache = Cache::in_memory();
/// let ns = cache.namespace("custom")?;
/// ns.set("key", &"value", Some(Duration::from_secs(3600))).await?;
/// assert_eq!(ns.get::<String>("key").await?.as_deref(), Some("value"));
/// assert_eq!(ns.increment("counter", 5).await?, 5);
/// # Ok::<_, cache_runtime::CacheError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("backend", &self.inner.backend.kind())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Cache {
    /// A cache over the configured store. Connects lazily: an unreachable Redis does not
    /// fail here (calls run without the cache until it is up); only invalid settings do.
    pub fn new(config: CacheConfig) -> Result<Self, CacheError> {
        let backend = Backend::new(&config)?;
        // L1 only makes sense in front of a remote store.
        let l1 = match (&config.l1, &backend) {
            (Some(l1), Backend::Redis(_)) => Some(Arc::new(L1::new(l1, &config.key_prefix))),
            _ => None,
        };
        match &config.backend {
            BackendConfig::Memory(m) => tracing::info!(
                target: "cache_runtime::connection",
                max_entries = m.max_entries,
                max_bytes = m.max_bytes,
                "no REDIS_URL or REDIS_HOST set: using the embedded in-process cache (not shared between processes)"
            ),
            BackendConfig::Redis(r) => tracing::info!(
                target: "cache_runtime::connection",
                redis = %r,
                "using Redis"
            ),
        }
        Ok(Self::assemble(config, backend, l1))
    }

    /// A cache from the environment (and `.env`); see [`CacheConfig::from_env`].
    pub fn from_env() -> Result<Self, CacheError> {
        Self::new(CacheConfig::from_env()?)
    }

    /// The embedded store with default bounds.
    pub fn in_memory() -> Self {
        let config = CacheConfig::default();
        let backend = Backend::Memory(crate::backend::memory::MemoryBackend::new(
            &crate::config::MemoryConfig::default(),
        ));
        Self::assemble(config, backend, None)
    }

    fn assemble(config: CacheConfig, backend: Backend, l1: Option<Arc<L1>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                keys: KeyBuilder::new(config.key_prefix.clone()),
                config,
                counters: ArcSwap::default(),
                flights: Flights::default(),
                reads: Flights::default(),
                started: Instant::now(),
                l1,
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The key layout (prefix) in force.
    pub fn keys(&self) -> &KeyBuilder {
        &self.inner.keys
    }

    /// `"redis"` or `"embedded"`.
    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    /// Operations scoped to one namespace (validated: `[a-z0-9_-]{1,64}`).
    pub fn namespace(&self, name: &str) -> Result<NamespaceCache<'_>, CacheError> {
        let ns = Namespace::new(name.to_owned())?;
        Ok(NamespaceCache { cache: self, ns })
    }

    /// Operations scoped to a [`Namespace`].
    pub fn scoped(&self, ns: Namespace) -> NamespaceCache<'_> {
        NamespaceCache { cache: self, ns }
    }

    /// Deletes every key of a namespace with SCAN + UNLINK in batches; returns the count.
    pub async fn clear_namespace(&self, name: &str) -> Result<u64, CacheError> {
        self.namespace(name)?.clear().await
    }

    /// Deletes every entry of one user in every namespace (service data and
    /// `#[cache_user_specific]` results); returns how many were deleted.
    ///
    /// Reads the user's index set, so it costs in proportion to that user's keys, and it
    /// never touches another user's keys, whatever characters the ids contain.
    pub async fn clear_user(&self, user_id: &str) -> Result<u64, CacheError> {
        let index = self.inner.keys.user_index(user_id);
        self.forget_local_user(user_id);
        let result = self.inner.backend.clear_index(&index, None).await;
        // Again after: reads or flights that started during the clear saw the old values.
        self.forget_local_user(user_id);
        let n = result?;
        tracing::info!(target: "cache_runtime::store", deleted = n, "cleared a user's cache");
        Ok(n)
    }

    /// Deletes one user's entries in one namespace; returns how many were deleted.
    pub async fn clear_user_in(
        &self,
        namespace: &Namespace,
        user_id: &str,
    ) -> Result<u64, CacheError> {
        let index = self.inner.keys.user_index(user_id);
        let prefix = self
            .inner
            .keys
            .user_namespace_prefix(namespace.as_str(), user_id);
        self.forget_local_prefix(&prefix);
        let result = self.inner.backend.clear_index(&index, Some(&prefix)).await;
        self.forget_local_prefix(&prefix);
        let n = result?;
        tracing::info!(target: "cache_runtime::store", namespace = %namespace, deleted = n, "cleared a user's cache in one namespace");
        Ok(n)
    }

    /// Connects now instead of on first use, waiting up to `REDIS_SOCKET_CONNECT_TIMEOUT`;
    /// the error says why a connection is impossible (refused, TLS, authentication).
    ///
    /// Optional: caches connect lazily, and an application can start while Redis is down.
    /// Call it at start-up to fail fast on a wrong configuration.
    pub async fn connect(&self) -> Result<(), CacheError> {
        self.inner.backend.connect().await
    }

    /// A round trip to the store.
    pub async fn ping(&self) -> Result<Duration, CacheError> {
        self.inner.backend.ping().await
    }

    /// Connection pool statistics (`None` for the embedded store).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        match &self.inner.backend {
            Backend::Redis(r) => Some(r.pool_stats()),
            Backend::Memory(_) => None,
        }
    }

    /// Counters of every namespace used so far.
    pub fn counters(&self) -> HashMap<String, NamespaceCounters> {
        let map = self.inner.counters.load();
        map.iter()
            .map(|(ns, c)| {
                let hits = c.hits.load(Ordering::Relaxed);
                let misses = c.misses.load(Ordering::Relaxed);
                let reads = hits + misses;
                (
                    ns.clone(),
                    NamespaceCounters {
                        hits,
                        misses,
                        stores: c.stores.load(Ordering::Relaxed),
                        errors: c.errors.load(Ordering::Relaxed),
                        l1_hits: c.l1_hits.load(Ordering::Relaxed),
                        hit_ratio: (reads > 0).then(|| hits as f64 / reads as f64),
                    },
                )
            })
            .collect()
    }

    pub(crate) fn counters_for(&self, namespace: &str) -> Arc<Counters> {
        if let Some(c) = self.inner.counters.load().get(namespace) {
            return Arc::clone(c);
        }
        let map = self.inner.counters.rcu(|map| {
            let mut next = HashMap::clone(map);
            next.entry(namespace.to_owned()).or_default();
            next
        });
        // `rcu` returns the map it replaced; read the new one.
        drop(map);
        self.inner
            .counters
            .load()
            .get(namespace)
            .map_or_else(Arc::default, Arc::clone)
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.inner.config.codec
    }

    pub(crate) fn ttl_for(&self, namespace: &str) -> Duration {
        namespace::ttl_for(namespace, self.inner.config.ttl_default)
    }

    /// Reads and decodes; an undecodable value is a miss (logged), a backend error is an error.
    pub(crate) async fn get_raw<T: DeserializeOwned>(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        self.get_counted(&self.counters_for(namespace), key).await
    }

    /// [`get_raw`](Self::get_raw) with the namespace's counters already at hand.
    pub(crate) async fn get_counted<T: DeserializeOwned>(
        &self,
        counters: &Counters,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        // Timing only when someone listens: a clock read is a noticeable share of an L1 hit.
        let start = tracing::enabled!(target: "cache_runtime::store", tracing::Level::DEBUG)
            .then(Instant::now);
        let latency_us = || start.map(|s| s.elapsed().as_micros() as u64);
        if let Some(l1) = self.l1() {
            if let Some(bytes) = l1.get(key) {
                if let Ok(v) = self.codec().decode::<T>(&bytes) {
                    counters.hits.fetch_add(1, Ordering::Relaxed);
                    counters.l1_hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "cache_runtime::store", key, "hit (L1)");
                    return Ok(Some(v));
                }
            }
        }
        let bytes = match self.read(key).await {
            Ok(b) => b,
            Err(CacheError::Decode { detail, .. }) => {
                counters.misses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "cache_runtime::store", key, detail, "value of another type at key; treated as a miss");
                return Ok(None);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let Some(bytes) = bytes else {
            counters.misses.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "cache_runtime::store", key, latency_us = latency_us(), "miss");
            return Ok(None);
        };
        match self.codec().decode::<T>(&bytes) {
            Ok(v) => {
                counters.hits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "cache_runtime::store", key, bytes = bytes.len(), latency_us = latency_us(), "hit");
                Ok(Some(v))
            }
            Err(e) => {
                counters.misses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "cache_runtime::store", key, error = %e, "undecodable value; treated as a miss");
                Ok(None)
            }
        }
    }

    /// The L1, once its invalidation listener has been asked to start.
    fn l1(&self) -> Option<&Arc<L1>> {
        let l1 = self.inner.l1.as_ref()?;
        if let Backend::Redis(r) = &self.inner.backend {
            l1.ensure_listener(r.client(), r.config().connect_timeout);
        }
        Some(l1)
    }

    /// A backend read that fills the L1 (with Redis' remaining TTL) when it is enabled.
    async fn read(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        match &self.inner.backend {
            // No round trip to share.
            Backend::Memory(_) => return self.read_direct(key).await,
            // Nothing in flight to join: skip the bookkeeping (the sequential case). Two
            // reads racing past this check merely both go to Redis.
            Backend::Redis(r) if r.idle() => return self.read_direct(key).await,
            Backend::Redis(_) => {}
        }
        match self.inner.reads.join(key) {
            Role::Follower(rx) => match flight::wait(rx).await {
                FlightState::Done(bytes) => Ok(Some(Bytes::Shared(bytes))),
                FlightState::Absent => Ok(None),
                FlightState::Failed => Err(CacheError::Unavailable),
                FlightState::Running | FlightState::NotCached => self.read_direct(key).await,
            },
            Role::Leader(leader) => {
                let result = self.read_direct(key).await;
                if !leader.has_followers() {
                    return result;
                }
                match result {
                    Ok(Some(bytes)) => {
                        let shared: Arc<[u8]> = match bytes {
                            Bytes::Shared(b) => b,
                            Bytes::Owned(v) => v.into(),
                        };
                        leader.publish(FlightState::Done(Arc::clone(&shared)));
                        Ok(Some(Bytes::Shared(shared)))
                    }
                    Ok(None) => {
                        leader.publish(FlightState::Absent);
                        Ok(None)
                    }
                    Err(e) => {
                        if e.is_connection_fault() {
                            leader.publish(FlightState::Failed);
                        }
                        // Otherwise followers retry on their own (the leader's drop tells them).
                        Err(e)
                    }
                }
            }
        }
    }

    async fn read_direct(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        match (self.l1(), &self.inner.backend) {
            (Some(l1), Backend::Redis(r)) => {
                let ticket = l1.ticket(key);
                let (value, pttl) = r.get_with_ttl(key).await?;
                let Some(value) = value else {
                    return Ok(None);
                };
                let shared: Arc<[u8]> = value.into();
                if let Ok(ms) = u64::try_from(pttl) {
                    l1.fill(key, Arc::clone(&shared), Duration::from_millis(ms), &ticket);
                }
                Ok(Some(Bytes::Shared(shared)))
            }
            _ => self.inner.backend.get(key).await,
        }
    }

    /// Before a write: drops `key` from this process' L1 (other processes hear it on the
    /// channel) and ends its read flight, so later reads see the write.
    pub(crate) fn forget_local(&self, key: &str) {
        self.inner.reads.forget(key);
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_key(key);
        }
    }

    /// Before and after a delete or an invalidation: also ends the key's decorated-call
    /// flight, so a call arriving later runs its body instead of joining one that may have
    /// read the data before the invalidation (and so that flight does not store).
    pub(crate) fn forget_invalidated(&self, key: &str) {
        self.inner.flights.forget(key);
        self.forget_local(key);
    }

    /// Before and after a clear: the same for every key under `prefix`.
    pub(crate) fn forget_local_prefix(&self, prefix: &str) {
        self.inner
            .flights
            .forget_matching(|k| k.starts_with(prefix));
        self.inner.reads.forget_matching(|k| k.starts_with(prefix));
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_prefix(prefix);
        }
    }

    /// Drops this process' L1 entries of one user (every namespace).
    fn forget_local_user(&self, user_id: &str) {
        // Keys of a user are `{prefix}:{ns}:user:{id}:…`; the namespace varies, so match on
        // the user part.
        let needle = format!(":user:{}:", crate::key::escape_segment(user_id));
        let prefix = format!("{}:", self.inner.keys.prefix());
        let matches = |k: &str| k.starts_with(&prefix) && k.contains(&needle);
        self.inner.flights.forget_matching(matches);
        self.inner.reads.forget_matching(matches);
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate_matching(move |k| k.starts_with(&prefix) && k.contains(&needle));
        }
    }

    /// Whether an L1 is configured and currently serving.
    pub fn l1_active(&self) -> bool {
        self.inner.l1.as_ref().is_some_and(|l1| l1.is_healthy())
    }

    /// Encodes and writes with a TTL (and registers the key in a user index when given).
    pub(crate) async fn set_raw<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
        index: Option<&str>,
    ) -> Result<(), CacheError> {
        let bytes = self.encode(namespace, key, value)?;
        self.set_bytes(namespace, key, &bytes, ttl, index).await
    }

    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, CacheError> {
        self.encode_counted(&self.counters_for(namespace), key, value)
    }

    pub(crate) fn encode_counted<T: Serialize + ?Sized>(
        &self,
        counters: &Counters,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, CacheError> {
        self.codec()
            .encode(value, self.inner.config.max_value_bytes)
            .inspect_err(|e| {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "cache_runtime::store", key, error = %e, "value not stored");
            })
    }

    pub(crate) async fn set_bytes(
        &self,
        namespace: &str,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
        index: Option<&str>,
    ) -> Result<(), CacheError> {
        self.set_counted(&self.counters_for(namespace), key, bytes, ttl, index)
            .await
    }

    pub(crate) async fn set_counted(
        &self,
        counters: &Counters,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
        index: Option<&str>,
    ) -> Result<(), CacheError> {
        let start = Instant::now();
        self.forget_local(key);
        let result = self.inner.backend.set(key, bytes, ttl, index).await;
        // Again after the write: a read that started meanwhile may have fetched the old value.
        self.forget_local(key);
        match result {
            Ok(()) => {
                counters.stores.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "cache_runtime::store", key, bytes = bytes.len(), ttl_s = ttl.map(|t| t.as_secs()), latency_us = start.elapsed().as_micros() as u64, "store");
                Ok(())
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }
}

/// Typed operations within one namespace: keys are `{prefix}:{namespace}:{escaped key}`.
///
/// Obtained from [`Cache::namespace`] or [`Cache::scoped`].
#[derive(Clone, Debug)]
pub struct NamespaceCache<'a> {
    cache: &'a Cache,
    ns: Namespace,
}

impl NamespaceCache<'_> {
    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The full Redis key of `key` in this namespace.
    pub fn key(&self, key: &str) -> String {
        self.cache.inner.keys.manual(self.ns.as_str(), key)
    }

    /// Stores `value`; `ttl: None` uses the namespace's TTL strategy.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let ttl = ttl.unwrap_or_else(|| self.cache.ttl_for(self.ns.as_str()));
        if ttl.is_zero() {
            return Err(CacheError::Redis(
                "a TTL of zero would store nothing; use delete() or a TTL of at least 1 ms".into(),
            ));
        }
        self.cache
            .set_raw(self.ns.as_str(), &self.key(key), value, Some(ttl), None)
            .await
    }

    /// Reads a value; `None` when missing, expired or not decodable as `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        self.cache.get_raw(self.ns.as_str(), &self.key(key)).await
    }

    /// Deletes; `true` when the key existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let key = self.key(key);
        self.cache.forget_invalidated(&key);
        let result = self.cache.backend().delete(&key).await;
        self.cache.forget_invalidated(&key);
        result
    }

    /// Whether the key exists.
    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        self.cache.backend().exists(&self.key(key)).await
    }

    /// Remaining lifetime of the key.
    pub async fn get_ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        self.cache.backend().ttl(&self.key(key)).await
    }

    /// Adds `amount` (may be negative) to an integer counter, creating it at 0; returns the
    /// new value. Counters are plain Redis integers: read them with [`get_counter`](Self::get_counter).
    pub async fn increment(&self, key: &str, amount: i64) -> Result<i64, CacheError> {
        self.cache.backend().incr(&self.key(key), amount).await
    }

    /// The current value of a counter made by [`increment`](Self::increment).
    pub async fn get_counter(&self, key: &str) -> Result<Option<i64>, CacheError> {
        let Some(bytes) = self.cache.backend().get(&self.key(key)).await? else {
            return Ok(None);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| CacheError::NotACounter("value is not an integer".into()))
    }

    /// Deletes every key of the namespace (SCAN + UNLINK); returns how many were deleted.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        let prefix = format!("{}:{}:", self.cache.inner.keys.prefix(), self.ns);
        self.cache.forget_local_prefix(&prefix);
        let result = self.cache.backend().clear_prefix(&prefix).await;
        self.cache.forget_local_prefix(&prefix);
        let n = result?;
        tracing::info!(target: "cache_runtime::store", namespace = %self.ns, deleted = n, "cleared namespace");
        Ok(n)
    }
}
