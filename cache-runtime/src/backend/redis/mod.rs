//! Redis over TCP or TLS (rustls), one module per concern:
//!
//! - `client.rs`: the driver's client from the configuration (credentials, TLS, TCP);
//! - `pool.rs`: the connections ("lanes") to a standalone server and which one a request takes;
//! - `batch.rs`: concurrent GETs as one MGET; which keys hold large values;
//! - `ranged.rs`: large values read in ranges, so Redis never stalls others copying one;
//! - `cluster.rs`: a Redis Cluster (the driver's cluster connection, per-node connections);
//! - `topology.rs`: standalone or cluster, decided once (`REDIS_CLUSTER`, or asked at connect);
//! - `guard.rs`: the timer and circuit breaker every request runs under (`breaker.rs`);
//! - `errors.rs`: driver errors classified into [`CacheError`]s that say what to do;
//! - `commands.rs`: the operations of [`Store`](super::Store) as Redis commands;
//! - `tracking.rs`: invalidations for the L1 by server-assisted client tracking (RESP3);
//! - `pubsub.rs`: the announcements every write carries, and the L1's fallback listener;
//! - `lock.rs`: the distributed single-flight lock (SET NX PX, released by its owner);
//! - `faults.rs`: fault injection for soak tests (feature `testing`).

mod batch;
mod breaker;
mod client;
mod cluster;
mod commands;
mod errors;
#[cfg(feature = "testing")]
pub(crate) mod faults;
mod guard;
mod lock;
mod pool;
mod pubsub;
mod ranged;
mod topology;
mod tracking;

use std::sync::{Arc, OnceLock};

use self::errors::Classifier;
use self::guard::Guard;
use self::pool::Pool;
use self::pubsub::PubSub;
use self::topology::Topology;
use self::tracking::Tracking;
use crate::config::{ClusterMode, RedisConfig};
use crate::error::CacheError;

/// A Redis server or cluster.
pub(crate) struct RedisBackend {
    config: RedisConfig,
    /// The URL without its password.
    shown: String,
    classifier: Classifier,
    /// Connections to the configured server (and the first contact with a cluster).
    pool: Arc<Pool>,
    /// Standalone or cluster: set at construction (`REDIS_CLUSTER=true`) or at the first
    /// connect (asked of the server).
    topology: OnceLock<Topology>,
    discovering: tokio::sync::Mutex<()>,
    guard: Guard,
    /// GETs queued while a read is in flight, sent as one MGET (standalone only).
    batch: batch::Batcher,
    /// Reads of keys known to hold large values, in ranges (standalone only).
    ranged: ranged::Ranged,
    /// Invalidation announcements, made by every writer (a peer's L1 may be on the
    /// pub/sub fallback), and the fallback listener.
    pubsub: PubSub,
    /// The L1's listener (client tracking, else `pubsub`), when an L1 is configured.
    tracking: Option<Tracking>,
    /// Whether this user may PUBLISH announcements (`commands.rs`, `may_announce`).
    announce: std::sync::atomic::AtomicU8,
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
        // The listener tracks (or subscribes to) the server, or starts from any seed node
        // of a cluster.
        let (pubsub, tracking) = if with_l1 {
            let mut nodes = vec![client.clone()];
            for seed in config.seeds().iter().skip(1) {
                let node = config.for_node(seed);
                nodes.push(client::build_client(&node, &classifier)?);
            }
            let tracking = Tracking::new(key_prefix, &nodes, config, &classifier)?;
            (
                PubSub::new(key_prefix, nodes, config.connect_timeout),
                Some(tracking),
            )
        } else {
            // Announces only.
            (
                PubSub::new(key_prefix, Vec::new(), config.connect_timeout),
                None,
            )
        };
        let topology = OnceLock::new();
        if config.cluster == ClusterMode::Enabled {
            let cluster = cluster::Cluster::new(config, classifier.clone())?;
            let _ = topology.set(Topology::Cluster(Arc::new(cluster)));
        }
        Ok(Self {
            shown: config.to_string(),
            pool: Arc::new(Pool::new(
                client,
                classifier.clone(),
                config.pool_max_size.get(),
                config.connect_timeout,
            )),
            topology,
            discovering: tokio::sync::Mutex::new(()),
            guard: Guard::new(config.socket_timeout),
            batch: batch::Batcher::new(),
            ranged: ranged::Ranged::new(),
            classifier,
            config: config.clone(),
            pubsub,
            tracking,
            announce: std::sync::atomic::AtomicU8::new(0),
        })
    }
}
