//! Encoding, writing, and the write fence.
//!
//! The fence: before and after every write, delete and clear, this process forgets what
//! it holds locally for the keys concerned (L1 entries, read flights, and for deletes and
//! clears the flights of decorated calls). Before, so a read that starts during the write
//! does not join a read issued before it; after, so a read that fetched the old value
//! meanwhile is not served or stored. Other processes hear of it through the backend's
//! invalidation stream.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Store, Write};
use crate::cache::Cache;
use crate::counters::Counters;
use crate::error::CacheError;
use crate::shape::Shape;

/// What a write concerns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// One key is stored: its L1 entry and read flight go.
    Stored(&'a str),
    /// One key is deleted or invalidated: its decorated-call flight ends too, so a call
    /// arriving later runs its body instead of joining one that may have read the data
    /// before the invalidation (and that flight does not store).
    Removed(&'a str),
    /// Every key starting with this.
    Prefix(&'a str),
    /// Every key of one user (the escaped id).
    User(&'a str),
}

impl Cache {
    /// Runs `op` inside the fence for `scope`.
    pub(crate) async fn fenced<F: Future>(&self, scope: Scope<'_>, op: F) -> F::Output {
        self.forget(scope);
        let out = op.await;
        self.forget(scope);
        out
    }

    /// Forgets what this process holds locally for `scope` (one side of the fence).
    pub(crate) fn forget(&self, scope: Scope<'_>) {
        let inner = &self.inner;
        match scope {
            Scope::Stored(key) => {
                inner.reads.forget(key);
                if let Some(l1) = &inner.l1 {
                    l1.invalidate_key(key);
                }
            }
            Scope::Removed(key) => {
                inner.flights.forget(key);
                inner.reads.forget(key);
                if let Some(l1) = &inner.l1 {
                    l1.invalidate_key(key);
                }
            }
            Scope::Prefix(prefix) => {
                let matches = |k: &str| k.starts_with(prefix);
                inner.flights.forget_matching(matches);
                inner.reads.forget_matching(matches);
                if let Some(l1) = &inner.l1 {
                    l1.invalidate_matching(matches);
                }
            }
            Scope::User(escaped) => {
                // A user's keys carry its hash-tagged segment after the namespace; the
                // namespace varies, so match on that segment.
                let needle = inner.keys.user_segment_escaped(escaped);
                let prefix = inner.keys.prefix_with_colon();
                let matches = |k: &str| k.starts_with(prefix) && k.contains(&needle);
                inner.flights.forget_matching(matches);
                inner.reads.forget_matching(matches);
                if let Some(l1) = &inner.l1 {
                    l1.invalidate_matching(matches);
                }
            }
        }
    }

    /// Encodes `value` (of `shape`), refusing it above `CACHE_MAX_VALUE_BYTES` (counted
    /// and logged).
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        counters: &Counters,
        key: &str,
        value: &T,
        shape: &Shape,
    ) -> Result<Vec<u8>, CacheError> {
        self.encode_entry(counters, key, value, shape, None)
    }

    /// [`encode`](Self::encode), in a timed envelope when `fresh_until_ms` is given.
    pub(crate) fn encode_entry<T: Serialize + ?Sized>(
        &self,
        counters: &Counters,
        key: &str,
        value: &T,
        shape: &Shape,
        fresh_until_ms: Option<u64>,
    ) -> Result<Vec<u8>, CacheError> {
        let config = &self.inner.config;
        let limit = config.max_value_bytes.get();
        match fresh_until_ms {
            Some(until) => self.codec().encode_timed(value, shape, until, limit),
            None => self.codec().encode_shaped(value, shape, limit),
        }
        .map(|bytes| {
            super::read::heavy(bytes.len(), || {
                crate::codec::compress_envelope(bytes, config.compress_above)
            })
        })
        .inspect_err(|e| {
            counters.error();
            tracing::warn!(target: "cache_runtime::store", key, error = %e, "value not stored");
        })
    }

    /// Writes encoded bytes inside the fence, counting the outcome.
    pub(crate) async fn write(
        &self,
        counters: &Counters,
        write: Write<'_>,
    ) -> Result<(), CacheError> {
        let start = Instant::now();
        let result = self
            .fenced(Scope::Stored(write.key), self.inner.backend.set(write))
            .await;
        counters.write_took(start);
        match result {
            Ok(()) => {
                counters.store();
                tracing::debug!(target: "cache_runtime::store", key = write.key, bytes = write.value.len(), ttl_s = write.ttl.map(|t| t.as_secs()), latency_us = start.elapsed().as_micros() as u64, "store");
                Ok(())
            }
            Err(e) => {
                counters.error();
                Err(e)
            }
        }
    }

    /// Encodes `value` (of `shape`) and writes it to `key`.
    pub(crate) async fn write_value<T: Serialize + ?Sized>(
        &self,
        counters: &Counters,
        key: &str,
        (value, shape): (&T, &Shape),
        ttl: Option<Duration>,
        index: Option<&str>,
        tags: &[String],
    ) -> Result<(), CacheError> {
        let value = self.encode(counters, key, value, shape)?;
        let tags: Vec<String> = tags.iter().map(|t| self.keys().tag_index(t)).collect();
        let write = Write {
            key,
            value: &value,
            ttl,
            index,
            tags: &tags,
        };
        self.write(counters, write).await
    }

    /// Deletes one key inside the fence; `true` when it existed.
    pub(crate) async fn remove(&self, key: &str) -> Result<bool, CacheError> {
        self.fenced(Scope::Removed(key), self.inner.backend.delete(key))
            .await
    }
}
