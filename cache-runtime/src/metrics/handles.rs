//! The facade's handles of one namespace (registered once, used on every call) and the
//! metric definitions they and the renderer share. A leaf: the per-namespace counters hold
//! these, so nothing here may reach back to the cache.

use std::time::Duration;

use super::histogram::{Histogram, HistogramSnapshot, BOUNDS_SECONDS};

/// One metric's name and help text, shared by the facade and the renderer.
#[derive(Clone, Copy)]
pub(crate) struct Def {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
}

macro_rules! defs {
    ($($id:ident = $name:literal, $help:literal;)*) => {
        $(pub(crate) const $id: Def = Def { name: $name, help: $help };)*
    };
}

defs! {
    HITS = "cache_hits_total", "Reads that found a fresh value, by tier (l1: the in-process L1; store: Redis or the embedded store).";
    MISSES = "cache_misses_total", "Reads that found nothing usable (absent, expired, undecodable, another shape, or stale).";
    STORES = "cache_stores_total", "Values written to the store.";
    ERRORS = "cache_errors_total", "Cache operations that failed (the call still returned its result).";
    STALE_SERVED = "cache_stale_served_total", "Calls answered with a value past its TTL (fail_safe, soft_timeout); also counted as misses.";
    SHAPE_MISMATCHES = "cache_shape_mismatches_total", "Misses on a value written for another shape of its type, by another build.";
    REFRESHES = "cache_refreshes_total", "Bodies run in the background to renew an entry (refresh_ahead, or after a soft timeout).";
    LOCK_WAITS = "cache_lock_waits_total", "Misses that waited for another process running the same body (distributed_lock).";
    READ_SECONDS = "cache_read_duration_seconds", "Duration of one store read, decoding included (L1 hits are counted, not timed).";
    WRITE_SECONDS = "cache_write_duration_seconds", "Duration of one store write (failed ones included).";
    BODY_SECONDS = "cache_body_duration_seconds", "Duration of one run of a decorated function's body on a miss.";
    CIRCUIT_OPEN = "cache_circuit_open", "1 while calls bypass Redis after repeated connection faults, else 0.";
    POOL_CONNECTIONS = "cache_pool_connections", "Redis connections opened.";
    POOL_MAX_CONNECTIONS = "cache_pool_max_connections", "Most Redis connections the pool may open (REDIS_CONNECTION_POOL_MAX_SIZE).";
    L1_ENTRIES = "cache_l1_entries", "Entries held by the in-process L1.";
    L1_BYTES = "cache_l1_bytes", "Bytes the in-process L1 counts against CACHE_L1_MAX_BYTES (keys, and each value twice: its bytes and room for its decoded copy).";
    EVICTIONS = "cache_evictions_total", "Entries the embedded store evicted to stay within its bounds.";
}

/// The upper bounds (seconds) of the latency histograms' buckets, 1 µs to 10 s: give
/// them to the exporter (e.g. `PrometheusBuilder::set_buckets_for_metric` with a
/// `_seconds` suffix matcher) so its buckets match `/metrics`.
pub const LATENCY_BUCKETS: &[f64] = &BOUNDS_SECONDS;

/// The `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A latency histogram of one namespace: in process and through the facade.
pub(crate) struct Latency {
    local: Histogram,
    facade: metrics::Histogram,
}

impl Latency {
    fn new(def: Def, namespace: &str) -> Self {
        Self {
            local: Histogram::default(),
            facade: metrics::histogram!(def.name, "namespace" => namespace.to_owned()),
        }
    }

    #[inline]
    pub(crate) fn record(&self, d: Duration) {
        self.local.record(d);
        self.facade.record(d.as_secs_f64());
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        self.local.snapshot()
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency").finish_non_exhaustive()
    }
}

/// One namespace's facade handles, registered once (labels are built here, never per
/// call), and its latency histograms.
#[derive(Debug)]
pub(crate) struct NamespaceMetrics {
    pub(crate) hits_l1: metrics::Counter,
    pub(crate) hits_store: metrics::Counter,
    pub(crate) misses: metrics::Counter,
    pub(crate) stores: metrics::Counter,
    pub(crate) errors: metrics::Counter,
    pub(crate) stale_served: metrics::Counter,
    pub(crate) shape_mismatches: metrics::Counter,
    pub(crate) refreshes: metrics::Counter,
    pub(crate) lock_waits: metrics::Counter,
    pub(crate) read: Latency,
    pub(crate) write: Latency,
    pub(crate) body: Latency,
}

impl NamespaceMetrics {
    pub(crate) fn new(namespace: &str) -> Self {
        describe();
        let counter = |def: Def| metrics::counter!(def.name, "namespace" => namespace.to_owned());
        let hits = |tier: &'static str| metrics::counter!(HITS.name, "namespace" => namespace.to_owned(), "tier" => tier);
        Self {
            hits_l1: hits("l1"),
            hits_store: hits("store"),
            misses: counter(MISSES),
            stores: counter(STORES),
            errors: counter(ERRORS),
            stale_served: counter(STALE_SERVED),
            shape_mismatches: counter(SHAPE_MISMATCHES),
            refreshes: counter(REFRESHES),
            lock_waits: counter(LOCK_WAITS),
            read: Latency::new(READ_SECONDS, namespace),
            write: Latency::new(WRITE_SECONDS, namespace),
            body: Latency::new(BODY_SECONDS, namespace),
        }
    }
}

/// Describes every metric to the current recorder. Cheap and idempotent; run whenever
/// handles are registered, so a recorder installed later (or a local one) has them too.
fn describe() {
    for def in [
        HITS,
        MISSES,
        STORES,
        ERRORS,
        STALE_SERVED,
        SHAPE_MISMATCHES,
        REFRESHES,
        LOCK_WAITS,
        EVICTIONS,
    ] {
        metrics::describe_counter!(def.name, metrics::Unit::Count, def.help);
    }
    for def in [READ_SECONDS, WRITE_SECONDS, BODY_SECONDS] {
        metrics::describe_histogram!(def.name, metrics::Unit::Seconds, def.help);
    }
    for def in [
        CIRCUIT_OPEN,
        POOL_CONNECTIONS,
        POOL_MAX_CONNECTIONS,
        L1_ENTRIES,
    ] {
        metrics::describe_gauge!(def.name, metrics::Unit::Count, def.help);
    }
    metrics::describe_gauge!(L1_BYTES.name, metrics::Unit::Bytes, L1_BYTES.help);
}
