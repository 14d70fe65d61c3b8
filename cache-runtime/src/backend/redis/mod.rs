//! Redis over TCP or TLS (rustls), one module per concern:
//!
//! - `client.rs`: the driver's client from the configuration (credentials, TLS, TCP);
//! - `pool.rs`: the connections ("lanes") and which one a request takes;
//! - `guard.rs`: the timer and circuit breaker every request runs under (`breaker.rs`);
//! - `errors.rs`: driver errors classified into [`CacheError`]s that say what to do;
//! - `commands.rs`: the operations of [`Store`](super::Store) as Redis commands;
//! - `pubsub.rs`: invalidations for the L1 over a pub/sub channel;
//! - `faults.rs`: fault injection for soak tests (feature `testing`).

mod breaker;
mod client;
mod commands;
mod errors;
#[cfg(feature = "testing")]
pub(crate) mod faults;
mod guard;
mod pool;
mod pubsub;

use std::sync::Arc;

use self::errors::Classifier;
use self::guard::Guard;
use self::pool::Pool;
use self::pubsub::PubSub;
use crate::config::RedisConfig;
use crate::error::CacheError;

/// A standalone Redis server.
pub(crate) struct RedisBackend {
    config: RedisConfig,
    /// The URL without its password.
    shown: String,
    classifier: Classifier,
    pool: Arc<Pool>,
    guard: Guard,
    /// Invalidation announcements and their listener, when an L1 is configured.
    pubsub: Option<PubSub>,
}

impl RedisBackend {
    /// Connects lazily: only invalid settings (unreadable certificates) fail here.
    pub(crate) fn new(
        config: &RedisConfig,
        key_prefix: &str,
        with_l1: bool,
    ) -> Result<Self, CacheError> {
        client::install_crypto_provider();
        let classifier = Classifier::new(
            &config.host,
            config.port,
            config.endpoint(),
            config.tls.is_some(),
            config.socket_timeout,
        );
        let client = client::build_client(config, &classifier)?;
        client::warn_insecure_tls(config);
        tracing::info!(target: "cache_runtime::connection", redis = %config, "using Redis");
        let pubsub =
            with_l1.then(|| PubSub::new(key_prefix, client.clone(), config.connect_timeout));
        Ok(Self {
            shown: config.to_string(),
            pool: Arc::new(Pool::new(
                client,
                classifier.clone(),
                config.pool_max_size.get(),
                config.connect_timeout,
            )),
            guard: Guard::new(config.socket_timeout),
            classifier,
            config: config.clone(),
            pubsub,
        })
    }
}
