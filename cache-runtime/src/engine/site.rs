//! What an attribute knows at compile time about one function ([`Site`]), and the state
//! derived from it once: the key of its argument hash, and (per cache) its key parts,
//! counters and TTL.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::cache::Cache;
use crate::counters::Counters;
use crate::key::site_key;
use crate::shape::SiteShapes;

/// One decorated function. Built by expansions with [`Site::new`] and the `with_*`
/// methods, so fields can be added without changing what the attributes generate.
pub struct Site {
    /// Validated `[a-z0-9_-]+` by the macro.
    pub(crate) namespace: &'static str,
    /// `module_path!()::name`.
    pub(crate) function: &'static str,
    pub(crate) version: u32,
    /// The signature's tokens (argument and return types), so a changed signature never
    /// reads old values.
    pub(crate) fingerprint: &'static str,
    /// 0: the namespace's TTL strategy.
    pub(crate) ttl_secs: u64,
    /// The attribute's `cache = path` option: the cache this function uses.
    pub(crate) cache: Option<fn() -> &'static Cache>,
    /// The attribute's resilience options.
    options: Options,
    /// When a stale value was last logged (Unix ms): at most once per 10 s per function.
    pub(crate) stale_logged: std::sync::atomic::AtomicU64,
    key: OnceLock<[u8; 32]>,
    /// The stored type's shape folded into the key, per stored type (see `shape/`).
    pub(crate) shapes: SiteShapes,
    bound: OnceLock<Bound>,
    /// The same for the last [`crate::with_cache`] scope's cache that called it, so a
    /// scope (a test, a benchmark) does not rebuild key parts and look up counters per call.
    scoped: ArcSwapOption<Bound>,
}

/// The resilience options as written (resolved against a cache's defaults in [`Bound`]).
#[derive(Clone, Copy)]
struct Options {
    /// `fail_safe`, ms: `None` the configuration's default, `Some(0)` off.
    fail_safe_ms: Option<u64>,
    /// `soft_timeout`, ms (0: none).
    soft_timeout_ms: u64,
    /// `refresh_ahead` in thousandths of the TTL (0: none).
    refresh_ahead_permille: u16,
    /// `distributed_lock`: `None` the configuration's default, `Some(None)` off,
    /// `Some(Some(ms))` on with that lease (0: the configured lease).
    lock: Option<Option<u64>>,
}

/// A site's resilience options for one cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Resilience {
    /// Kept and served past the TTL this long when the body fails (zero: off).
    pub(crate) fail_safe: Duration,
    /// With a stale value, callers wait this long for the body, then get the stale value.
    pub(crate) soft_timeout: Option<Duration>,
    /// A hit past this fraction of the TTL starts one background refresh.
    pub(crate) refresh_ahead: Option<f64>,
    /// A miss takes a lock in the store for this lease (distributed single flight).
    pub(crate) lock_lease: Option<Duration>,
    /// Values are written in timed envelopes (fail-safe or refresh ahead is on, and the
    /// codec has envelopes).
    pub(crate) timed: bool,
}

/// What depends on the cache a site talks to.
pub(crate) struct Bound {
    /// Which cache this was computed for ([`Cache::id`]).
    cache: u64,
    pub(crate) head: String,
    pub(crate) tail: String,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ttl: Duration,
    pub(crate) resilience: Resilience,
}

/// A site's cache-dependent state: the one kept for its usual cache, or the one of a
/// [`crate::with_cache`] scope's cache.
#[derive(Clone)]
pub(crate) enum BoundRef<'a> {
    Kept(&'a Bound),
    Scoped(Arc<Bound>),
}

impl std::ops::Deref for BoundRef<'_> {
    type Target = Bound;
    fn deref(&self) -> &Bound {
        match self {
            Self::Kept(b) => b,
            Self::Scoped(b) => b,
        }
    }
}

impl Site {
    /// What expansions call.
    pub const fn new(
        namespace: &'static str,
        function: &'static str,
        version: u32,
        fingerprint: &'static str,
        ttl_secs: u64,
    ) -> Self {
        Self {
            namespace,
            function,
            version,
            fingerprint,
            ttl_secs,
            cache: None,
            options: Options {
                fail_safe_ms: None,
                soft_timeout_ms: 0,
                refresh_ahead_permille: 0,
                lock: None,
            },
            stale_logged: std::sync::atomic::AtomicU64::new(0),
            key: OnceLock::new(),
            shapes: SiteShapes::new(),
            bound: OnceLock::new(),
            scoped: ArcSwapOption::const_empty(),
        }
    }

