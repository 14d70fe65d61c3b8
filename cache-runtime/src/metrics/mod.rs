//! Metrics and tracing spans of cache operations.
//!
//! # Metrics (cargo feature `metrics`; `http` turns it on)
//!
//! The library emits through the [`metrics`](https://docs.rs/metrics) facade; the
//! application installs the exporter it wants (`metrics-exporter-prometheus`, an
//! OpenTelemetry bridge, ...) **before the first cache call**: handles are registered once
//! per namespace, not per call, so a recorder installed later sees only the gauges.
//! The same figures are kept in process and rendered by `render` (what
//! `cache_runtime::http::metrics_routes` serves at `/metrics`), which needs no recorder.
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `cache_hits_total` | counter | `namespace`, `tier` (`l1`, `store`) | reads that found a fresh value, in the L1 or in the store (Redis or the embedded one) |
//! | `cache_misses_total` | counter | `namespace` | reads that found nothing usable (absent, expired, undecodable, another shape, stale) |
//! | `cache_stores_total` | counter | `namespace` | values written |
//! | `cache_errors_total` | counter | `namespace` | cache operations that failed (read, encode, write; the call still returned its result) |
//! | `cache_stale_served_total` | counter | `namespace` | calls answered with a value past its TTL (`fail_safe`, `soft_timeout`); also a miss |
//! | `cache_shape_mismatches_total` | counter | `namespace` | misses on a value written for another shape of the type (also a miss) |
//! | `cache_refreshes_total` | counter | `namespace` | bodies run in the background (`refresh_ahead`, after a soft timeout) |
//! | `cache_lock_waits_total` | counter | `namespace` | misses that waited for another process's body (`distributed_lock`) |
//! | `cache_read_duration_seconds` | histogram | `namespace` | one store read (round trip and decoding; L1 hits are counted, not timed) |
//! | `cache_write_duration_seconds` | histogram | `namespace` | one store write (fence, round trip), failed ones included |
//! | `cache_body_duration_seconds` | histogram | `namespace` | one run of a decorated function's body on a miss |
//! | `cache_circuit_open` | gauge | | 1 while calls bypass Redis after repeated faults, else 0 |
//! | `cache_pool_connections` | gauge | | Redis connections opened (absent for the embedded store) |
//! | `cache_pool_max_connections` | gauge | | `REDIS_CONNECTION_POOL_MAX_SIZE` |
//! | `cache_l1_entries`, `cache_l1_bytes` | gauge | | what the L1 holds, when one is configured |
//! | `cache_evictions_total` | counter | | entries the embedded store evicted for room; never for Redis, whose `evicted_keys` is server-wide: read it from a Redis exporter |
//!
//! Labels are bounded: namespaces only, never keys or user ids. Gauges are refreshed once
//! a second by a task the first decorated call starts (or by `publish_gauges`), and at
//! every `render`.
//!
//! # Spans (always, through `tracing`)
//!
//! Named after OpenTelemetry's semantic conventions, so a `tracing-opentelemetry` layer
//! exports them as they are; all at DEBUG, so a subscriber at INFO pays a level check:
//!
//! - `cache.call` (target `cache_runtime::call`): one decorated call, the parent of its
//!   body's spans and of its Redis round trips. Fields: `db.system.name` (`redis` or
//!   `embedded`), `db.operation.name` (`GET`), `server.address`, `server.port` (Redis),
//!   `code.function.name`, `cache.namespace`, `cache.outcome` (`hit`, `miss`, `stale`,
//!   `error`: the cache failed and the body ran). Never a value, never a key: keys (they
//!   carry user ids) are only in the DEBUG events of `cache_runtime::store` (`hit`, `miss`,
//!   `store`), which happen inside this span and so become its events when enabled.
//! - `redis.request` (target `cache_runtime::redis`): one Redis round trip (a command or a
//!   pipeline). Fields: `otel.name` and `db.operation.name` (`GET`, or `BATCH GET` /
//!   `BATCH` for a pipeline, as the conventions name batches), `db.operation.batch.size`,
//!   `db.query.summary` (the command names, e.g. `SET PUBLISH`: no arguments),
//!   `otel.kind` (`client`), `db.system.name`, `server.address`, `server.port`, and on
//!   failure `otel.status_code` (`ERROR`) and `error.type`.

pub(crate) mod spans;

#[cfg(feature = "metrics")]
mod histogram;
#[cfg(feature = "metrics")]
mod prometheus;

#[cfg(feature = "metrics")]
pub use self::enabled::*;

#[cfg(feature = "metrics")]
mod enabled {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::histogram::{Histogram, HistogramSnapshot, BOUNDS_SECONDS};
    use crate::backend::Store as _;
    use crate::cache::Cache;
    use crate::counters::NamespaceCounters;

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
        L1_BYTES = "cache_l1_bytes", "Bytes (keys and values) held by the in-process L1.";
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
            let counter =
                |def: Def| metrics::counter!(def.name, "namespace" => namespace.to_owned());
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

