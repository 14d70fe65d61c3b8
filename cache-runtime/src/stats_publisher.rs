//! The figures `cachectl top` shows: every process whose cache talks to Redis publishes
//! them into one small hash, **only while a `cachectl top` watches**.
//!
//! Why a watched hash, rather than a key per process written all the time: nothing is
//! written into the application's Redis unless somebody looks (an idle fleet costs one
//! `HEXISTS` per process every 2 s), and `top` reads every process in one round trip
//! (`HGETALL` of one key, one slot on a cluster) instead of a `SCAN` of the whole keyspace
//! every second.
//!
//! # The stats key (format 1)
//!
//! `{prefix}:__stats`, a hash:
//!
//! | field | written by | value |
//! | --- | --- | --- |
//! | `__watch` | `cachectl top`, every refresh, with `PEXPIRE 5000` on the hash | its clock, Unix ms |
//! | `{host}:{pid}:{n}` | each cache (`n`: the cache within the process), every second while `__watch` exists | the snapshot below, JSON |
//!
//! The hash lives while a `top` refreshes it, and 5 s more; a process that writes after
//! that recreates it with `PEXPIRE 5000 NX` and, finding no `__watch`, stops. `top` hides a
//! process whose snapshot stopped changing for 5 s and removes its field after 30 s.
//!
//! A snapshot (every counter is cumulative since the cache was created):
//!
//! ```json
//! {
//!   "format": 1,
//!   "instance": "web-1:4242:1",
//!   "version": "0.1.0",
//!   "at_ms": 1767225600000,
//!   "circuit_open": false,
//!   "l1_active": false,
//!   "pool": { "connections": 2, "max": 10, "available": 10 },
//!   "latency_bounds_seconds": [0.000001, 0.0000025, "...", 10.0],
//!   "namespaces": {
//!     "users": {
//!       "hits_l1": 0, "hits_store": 120, "misses": 8, "stores": 8, "errors": 0,
//!       "stale_served": 0, "shape_mismatches": 0, "refreshes": 0, "lock_waits": 0,
//!       "read_seconds": { "buckets": [0, 0, "...", 0], "count": 128, "sum": 0.041 }
//!     }
//!   }
//! }
//! ```
//!
//! `at_ms` is the publisher's clock (rates are differences of one process's snapshots, so
//! clocks need not agree). `latency_bounds_seconds` and `read_seconds` (the read latency
//! histogram: `buckets[i]` counts reads above bound `i - 1` and at most bound `i`, the last
//! bucket those above every bound) are there only when the application is built with the
//! feature `metrics`; readers sum buckets across processes and interpolate p50/p99 as
//! PromQL's `histogram_quantile` does. Readers ignore fields they do not know.
//!
//! The embedded store has no publisher: it lives inside one process, where `/metrics`
//! (feature `http`) shows the same figures.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{StatsKey, Store as _};
use crate::cache::{Cache, Inner};
use crate::counters::{Counters, NamespaceCounters};
use crate::error::{AuthCause, CacheError};
use crate::key::KeyBuilder;

/// The snapshot format this build writes (and the newest it reads).
pub(crate) const FORMAT: u32 = 1;
/// The field `cachectl top` sets while it watches.
pub(crate) const WATCH_FIELD: &str = "__watch";
/// How long the hash outlives the last refresh of a watcher (and a recreated hash lives).
pub(crate) const TTL: Duration = Duration::from_secs(5);
/// How often a watched process publishes.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);
/// How often an unwatched process asks whether it is watched.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// `{prefix}:__stats`.
pub(crate) fn stats_key(keys: &KeyBuilder) -> String {
    format!("{}__stats", keys.prefix_with_colon())
}

/// The stats key as the store takes it.
pub(crate) fn stats_key_of(key: &str) -> StatsKey<'_> {
    StatsKey {
        key,
        watch_field: WATCH_FIELD,
        ttl: TTL,
    }
}

/// One process's figures at one moment (see the module's notes for the JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Snapshot {
    pub(crate) format: u32,
    pub(crate) instance: String,
    /// This library's version in that process.
    pub(crate) version: String,
    /// When the snapshot was taken, Unix ms, by the publisher's clock.
    pub(crate) at_ms: u64,
    pub(crate) circuit_open: bool,
    pub(crate) l1_active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pool: Option<Pool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) l1_entries: Option<u64>,
    /// Upper bounds of `read_seconds`' buckets (feature `metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency_bounds_seconds: Option<Vec<f64>>,
    pub(crate) namespaces: BTreeMap<String, NamespaceFigures>,
}