    /// The attribute's `cache = path` option.
    #[must_use]
    pub const fn with_cache(mut self, cache: fn() -> &'static Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// `fail_safe = "2h"` (`0`: `fail_safe = false`, off whatever the configuration says).
    #[must_use]
    pub const fn with_fail_safe(mut self, ms: u64) -> Self {
        self.options.fail_safe_ms = Some(ms);
        self
    }

    /// `soft_timeout = "300ms"`.
    #[must_use]
    pub const fn with_soft_timeout(mut self, ms: u64) -> Self {
        self.options.soft_timeout_ms = ms;
        self
    }

    /// `refresh_ahead = 0.8`, in thousandths.
    #[must_use]
    pub const fn with_refresh_ahead(mut self, permille: u16) -> Self {
        self.options.refresh_ahead_permille = permille;
        self
    }

    /// `distributed_lock = true` (`lease_ms` 0: `CACHE_LOCK_LEASE`) or `= "30s"`.
    #[must_use]
    pub const fn with_distributed_lock(mut self, lease_ms: u64) -> Self {
        self.options.lock = Some(Some(lease_ms));
        self
    }

    /// `distributed_lock = false`.
    #[must_use]
    pub const fn without_distributed_lock(mut self) -> Self {
        self.options.lock = Some(None);
        self
    }

    /// The BLAKE3 key of this function's identity, computed once.
    pub(crate) fn site_key(&self) -> &[u8; 32] {
        self.key
            .get_or_init(|| site_key(self.function, self.version, self.fingerprint))
    }

    /// The cache a call uses: a [`crate::with_cache`] scope's, else the attribute's
    /// `cache = …`, else the global one (`None` when the global configuration is invalid).
    pub(crate) fn cache(&self) -> Option<Selected> {
        if let Some(cache) = crate::global::scoped() {
            return Some(Selected::Scoped(cache));
        }
        match self.cache {
            Some(f) => Some(Selected::Usual(f())),
            None => crate::global().map(Selected::Usual),
        }
    }

    fn compute(&self, cache: &Cache) -> Bound {
        // Once per site and cache: the cache's gauges start refreshing with its first call.
        #[cfg(feature = "metrics")]
        crate::metrics::watch(cache);
        let (head, tail) = cache
            .keys()
            .call_parts(self.namespace, self.function, self.version);
        Bound {
            cache: cache.id(),
            head,
            tail,
            counters: crate::stats_publisher::counters_of(cache, self.namespace),
            ttl: if self.ttl_secs == 0 {
                cache.ttl_for(self.namespace)
            } else {
                Duration::from_secs(self.ttl_secs)
            },
            resilience: self.resilience(cache),
        }
    }

    fn resilience(&self, cache: &Cache) -> Resilience {
        let defaults = &cache.config().resilience;
        let o = self.options;
        let fail_safe = o
            .fail_safe_ms
            .map_or(defaults.fail_safe, Duration::from_millis);
        let refresh_ahead =
            (o.refresh_ahead_permille > 0).then(|| f64::from(o.refresh_ahead_permille) / 1000.0);
        let lock_lease = match o.lock {
            None => defaults.distributed_lock.then_some(defaults.lock_lease),
            Some(None) => None,
            Some(Some(0)) => Some(defaults.lock_lease),
            Some(Some(ms)) => Some(Duration::from_millis(ms)),
        };
        let wants_time = !fail_safe.is_zero() || refresh_ahead.is_some();
        let plain = cache.codec() == crate::codec::CodecKind::JsonPlain;
        if wants_time && plain {
            tracing::warn!(
                target: "cache_runtime::store",
                function = self.function,
                "fail_safe and refresh_ahead need an envelope to record when a value expires, and CACHE_CODEC=json-plain has none: they are off for this function (use bincode or json)"
            );
        }
        let timed = wants_time && !plain;
        Resilience {
            fail_safe: if timed { fail_safe } else { Duration::ZERO },
            soft_timeout: (timed && o.soft_timeout_ms > 0)
                .then(|| Duration::from_millis(o.soft_timeout_ms)),
            refresh_ahead: refresh_ahead.filter(|_| timed),
            lock_lease,
            timed,
        }
    }

    /// Key parts, counters and TTL for the selected cache: computed once for the site's
    /// usual cache, and kept for the last scoped cache that called it.
    pub(crate) fn bound<'a>(&'a self, selected: &Selected) -> BoundRef<'a> {
        let kept = match selected {
            Selected::Usual(cache) => Some(self.bound.get_or_init(|| self.compute(cache))),
            Selected::Scoped(_) => self.bound.get(),
        };
        match kept {
            Some(kept) if kept.cache == selected.id() => BoundRef::Kept(kept),
            _ => {
                if let Some(last) = self.scoped.load_full().filter(|b| b.cache == selected.id()) {
                    return BoundRef::Scoped(last);
                }
                let fresh = Arc::new(self.compute(selected));
                self.scoped.store(Some(Arc::clone(&fresh)));
                BoundRef::Scoped(fresh)
            }
        }
    }
}

/// The cache of one call.
#[derive(Clone)]
pub(crate) enum Selected {
    Usual(&'static Cache),
    Scoped(Cache),
}

impl std::ops::Deref for Selected {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        match self {
            Self::Usual(c) => c,
            Self::Scoped(c) => c,
        }
    }
}