    /// One namespace's figures at one moment.
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[non_exhaustive]
    pub(crate) struct NamespaceStats {
        pub(crate) counters: NamespaceCounters,
        pub(crate) read: HistogramSnapshot,
        pub(crate) write: HistogramSnapshot,
        pub(crate) body: HistogramSnapshot,
    }

    /// The cache's own state (not per namespace).
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[non_exhaustive]
    pub(crate) struct Gauges {
        pub(crate) circuit_open: bool,
        /// Redis only.
        pub(crate) pool_connections: Option<u64>,
        pub(crate) pool_max_connections: Option<u64>,
        /// With an L1 only (and once the L1 reports its size).
        pub(crate) l1_entries: Option<u64>,
        pub(crate) l1_bytes: Option<u64>,
        /// Only for a store that reports them (see [`store_evictions`]).
        pub(crate) evictions: Option<u64>,
    }

    /// Everything `/metrics` renders, serialisable: the crate-internal source for any
    /// publisher of figures (a stats key that `cachectl top` reads, say).
    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[non_exhaustive]
    pub(crate) struct Stats {
        /// `redis` or `embedded`.
        pub(crate) backend: String,
        pub(crate) namespaces: BTreeMap<String, NamespaceStats>,
        pub(crate) gauges: Gauges,
    }

    /// The figures of `cache` now.
    pub(crate) fn stats(cache: &Cache) -> Stats {
        let namespaces = cache
            .inner
            .counters
            .all()
            .iter()
            .map(|(ns, c)| {
                let stats = NamespaceStats {
                    counters: c.snapshot(),
                    read: c.metrics.read.snapshot(),
                    write: c.metrics.write.snapshot(),
                    body: c.metrics.body.snapshot(),
                };
                (ns.clone(), stats)
            })
            .collect();
        Stats {
            backend: cache.backend_kind().to_owned(),
            namespaces,
            gauges: gauges(cache),
        }
    }

    fn gauges(cache: &Cache) -> Gauges {
        let pool = cache.pool_stats();
        let l1 = l1_usage(cache);
        Gauges {
            circuit_open: cache.inner.backend.circuit_open(),
            pool_connections: pool.map(|p| p.created_connections as u64),
            pool_max_connections: pool.map(|p| p.max_connections as u64),
            l1_entries: l1.map(|(n, _)| n),
            l1_bytes: l1.map(|(_, b)| b),
            evictions: store_evictions(cache),
        }
    }

    /// What the L1 holds (entries, bytes). The L1 only counts that in its own tests so far:
    /// `None` until `l1.rs` offers a crate-visible `usage()`, then one line here.
    fn l1_usage(cache: &Cache) -> Option<(u64, u64)> {
        let (entries, bytes) = cache.inner.l1.as_ref()?.usage();
        Some((entries as u64, bytes))
    }

    /// Entries the store evicted for room: the embedded store counts them; Redis cannot
    /// attribute its server-wide `evicted_keys` to this cache (`None`).
    fn store_evictions(cache: &Cache) -> Option<u64> {
        use crate::backend::Store as _;
        cache.inner.backend.evictions()
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]) of `cache`: every
    /// metric of the module's table, from the in-process figures (no recorder needed).
    pub fn render(cache: &Cache) -> String {
        super::prometheus::render(&stats(cache))
    }

    /// Sets the facade's gauges from `cache` now. A task does it once a second from the
    /// first decorated call on; call this for a cache used only through manual operations,
    /// or to refresh right before an export.
    pub fn publish_gauges(cache: &Cache) {
        let g = gauges(cache);
        metrics::gauge!(CIRCUIT_OPEN.name).set(f64::from(u8::from(g.circuit_open)));
        let optional = [
            (POOL_CONNECTIONS, g.pool_connections),
            (POOL_MAX_CONNECTIONS, g.pool_max_connections),
            (L1_ENTRIES, g.l1_entries),
            (L1_BYTES, g.l1_bytes),
        ];
        for (def, value) in optional {
            if let Some(v) = value {
                metrics::gauge!(def.name).set(v as f64);
            }
        }
        if let Some(n) = g.evictions {
            metrics::counter!(EVICTIONS.name).absolute(n);
        }
    }

    /// How often the gauge task publishes.
    const GAUGE_PERIOD: Duration = Duration::from_secs(1);

    /// Starts the task that publishes `cache`'s gauges (once per cache; it ends with the
    /// cache). Outside a Tokio runtime with timers, nothing (a later call may start it).
    pub(crate) fn watch(cache: &Cache) {
        let flag = &cache.inner.counters.watching;
        // A plain load first: this runs once per call site, and a swap would bounce the
        // cache line between cores.
        if flag.load(Ordering::Relaxed) || flag.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            flag.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&cache.inner);
        runtime.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                publish_gauges(&Cache { inner });
                // A runtime built without timers panics on `sleep`: then no refresh.
                let Ok(sleep) = std::panic::catch_unwind(|| tokio::time::sleep(GAUGE_PERIOD))
                else {
                    return;
                };
                sleep.await;
            }
        });
    }
}