/// The connection pool of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Pool {
    /// Connections opened.
    pub(crate) connections: u64,
    /// `REDIS_CONNECTION_POOL_MAX_SIZE`.
    pub(crate) max: u64,
    /// Connections that could take a request without sharing it.
    pub(crate) available: u64,
}

/// One namespace's cumulative counters in one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct NamespaceFigures {
    pub(crate) hits_l1: u64,
    pub(crate) hits_store: u64,
    pub(crate) misses: u64,
    pub(crate) stores: u64,
    pub(crate) errors: u64,
    pub(crate) stale_served: u64,
    pub(crate) shape_mismatches: u64,
    pub(crate) refreshes: u64,
    pub(crate) lock_waits: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) read_seconds: Option<Histogram>,
}

impl From<&NamespaceCounters> for NamespaceFigures {
    fn from(c: &NamespaceCounters) -> Self {
        Self {
            hits_l1: c.l1_hits,
            hits_store: c.hits.saturating_sub(c.l1_hits),
            misses: c.misses,
            stores: c.stores,
            errors: c.errors,
            stale_served: c.stale_served,
            shape_mismatches: c.shape_mismatches,
            refreshes: c.refreshes,
            lock_waits: c.lock_waits,
            read_seconds: None,
        }
    }
}

/// A latency histogram: counts per bucket (not cumulative), their total and sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<u64>,
    pub(crate) count: u64,
    /// Seconds.
    pub(crate) sum: f64,
}

/// The figures of `cache` now, as `instance` publishes them.
pub(crate) fn snapshot(cache: &Cache, instance: &str) -> Snapshot {
    #[cfg(feature = "metrics")]
    let (namespaces, bounds, l1_entries) = {
        let stats = crate::metrics::stats(cache);
        let namespaces = stats
            .namespaces
            .iter()
            .map(|(name, s)| {
                let mut figures = NamespaceFigures::from(&s.counters);
                figures.read_seconds = Some(Histogram {
                    buckets: s.read.buckets.clone(),
                    count: s.read.count,
                    sum: s.read.sum_seconds,
                });
                (name.clone(), figures)
            })
            .collect();
        (
            namespaces,
            Some(crate::metrics::LATENCY_BUCKETS.to_vec()),
            stats.gauges.l1_entries,
        )
    };
    #[cfg(not(feature = "metrics"))]
    let (namespaces, bounds, l1_entries) = (
        cache
            .counters()
            .iter()
            .map(|(name, c)| (name.clone(), NamespaceFigures::from(c)))
            .collect(),
        None,
        None,
    );
    Snapshot {
        format: FORMAT,
        instance: instance.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        at_ms: unix_ms(),
        circuit_open: cache.inner.backend.circuit_open(),
        l1_active: cache.l1_active(),
        pool: cache.pool_stats().map(|p| Pool {
            connections: p.created_connections as u64,
            max: p.max_connections as u64,
            available: p.available_connections as u64,
        }),
        l1_entries,
        latency_bounds_seconds: bounds,
        namespaces,
    }
}

pub(crate) use crate::backend::unix_ms;

// The states of `Inner::stats`, whether a cache's publisher runs.

/// Not started (or its runtime ended: the next call starts it again).
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
/// Never: the embedded store, or Redis refused the stats key (one warning said so).
const OFF: u8 = 2;

/// `namespace`'s counters in `cache`, where a cache is first used from inside a runtime
/// (once per call site, and per manual operation at the cost of one relaxed load): so the
/// publisher starts there too.
pub(crate) fn counters_of(cache: &Cache, namespace: &str) -> Arc<Counters> {
    start_once(cache);
    cache.counters_for(namespace)
}

