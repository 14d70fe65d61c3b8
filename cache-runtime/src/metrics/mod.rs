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
pub(crate) mod handles;
#[cfg(feature = "metrics")]
mod histogram;
#[cfg(feature = "metrics")]
mod prometheus;

#[cfg(feature = "metrics")]
pub use self::enabled::*;
#[cfg(feature = "metrics")]
pub use self::handles::{CONTENT_TYPE, LATENCY_BUCKETS};

#[cfg(feature = "metrics")]
mod enabled {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use super::handles::*;
    use super::histogram::HistogramSnapshot;
    use crate::backend::Store as _;
    use crate::cache::Cache;
    use crate::counters::NamespaceCounters;

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
