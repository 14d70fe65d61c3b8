//! The read path: L1 (when enabled and its invalidation stream is up), else the store,
//! with concurrent reads of one key sharing one round trip. A value that does not decode
//! as the requested type is a miss (logged), never an error.

use std::sync::Arc;
use std::time::Instant;

use serde::{de::DeserializeOwned, Serialize};

use super::copier::Copier;
use super::unix_ms;
use crate::backend::{Bytes, KeyTtl, Store};
use crate::cache::Cache;
use crate::counters::Counters;
use crate::error::CacheError;
use crate::flight::{self, FlightState, Role};
use crate::l1::{Hit, Ident, L1};
use crate::shape::Shape;

/// What a read found, for a caller that knows about logical expiry (decorated calls).
pub(crate) enum Entry<T> {
    /// A value to return; `fresh_until` (Unix ms) when it was written in a timed envelope.
    Fresh { value: T, fresh_until: Option<u64> },
    /// A value past its logical expiry, kept for fail-safe (counted as a miss).
    Stale(T),
    /// Nothing usable (counted as a miss).
    Missing,
}

/// Values from this many bytes on are decoded off the async worker (a 10 MB value takes
/// milliseconds of CPU, which would stall every task queued on that worker).
pub(crate) const HEAVY_BYTES: usize = 512 * 1024;