/// Starts `cache`'s publisher, once, from inside a Tokio runtime (outside one a later call
/// starts it). Costs one relaxed load once started.
fn start_once(cache: &Cache) {
    let state = &cache.inner.stats;
    if state.load(Ordering::Relaxed) != IDLE {
        return;
    }
    if !cache.inner.backend.shared_by_processes() {
        // Nobody outside this process could read it.
        state.store(OFF, Ordering::Relaxed);
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if state
        .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let instance = instance_id(cache.id());
    runtime.spawn(run(Arc::downgrade(&cache.inner), instance));
}

/// Puts the state back to idle when the task is dropped with its runtime (a test's, say),
/// so that a call on another runtime starts a new one.
struct Reset(Weak<Inner>);

impl Drop for Reset {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let _ =
                inner
                    .stats
                    .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Asks every [`POLL`] whether a `top` watches; publishes every [`PERIOD`] while one does.
/// Holds the cache only during a request: it ends when the cache is dropped.
async fn run(weak: Weak<Inner>, instance: String) {
    let _reset = Reset(weak.clone());
    let mut watched = false;
    loop {
        let pause = {
            let Some(inner) = weak.upgrade() else { return };
            let cache = Cache { inner };
            match publish_once(&cache, &instance, watched).await {
                Some(now_watched) => {
                    watched = now_watched;
                    if watched {
                        PERIOD
                    } else {
                        POLL
                    }
                }
                None => {
                    cache.inner.stats.store(OFF, Ordering::Relaxed);
                    return;
                }
            }
        };
        // A runtime built without timers panics on `sleep`: then no publishing.
        let Ok(sleep) = std::panic::catch_unwind(|| tokio::time::sleep(pause)) else {
            return;
        };
        sleep.await;
    }
}

/// One request: the snapshot and the question when `watched`, else the question alone.
/// `None` when Redis refuses the key for good (stop).
async fn publish_once(cache: &Cache, instance: &str, watched: bool) -> Option<bool> {
    // While the breaker is open, calls bypass Redis; so does this (it must not probe).
    if cache.inner.backend.circuit_open() {
        return Some(false);
    }
    let key = stats_key(cache.keys());
    let body = if watched {
        serde_json::to_vec(&snapshot(cache, instance)).ok()
    } else {
        None
    };
    match cache
        .inner
        .backend
        .publish_stats(stats_key_of(&key), instance, body.as_deref())
        .await
    {
        Ok(watched) => Some(watched),
        Err(
            e @ (CacheError::Auth {
                cause: AuthCause::Permission,
                ..
            }
            | CacheError::WrongType),
        ) => {
            tracing::warn!(
                target: "cache_runtime::stats",
                key = %key,
                error = %e,
                "cannot publish figures for `cachectl top` (it will not show this process): allow this Redis user HSET, HEXISTS and PEXPIRE on the key, or free the key if something else uses it"
            );
            None
        }
        Err(e) => {
            tracing::debug!(target: "cache_runtime::stats", error = %e, "stats not published this time");
            Some(false)
        }
    }
}

/// `{host}:{pid}:{n}`: unique among live processes (and caches within one).
fn instance_id(serial: u64) -> String {
    format!("{}:{}:{serial}", host_name(), std::process::id())
}

/// The host's name, reduced to characters safe in a hash field and a terminal.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_tolerate_unknown_fields() {
        let mut s = Snapshot {
            format: FORMAT,
            instance: "h:1:1".into(),
            at_ms: 5,
            ..Snapshot::default()
        };
        s.namespaces.insert(
            "users".into(),
            NamespaceFigures {
                hits_store: 3,
                misses: 1,
                ..NamespaceFigures::default()
            },
        );
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["namespaces"]["users"]["hits_store"], 3);
        assert!(json.get("pool").is_none(), "absent, not null: {json}");
        let mut extended = json.clone();
        extended["from_the_future"] = serde_json::json!(true);
        let back: Snapshot = serde_json::from_value(extended).unwrap_or_default();
        assert_eq!(back, s);
    }

    #[test]
    fn instance_ids_are_safe_field_names() {
        let id = instance_id(7);
        assert!(id.ends_with(&format!(":{}:7", std::process::id())), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_graphic()), "{id}");
        assert_ne!(id, WATCH_FIELD);
    }

    #[test]
    fn the_embedded_store_never_publishes() {
        let cache = Cache::in_memory();
        start_once(&cache);
        assert_eq!(cache.inner.stats.load(Ordering::Relaxed), OFF);
    }
}
