//! The process-wide cache used by decorated functions.

use std::sync::OnceLock;

use crate::cache::Cache;
use crate::config::CacheConfig;
use crate::error::CacheError;

enum Global {
    Ready(Cache),
    /// The environment's configuration was invalid: decorated functions run uncached.
    Disabled,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Sets up the global cache explicitly, at start-up, before the first cached call.
///
/// ```no_run
/// # fn main() -> Result<(), cache_runtime::CacheError> {
/// let config = cache_runtime::CacheConfig::from_env()?;
/// cache_runtime::init(config)?;
/// # Ok(()) }
/// ```
///
/// Without it, the first cached call reads the environment ([`CacheConfig::from_env`]).
pub fn init(config: CacheConfig) -> Result<Cache, CacheError> {
    let cache = Cache::new(config)?;
    let mut installed = false;
    GLOBAL.get_or_init(|| {
        installed = true;
        Global::Ready(cache.clone())
    });
    if installed {
        Ok(cache)
    } else {
        Err(CacheError::AlreadyInitialized)
    }
}

/// The global cache, set up from the environment on first use unless [`init`] ran.
///
/// `None` when the environment's configuration is invalid (logged once, at error level):
/// decorated functions then run their bodies uncached rather than fail.
pub fn global() -> Option<&'static Cache> {
    let global = GLOBAL.get_or_init(|| match Cache::from_env() {
        Ok(cache) => Global::Ready(cache),
        Err(e) => {
            tracing::error!(
                target: "cache_runtime::connection",
                error = %e,
                "invalid cache configuration: cached functions run WITHOUT the cache until the process restarts with a valid configuration"
            );
            Global::Disabled
        }
    });
    match global {
        Global::Ready(cache) => Some(cache),
        Global::Disabled => None,
    }
}

tokio::task_local! {
    static SCOPED: Cache;
}

/// Scopes entered and not yet left, so calls outside any scope skip the task-local lookup.
static ACTIVE_SCOPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `future` with `cache` in place of the cache decorated functions would use (the
/// global one, or the one their `cache = …` option names), for tests.
///
/// The override holds for the task that awaits `future` (a Tokio task-local): decorated
/// calls made by tasks it spawns use their usual cache. Scopes nest (the innermost wins),
/// run in parallel (each test its own cache), and never touch the process-wide cache.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cache_runtime::{cache_result, with_cache, Cache};
///
/// #[cache_result(namespace = "analytics")]
/// async fn answer() -> u32 { 42 }
///
/// let cache = Cache::in_memory();
/// assert_eq!(with_cache(cache.clone(), answer()).await, 42);
/// assert_eq!(cache.counters()["analytics"].misses, 1, "the call used `cache`");
/// # });
/// ```
pub async fn with_cache<F: std::future::Future>(cache: Cache, future: F) -> F::Output {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            ACTIVE_SCOPES.fetch_sub(1, std::sync::atomic::Ordering::Release);
        }
    }
    ACTIVE_SCOPES.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let _leave = Leave;
    SCOPED.scope(cache, future).await
}

/// The cache of the innermost [`with_cache`] scope of this task, if any.
pub(crate) fn scoped() -> Option<Cache> {
    if ACTIVE_SCOPES.load(std::sync::atomic::Ordering::Acquire) == 0 {
        return None;
    }
    SCOPED.try_with(Cache::clone).ok()
}
