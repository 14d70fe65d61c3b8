//! Stores behind the cache: Redis (standalone, TLS) or the embedded in-process store.
//!
//! Enum dispatch rather than a trait object: no boxing on the hot path, and every
//! backend answers the same byte-level operations with Redis semantics.

pub(crate) mod breaker;
pub(crate) mod faults;
pub(crate) mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

pub use self::redis::PoolStats;
use crate::config::{BackendConfig, CacheConfig};
use crate::error::CacheError;

/// The remaining lifetime of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyTtl {
    /// The key does not exist (Redis TTL -2).
    Missing,
    /// The key exists without an expiry (Redis TTL -1).
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

impl KeyTtl {
    /// Seconds as Redis' `TTL` reports them: -2 missing, -1 no expiry.
    pub fn as_redis_secs(self) -> i64 {
        match self {
            Self::Missing => -2,
            Self::Persistent => -1,
            Self::ExpiresIn(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// A stored value as the backend returns it.
pub(crate) enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(v) => v,
        }
    }
}

pub(crate) enum Backend {
    Memory(memory::MemoryBackend),
    Redis(Arc<redis::RedisBackend>),
}

impl Backend {
    pub(crate) fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        Ok(match &config.backend {
            BackendConfig::Memory(m) => Self::Memory(memory::MemoryBackend::new(m)),
            BackendConfig::Redis(r) => {
                let channel = config
                    .l1
                    .as_ref()
                    .map(|_| crate::l1::invalidation_channel(&config.key_prefix));
                Self::Redis(Arc::new(redis::RedisBackend::new(r, channel)?))
            }
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "embedded",
            Self::Redis(_) => "redis",
        }
    }

    /// Whether calls currently bypass the store after repeated failures.
    pub(crate) fn circuit_open(&self) -> bool {
        match self {
            Self::Redis(r) => r.circuit_open(),
            Self::Memory(_) => false,
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.get(key).map(Bytes::Shared)),
            Self::Redis(r) => Ok(r.get(key).await?.map(Bytes::Owned)),
        }
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        index: Option<&str>,
    ) -> Result<(), CacheError> {
        match self {
            Self::Memory(m) => {
                m.set(key, value, ttl, index);
                Ok(())
            }
            Self::Redis(r) => r.set(key, value, ttl, index).await,
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.delete(key)),
            Self::Redis(r) => r.delete(key).await,
        }
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.exists(key)),
            Self::Redis(r) => r.exists(key).await,
        }
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.ttl(key)),
            Self::Redis(r) => r.ttl(key).await,
        }
    }

    pub(crate) async fn incr(&self, key: &str, amount: i64) -> Result<i64, CacheError> {
        match self {
            Self::Memory(m) => m.incr(key, amount),
            Self::Redis(r) => r.incr(key, amount).await,
        }
    }

    pub(crate) async fn clear_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.clear_prefix(prefix)),
            Self::Redis(r) => r.clear_prefix(prefix).await,
        }
    }

    pub(crate) async fn clear_index(
        &self,
        index: &str,
        member_prefix: Option<&str>,
    ) -> Result<u64, CacheError> {
        match self {
            Self::Memory(m) => Ok(m.clear_index(index, member_prefix)),
            Self::Redis(r) => r.clear_index(index, member_prefix).await,
        }
    }

    pub(crate) async fn connect(&self) -> Result<(), CacheError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.connect().await,
        }
    }

    pub(crate) async fn ping(&self) -> Result<Duration, CacheError> {
        match self {
            Self::Memory(_) => Ok(Duration::ZERO),
            Self::Redis(r) => r.ping().await,
        }
    }
}
