//! Hits, misses, stores and errors per namespace, in this process; with the feature
//! `metrics`, also emitted through the `metrics` facade at the same points (so the figures
//! agree) and timed into per-namespace latency histograms (see `crate::metrics`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The counters of one namespace.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Hits served by the store (Redis or the embedded one); `hits` in snapshots adds
    /// `l1_hits`, so an L1 hit costs one atomic add, not two.
    pub(crate) store_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) l1_hits: AtomicU64,
    pub(crate) shape_mismatches: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) lock_waits: AtomicU64,
    /// Facade handles (registered once, here, never per call) and latency histograms.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::handles::NamespaceMetrics,
}

/// A moment a latency is measured from: an `Instant` with the feature `metrics`, nothing
/// (and no clock read) without it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Stamp {
    #[inline]
    pub(crate) fn now() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }
}

/// Times one read until it is dropped (a read has many ways out). Empty without the
/// feature `metrics`.
#[must_use]
pub(crate) struct ReadTimer<'a> {
    #[cfg(feature = "metrics")]
    counters: &'a Counters,
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
    #[cfg(not(feature = "metrics"))]
    _counters: std::marker::PhantomData<&'a Counters>,
}

#[cfg(feature = "metrics")]
impl Drop for ReadTimer<'_> {
    fn drop(&mut self) {
        self.counters.metrics.read.record(self.start.elapsed());
    }
}

/// Emits `$handle` of the facade alongside an in-process counter (feature `metrics`).
macro_rules! emit {
    ($self:ident, $handle:ident) => {
        #[cfg(feature = "metrics")]
        $self.metrics.$handle.increment(1);
    };
}

impl Counters {
    pub(crate) fn new(namespace: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = namespace;
        Self {
            store_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            l1_hits: AtomicU64::new(0),
            shape_mismatches: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            lock_waits: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::handles::NamespaceMetrics::new(namespace),
        }
    }

    pub(crate) fn hit(&self) {
        self.store_hits.fetch_add(1, Ordering::Relaxed);
        emit!(self, hits_store);
    }
    pub(crate) fn l1_hit(&self) {
        self.l1_hits.fetch_add(1, Ordering::Relaxed);
        emit!(self, hits_l1);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        emit!(self, misses);
    }
    /// A miss because the value was written for another shape of the type.
    pub(crate) fn shape_mismatch(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.shape_mismatches.fetch_add(1, Ordering::Relaxed);
        emit!(self, misses);
        emit!(self, shape_mismatches);
    }
    pub(crate) fn store(&self) {
        self.stores.fetch_add(1, Ordering::Relaxed);
        emit!(self, stores);
    }
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        emit!(self, errors);
    }
    /// A call answered with a logically expired value (fail-safe, soft timeout).
    pub(crate) fn stale_served(&self) {
        self.stale_served.fetch_add(1, Ordering::Relaxed);
        emit!(self, stale_served);
    }
    /// A background refresh started (refresh ahead, or a body finishing after a soft
    /// timeout).
    pub(crate) fn refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        emit!(self, refreshes);
    }
    /// A miss that waited for another process's body (distributed single flight).
    pub(crate) fn lock_wait(&self) {
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
        emit!(self, lock_waits);
    }

    /// Starts timing a read (L1 or store, decoding included) into
    /// `cache_read_duration_seconds`.
    #[inline]
    pub(crate) fn time_read(&self) -> ReadTimer<'_> {
        ReadTimer {
            #[cfg(feature = "metrics")]
            counters: self,
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
            #[cfg(not(feature = "metrics"))]
            _counters: std::marker::PhantomData,
        }
    }

    /// A store write (successful or not) that started at `start`
    /// (`cache_write_duration_seconds`).
    #[inline]
    pub(crate) fn write_took(&self, start: std::time::Instant) {
        #[cfg(feature = "metrics")]
        self.metrics.write.record(start.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = start;
    }

    /// A body run that started at `start` (`cache_body_duration_seconds`).
    #[inline]
    pub(crate) fn body_took(&self, start: Stamp) {
        #[cfg(feature = "metrics")]
        self.metrics.body.record(start.at.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = start;
    }

    pub(crate) fn snapshot(&self) -> NamespaceCounters {
        let l1_hits = self.l1_hits.load(Ordering::Relaxed);
        let hits = self.store_hits.load(Ordering::Relaxed) + l1_hits;
        let misses = self.misses.load(Ordering::Relaxed);
        let reads = hits + misses;
        NamespaceCounters {
            hits,
            misses,
            stores: self.stores.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            l1_hits,
            shape_mismatches: self.shape_mismatches.load(Ordering::Relaxed),
            stale_served: self.stale_served.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            lock_waits: self.lock_waits.load(Ordering::Relaxed),
            hit_ratio: (reads > 0).then(|| hits as f64 / reads as f64),
        }
    }
}

/// A snapshot of one namespace's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Misses because the value was written for another shape of its type, by another
    /// build (included in `misses`).
    pub shape_mismatches: u64,
    /// Calls answered with a value past its TTL because the body failed or was slow
    /// (`fail_safe`, `soft_timeout`); such calls also count as a miss.
    pub stale_served: u64,
    /// Bodies run in the background to renew an entry (`refresh_ahead`, or a body that
    /// finished after a soft timeout returned the stale value).
    pub refreshes: u64,
    /// Misses that waited for another process running the same body
    /// (`distributed_lock`).
    pub lock_waits: u64,
    /// `hits / (hits + misses)`, `None` before the first read.
    pub hit_ratio: Option<f64>,
}

/// Every namespace's counters. Read on every call, written once per new namespace:
/// copy-on-write.
#[derive(Default)]
pub(crate) struct CounterSet {
    map: ArcSwap<HashMap<String, Arc<Counters>>>,
    /// Whether the task that refreshes this cache's facade gauges was started.
    #[cfg(feature = "metrics")]
    pub(crate) watching: std::sync::atomic::AtomicBool,
}

impl CounterSet {
    pub(crate) fn of(&self, namespace: &str) -> Arc<Counters> {
        if let Some(c) = self.map.load().get(namespace) {
            return Arc::clone(c);
        }
        self.map.rcu(|map| {
            let mut next = HashMap::clone(map);
            next.entry(namespace.to_owned())
                .or_insert_with(|| Arc::new(Counters::new(namespace)));
            next
        });
        self.map
            .load()
            .get(namespace)
            .map_or_else(|| Arc::new(Counters::new(namespace)), Arc::clone)
    }

    /// Every namespace's counters (and, with `metrics`, histograms), as they are now.
    #[cfg(feature = "metrics")]
    pub(crate) fn all(&self) -> Arc<HashMap<String, Arc<Counters>>> {
        self.map.load_full()
    }

    pub(crate) fn snapshot(&self) -> HashMap<String, NamespaceCounters> {
        self.map
            .load()
            .iter()
            .map(|(ns, c)| (ns.clone(), c.snapshot()))
            .collect()
    }
}
