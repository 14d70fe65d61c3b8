//! Standalone or cluster: decided once per cache, by `REDIS_CLUSTER=true`, or by asking the
//! configured server at the first connect (`INFO cluster`), so that pointing a standalone
//! configuration at a cluster node either switches to cluster mode (`auto`, logged) or is
//! refused outright (`false`): never a silent partial failure where only one node's slots
//! are cached.

use std::sync::Arc;

use super::cluster::Cluster;
use super::RedisBackend;
use crate::backend::parse_info;
use crate::config::ClusterMode;
use crate::error::CacheError;

pub(crate) enum Topology {
    Standalone,
    Cluster(Arc<Cluster>),
    /// The server is a cluster node but the configuration forbids cluster mode: every
    /// operation fails with this reason.
    Refused(String),
}

impl RedisBackend {
    /// The topology, asked of the server on first use.
    pub(super) async fn topology(&self) -> Result<&Topology, CacheError> {
        if let Some(t) = self.topology.get() {
            return Ok(t);
        }
        let _one = self.discovering.lock().await;
        if let Some(t) = self.topology.get() {
            return Ok(t);
        }
        let found = self.discover().await?;
        Ok(self.topology.get_or_init(|| found))
    }

    /// The cluster, once the topology is known to be one.
    pub(super) fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self.topology.get() {
            Some(Topology::Cluster(c)) => Some(c),
            _ => None,
        }
    }

    async fn discover(&self) -> Result<Topology, CacheError> {
        let lane = self.pool.lane().await?;
        let mut conn = lane.conn.clone();
        let info: Result<String, _> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await;
        if let Err(e) = &info {
            lane.failed(e);
        }
        let cluster_enabled = match info {
            Ok(text) => parse_info(&text).get("cluster_enabled") == Some(&"1"),
            Err(e) => match self.classifier.classify(&e) {
                // A managed service or ACL may deny INFO: nothing to go by.
                CacheError::Auth { .. } | CacheError::Server { .. } => {
                    tracing::warn!(
                        target: "cache_runtime::connection",
                        endpoint = %self.classifier.endpoint(),
                        "INFO is denied, so the cache cannot tell whether Redis is a cluster: assuming a standalone server; set REDIS_CLUSTER=true for a cluster"
                    );
                    false
                }
                other => return Err(other),
            },
        };
        if !cluster_enabled {
            return Ok(Topology::Standalone);
        }
        let endpoint = self.classifier.endpoint();
        if self.config.cluster == ClusterMode::Disabled {
            let why = format!(
                "{endpoint} is a Redis Cluster node but REDIS_CLUSTER=false: set REDIS_CLUSTER=auto (the default) or true, optionally with REDIS_CLUSTER_NODES"
            );
            tracing::error!(target: "cache_runtime::connection", "{why}; calls run without the cache");
            return Ok(Topology::Refused(why));
        }
        if self.config.db != 0 {
            let why = format!(
                "{endpoint} is a Redis Cluster node, which has only database 0, but database {} is configured: remove the /{} of REDIS_URL",
                self.config.db, self.config.db
            );
            tracing::error!(target: "cache_runtime::connection", "{why}; calls run without the cache");
            return Ok(Topology::Refused(why));
        }
        tracing::info!(
            target: "cache_runtime::connection",
            endpoint,
            "the server reports cluster_enabled:1: using cluster mode (set REDIS_CLUSTER=true to skip this check)"
        );
        let cluster = Cluster::new(&self.config, self.classifier.clone())?;
        // Requests now go through the cluster connection.
        self.pool.close();
        Ok(Topology::Cluster(Arc::new(cluster)))
    }
}
