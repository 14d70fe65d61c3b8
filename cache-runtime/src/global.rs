//! The process-wide cache used by decorated functions.

use std::sync::OnceLock;

use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::store::Cache;

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