/// Runs `work` on `len` bytes; from [`HEAVY_BYTES`] on, on a multi-threaded runtime, with
/// `block_in_place`, so this worker's other tasks move to another worker meanwhile (no
/// `Send + 'static` bound on the value type, unlike `spawn_blocking`). Elsewhere (a
/// current-thread runtime, no runtime) it runs here.
pub(crate) fn heavy<R>(len: usize, work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if len >= HEAVY_BYTES
        && Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
    {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

impl Cache {
    /// Reads and decodes `key` as a `T` of `shape`, counting the outcome in `counters`.
    /// A timed entry past its logical expiry is a miss.
    pub(crate) async fn read_value<T: Serialize + DeserializeOwned>(
        &self,
        counters: &Counters,
        key: &str,
        shape: &Shape,
    ) -> Result<Option<T>, CacheError> {
        Ok(
            match self
                .read_entry(counters, key, None, shape, false, None)
                .await?
            {
                Entry::Fresh { value, .. } => Some(value),
                Entry::Stale(_) | Entry::Missing => None,
            },
        )
    }

    /// Reads and decodes `key` as a `T` of `shape`, counting the outcome in `counters`;
    /// `keep_stale`: a timed entry past its logical expiry is returned as [`Entry::Stale`]
    /// (else it is [`Entry::Missing`]); `copier`: L1 hits of this type clone a kept decoded
    /// copy instead of decoding; `ident`: the decorated call reading it, which a fill of the
    /// L1 records (its later hits find the entry by it, `l1.rs`).
    pub(crate) async fn read_entry<T: Serialize + DeserializeOwned>(
        &self,
        counters: &Counters,
        key: &str,
        ident: Option<Ident<'_>>,
        shape: &Shape,
        keep_stale: bool,
        copier: Option<Copier<T>>,
    ) -> Result<Entry<T>, CacheError> {
        if let Some(l1) = self.l1() {
            if let Some((value, fresh_until, stale)) = l1
                .get(key)
                .and_then(|hit| self.l1_value(l1, &hit, shape, copier))
            {
                // An L1 hit never waits: a loop of them must still let other tasks run.
                tokio::task::consume_budget().await;
                if stale {
                    // The L1 is coherent with the store: the store's copy is as stale.
                    counters.miss();
                    return Ok(if keep_stale {
                        Entry::Stale(value)
                    } else {
                        Entry::Missing
                    });
                }
                counters.l1_hit();
                tracing::debug!(target: "cache_runtime::store", key, "hit (L1)");
                return Ok(Entry::Fresh { value, fresh_until });
            }
        }
        self.read_stored(counters, key, ident, shape, keep_stale)
            .await
    }

    /// [`Self::read_entry`] from the store.
    async fn read_stored<T: Serialize + DeserializeOwned>(
        &self,
        counters: &Counters,
        key: &str,
        ident: Option<Ident<'_>>,
        shape: &Shape,
        keep_stale: bool,
    ) -> Result<Entry<T>, CacheError> {
        // Store reads only: an L1 hit is counted, not timed (two clock reads were a tenth
        // of it).
        let _timer = counters.time_read();
        // Timing only when someone listens: a clock read is a noticeable share of a hit.
        let start = tracing::enabled!(target: "cache_runtime::store", tracing::Level::DEBUG)
            .then(Instant::now);
        let latency_us = || start.map(|s| s.elapsed().as_micros() as u64);
        let bytes = match self.read_bytes(key, ident).await {
            Ok(b) => b,
            Err(CacheError::WrongType) => {
                counters.miss();
                tracing::warn!(target: "cache_runtime::store", key, "the key holds another Redis type; treated as a miss");
                return Ok(Entry::Missing);
            }
            Err(e) => {
                counters.error();
                return Err(e);
            }
        };
        let Some(bytes) = bytes else {
            counters.miss();
            tracing::debug!(target: "cache_runtime::store", key, latency_us = latency_us(), "miss");
            return Ok(Entry::Missing);
        };
        match heavy(bytes.len(), || {
            self.codec().decode_timed::<T>(&bytes, shape)
        }) {
            Ok((value, Some(until))) if until <= unix_ms() => {
                counters.miss();
                tracing::debug!(target: "cache_runtime::store", key, latency_us = latency_us(), "miss (past its TTL, kept for fail-safe)");
                Ok(if keep_stale {
                    Entry::Stale(value)
                } else {
                    Entry::Missing
                })
            }
            Ok((value, fresh_until)) => {
                counters.hit();
                tracing::debug!(target: "cache_runtime::store", key, bytes = bytes.len(), latency_us = latency_us(), "hit");
                Ok(Entry::Fresh { value, fresh_until })
            }
            Err(CacheError::ShapeMismatch) => {
                counters.shape_mismatch();
                crate::shape::warn_mismatch_once::<T>(key);
                Ok(Entry::Missing)
            }
            Err(e) => {
                counters.miss();
                tracing::warn!(target: "cache_runtime::store", key, error = %e, "undecodable value; treated as a miss");
                Ok(Entry::Missing)
            }
        }
    }

    /// The value of an L1 hit, whether it is past its logical expiry, and its expiry: a
    /// clone of the kept copy when there is one for `T`, else decoded (and kept, when `T`
    /// may be cloned). `None` when the bytes do not decode as a `T` of `shape`.
    fn l1_value<T: Serialize + DeserializeOwned>(
        &self,
        l1: &L1,
        hit: &Hit,
        shape: &Shape,
        copier: Option<Copier<T>>,
    ) -> Option<(T, Option<u64>, bool)> {
        if let Some(copier) = copier {
            if let Some(kept) = hit.held.decoded() {
                if let Some(value) = (copier.out)(&*kept.value) {
                    return Some((value, kept.fresh_until, kept.stale_at(hit.now_ms)));
                }
            }
        }
        let (value, fresh_until) = heavy(hit.held.bytes.len(), || {
            self.codec().decode_timed::<T>(&hit.held.bytes, shape)
        })
        .ok()?;
        if let Some(copier) = copier {
            l1.keep(hit, (copier.keep)(&value), fresh_until);
        }
        let stale = fresh_until.is_some_and(|until| until <= unix_ms());
        Some((value, fresh_until, stale))
    }

    /// A fresh L1 hit of the decorated call `ident` as a `T`, with its `fresh_until`; not
    /// counted.
    pub(crate) fn l1_fresh<T: Serialize + DeserializeOwned>(
        &self,
        ident: &Ident<'_>,
        shape: &Shape,
        copier: Option<Copier<T>>,
    ) -> Option<(T, Option<u64>)> {
        let l1 = self.l1()?;
        let hit = l1.get_by(ident)?;
        match self.l1_value(l1, &hit, shape, copier)? {
            (value, fresh_until, false) => Some((value, fresh_until)),
            (_, _, true) => None,
        }
    }

    /// The L1, once its invalidation listener has been asked to start.
    pub(crate) fn l1(&self) -> Option<&Arc<L1>> {
        let l1 = self.inner.l1.as_ref()?;
        if l1.needs_listener() {
            let sink: std::sync::Weak<L1> = Arc::downgrade(l1);
            self.inner.backend.listen(sink);
        }
        Some(l1)
    }

    /// A store read, shared with concurrent reads of the same key (`ident`: see
    /// [`Self::read_entry`]).
    pub(crate) async fn read_bytes(
        &self,
        key: &str,
        ident: Option<Ident<'_>>,
    ) -> Result<Option<Bytes>, CacheError> {
        // Nothing in flight to join: skip the bookkeeping (the sequential case). Two reads
        // racing past this check merely both go to the store.
        if !self.inner.backend.busy() {
            return self.read_direct(key, ident).await;
        }
        match self.inner.reads.join(key) {
            Role::Follower(rx) => match flight::wait(rx).await {
                FlightState::Done(bytes) => Ok(Some(Bytes::Shared(bytes))),
                FlightState::Absent => Ok(None),
                FlightState::Failed => Err(CacheError::Unavailable),
                FlightState::Running | FlightState::NotCached => self.read_direct(key, ident).await,
            },
            Role::Leader(leader) => {
                let result = self.read_direct(key, ident).await;
                let Some(followers) = leader.finish() else {
                    return result;
                };
                match result {
                    Ok(Some(bytes)) => {
                        let shared = bytes.into_shared();
                        followers.publish(FlightState::Done(Arc::clone(&shared)));
                        Ok(Some(Bytes::Shared(shared)))
                    }
                    Ok(None) => {
                        followers.publish(FlightState::Absent);
                        Ok(None)
                    }
                    Err(e) => {
                        if e.is_connection_fault() {
                            followers.publish(FlightState::Failed);
                        }
                        // Otherwise followers retry on their own (dropping them tells them).
                        Err(e)
                    }
                }
            }
        }
    }

    /// One store read; fills the L1 (with the store's remaining TTL) when it is enabled.
    async fn read_direct(
        &self,
        key: &str,
        ident: Option<Ident<'_>>,
    ) -> Result<Option<Bytes>, CacheError> {
        let backend = &self.inner.backend;
        let Some(l1) = self.l1() else {
            return backend.get(key).await;
        };
        let ticket = l1.ticket(key);
        let Some((value, ttl)) = backend.get_with_ttl(key).await? else {
            return Ok(None);
        };
        let shared = value.into_shared();
        if let KeyTtl::ExpiresIn(ttl) = ttl {
            l1.fill(key, Arc::clone(&shared), ttl, &ticket, ident);
        }
        Ok(Some(Bytes::Shared(shared)))
    }
}
