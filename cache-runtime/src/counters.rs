//! Hits, misses, stores and errors per namespace, in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The counters of one namespace.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) l1_hits: AtomicU64,
    pub(crate) shape_mismatches: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) lock_waits: AtomicU64,
}

impl Counters {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn l1_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.l1_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
    /// A miss because the value was written for another shape of the type.
    pub(crate) fn shape_mismatch(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.shape_mismatches.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn store(&self) {
        self.stores.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    /// A call answered with a logically expired value (fail-safe, soft timeout).
    pub(crate) fn stale_served(&self) {
        self.stale_served.fetch_add(1, Ordering::Relaxed);
    }
    /// A background refresh started (refresh ahead, or a body finishing after a soft
    /// timeout).
    pub(crate) fn refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }
    /// A miss that waited for another process's body (distributed single flight).
    pub(crate) fn lock_wait(&self) {
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> NamespaceCounters {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let reads = hits + misses;
        NamespaceCounters {
            hits,
            misses,
            stores: self.stores.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            l1_hits: self.l1_hits.load(Ordering::Relaxed),
            shape_mismatches: self.shape_mismatches.load(Ordering::Relaxed),
            stale_served: self.stale_served.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            lock_waits: self.lock_waits.load(Ordering::Relaxed),
            hit_ratio: (reads > 0).then(|| hits as f64 / reads as f64),
        }
    }
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
pub(crate) struct CounterSet(ArcSwap<HashMap<String, Arc<Counters>>>);

impl CounterSet {
    pub(crate) fn of(&self, namespace: &str) -> Arc<Counters> {
        if let Some(c) = self.0.load().get(namespace) {
            return Arc::clone(c);
        }
        self.0.rcu(|map| {
            let mut next = HashMap::clone(map);
            next.entry(namespace.to_owned()).or_default();
            next
        });
        self.0
            .load()
            .get(namespace)
            .map_or_else(Arc::default, Arc::clone)
    }

    pub(crate) fn snapshot(&self) -> HashMap<String, NamespaceCounters> {
        self.0
            .load()
            .iter()
            .map(|(ns, c)| (ns.clone(), c.snapshot()))
            .collect()
    }
}
