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
    key: OnceLock<[u8; 32]>,
    /// The stored type's shape folded into the key, per stored type (see `shape/`).
    pub(crate) shapes: SiteShapes,
    bound: OnceLock<Bound>,
    /// The same for the last [`crate::with_cache`] scope's cache that called it, so a
    /// scope (a test, a benchmark) does not rebuild key parts and look up counters per call.
    scoped: ArcSwapOption<Bound>,
}

/// What depends on the cache a site talks to.
pub(crate) struct Bound {
    /// Which cache this was computed for ([`Cache::id`]).
    cache: u64,
    pub(crate) head: String,
    pub(crate) tail: String,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ttl: Duration,
}

/// A site's cache-dependent state: the one kept for its usual cache, or the one of a
/// [`crate::with_cache`] scope's cache.
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
        let (head, tail) = cache
            .keys()
            .call_parts(self.namespace, self.function, self.version);
        Bound {
            cache: cache.id(),
            head,
            tail,
            counters: cache.counters_for(self.namespace),
            ttl: if self.ttl_secs == 0 {
                cache.ttl_for(self.namespace)
            } else {
                Duration::from_secs(self.ttl_secs)
            },
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
