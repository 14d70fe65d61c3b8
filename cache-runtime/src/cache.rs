//! The cache handle: one store (embedded or Redis), its key layout, codec, counters, the
//! optional L1, and the flights of this process.

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, PoolStats, Store};
use crate::codec::CodecKind;
use crate::config::CacheConfig;
use crate::counters::{CounterSet, Counters, NamespaceCounters};
use crate::error::CacheError;
use crate::flight::Flights;
use crate::key::KeyBuilder;
use crate::l1::L1;
use crate::namespace;

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) keys: KeyBuilder,
    pub(crate) config: CacheConfig,
    pub(crate) counters: CounterSet,
    /// Misses of decorated calls: one body run per key.
    pub(crate) flights: Arc<Flights>,
    /// Concurrent reads of one key share one round trip.
    pub(crate) reads: Flights,
    pub(crate) l1: Option<Arc<L1>>,
    /// Whether the publisher of figures for `cachectl top` runs (its states and the task
    /// are in `stats_publisher`, which is started by the layers above: engine, manual,
    /// service).
    pub(crate) stats: AtomicU8,
    /// Unique for the process's lifetime (an address could be reused after a drop).
    serial: u64,
}

/// A cache: the embedded store or a Redis connection pool, plus key layout and codec.
///
/// Cheap to clone (an `Arc`). Decorated functions use the global one ([`crate::global`]),
/// or the one their `cache = …` option names; tests and embedders can create as many
/// independent ones as they like (and run decorated functions against one with
/// [`crate::with_cache`]).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cache_runtime::Cache;
/// use std::time::Duration;
///
/// let cache = Cache::in_memory();
/// let ns = cache.namespace("custom")?;
/// ns.set("key", "value", Some(Duration::from_secs(3600))).await?;
/// assert_eq!(ns.get::<String>("key").await?.as_deref(), Some("value"));
/// assert_eq!(ns.increment("counter", 5, None).await?, 5);
/// # Ok::<_, cache_runtime::CacheError>(())
/// # }).unwrap();
/// ```
///
/// Redis operations need a Tokio runtime with I/O and timers enabled (`#[tokio::main]`,
/// or a runtime built with `enable_all`); outside one they fail with
/// [`CacheError::NoRuntime`] (decorated functions then run their body), never a panic.
/// The embedded store works anywhere.
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
        // An L1 needs to hear about writes made elsewhere.
        let l1 = match (&config.l1, backend.invalidation_mode()) {
            (Some(l1), Some(_)) => Some(Arc::new(L1::new(l1))),
            _ => None,
        };
        Ok(Self::assemble(config, backend, l1))
    }

    fn assemble(config: CacheConfig, backend: Backend, l1: Option<Arc<L1>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                keys: if config.codec == CodecKind::JsonPlain {
                    KeyBuilder::new(config.key_prefix.clone()).with_seed_users()
                } else {
                    KeyBuilder::new(config.key_prefix.clone())
                },
                config,
                counters: CounterSet::default(),
                flights: Arc::default(),
                reads: Flights::default(),
                l1,
                stats: AtomicU8::new(0),
                serial: {
                    static NEXT: std::sync::atomic::AtomicU64 =
                        std::sync::atomic::AtomicU64::new(1);
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                },
            }),
        }
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

    /// Identifies this cache (its shared state) among others.
    pub(crate) fn id(&self) -> u64 {
        self.inner.serial
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
        self.inner.backend.pool_stats()
    }

    /// Counters of every namespace used so far.
    pub fn counters(&self) -> HashMap<String, NamespaceCounters> {
        self.inner.counters.snapshot()
    }

    /// Whether an L1 is configured and currently serving.
    pub fn l1_active(&self) -> bool {
        self.inner.l1.as_ref().is_some_and(|l1| l1.is_healthy())
    }

    pub(crate) fn counters_for(&self, namespace: &str) -> Arc<Counters> {
        self.inner.counters.of(namespace)
    }

    pub(crate) fn codec(&self) -> CodecKind {
        self.inner.config.codec
    }

    pub(crate) fn ttl_for(&self, namespace: &str) -> Duration {
        namespace::ttl_for(namespace, self.inner.config.ttl_default)
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }
}
