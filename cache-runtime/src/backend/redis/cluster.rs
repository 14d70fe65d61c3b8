//! A Redis Cluster: one `ClusterConnection` of redis-rs's async cluster support (it follows
//! MOVED and ASK, refreshes the slot map, reconnects nodes), bounded by the socket timeout,
//! plus short-lived connections to single nodes for what is per node (SCAN, INFO, health).
//!
//! Per-node work goes through connections of our own rather than the driver's routing by
//! address: a node that is reconnecting would make the driver rebuild every connection.

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::client;
use super::errors::Classifier;
use crate::config::{CertReqs, NodeAddr, RedisConfig};
use crate::error::CacheError;

/// Attempts per request inside the driver (redirects, TRYAGAIN, reconnects), all within
/// the socket timeout.
const RETRIES: u32 = 4;
/// Shortest and longest wait between two attempts, in milliseconds.
const MIN_RETRY_WAIT_MS: u64 = 20;
const MAX_RETRY_WAIT_MS: u64 = 250;

/// The cluster connection and the runtime it lives in.
struct Live {
    conn: ClusterConnection,
    /// Cleared when the runtime driving the connection shuts down (see `pool.rs`).
    runtime_alive: Arc<AtomicBool>,
    _watcher: tokio::sync::oneshot::Sender<()>,
}

/// What one node of the cluster says about itself in `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeLine {
    pub(crate) id: String,
    pub(crate) addr: NodeAddr,
    pub(crate) primary: bool,
    /// `fail` or `fail?` (another node cannot reach it).
    pub(crate) failing: bool,
    /// Slots it serves (primaries).
    pub(crate) slots: u32,
}

pub(crate) struct Cluster {
    /// Built from the seeds and every node seen since, so a reconnect still finds the
    /// cluster when the configured seed is the node that died.
    client: ArcSwap<ClusterClient>,
    config: RedisConfig,
    classifier: Classifier,
    live: ArcSwapOption<Live>,
    connecting: tokio::sync::Mutex<()>,
    /// Nodes seen in `CLUSTER NODES` (besides the configured seeds).
    known: ArcSwap<Vec<NodeAddr>>,
    /// When the connection was last thrown away (see [`Cluster::reset`]).
    last_reset: std::sync::Mutex<Option<std::time::Instant>>,
    /// Requests in flight (so reads know when there is a round trip to share).
    in_flight: AtomicUsize,
}

/// Counts a request in flight however it ends.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn node_classifier(config: &RedisConfig) -> Classifier {
    Classifier::new(
        &config.host,
        config.port,
        config.endpoint(),
        config.tls.is_some(),
        config.socket_timeout,
    )
}

fn seed_info(config: &RedisConfig, node: &NodeAddr) -> Result<redis::ConnectionInfo, CacheError> {
    let addr = match &config.tls {
        None => ConnectionAddr::Tcp(node.host.clone(), node.port),
        Some(tls) => ConnectionAddr::TcpTls {
            host: node.host.clone(),
            port: node.port,
            insecure: tls.cert_reqs == CertReqs::None,
            tls_params: None,
        },
    };
    let classifier = node_classifier(&config.for_node(node));
    Ok(addr
        .into_connection_info()
        .map_err(|e| classifier.classify(&e))?
        .set_redis_settings(client::redis_settings(config)))
}

/// How often the connection may be rebuilt while the breaker keeps failing.
const RESET_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

fn build_client(
    config: &RedisConfig,
    seeds: &[NodeAddr],
    classifier: &Classifier,
) -> Result<ClusterClient, CacheError> {
    let seeds = seeds
        .iter()
        .map(|node| seed_info(config, node))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(config.connect_timeout)
        // The driver's defaults wait without bound (and retry for minutes): bound every
        // attempt and the whole request by the socket timeout.
        .response_timeout(config.socket_timeout)
        .overall_response_timeout(Some(config.socket_timeout))
        .retries(RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS)
        .tcp_settings(client::tcp_settings(config));
    if let Some(tls) = &config.tls {
        if let Some(certs) = client::tls_certificates(config)? {
            builder = builder.certs(certs);
        }
        builder = match tls.cert_reqs {
            CertReqs::Required => builder.tls(TlsMode::Secure),
            CertReqs::Optional => builder
                .tls(TlsMode::Secure)
                .danger_accept_invalid_hostnames(true),
            CertReqs::None => builder.tls(TlsMode::Insecure),
        };
    }
    builder.build().map_err(|e| classifier.classify(&e))
}

impl Cluster {
    /// Builds the client (no connection yet).
    pub(crate) fn new(config: &RedisConfig, classifier: Classifier) -> Result<Self, CacheError> {
        let client = build_client(config, &config.seeds(), &classifier)?;
        Ok(Self {
            client: ArcSwap::from_pointee(client),
            config: config.clone(),
            classifier,
            live: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            known: ArcSwap::from_pointee(Vec::new()),
            last_reset: std::sync::Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Remembers the nodes of the cluster as seeds for the next connect.
    fn learn(&self, nodes: &[NodeLine]) {
        let mut addrs: Vec<NodeAddr> = nodes.iter().map(|n| n.addr.clone()).collect();
        addrs.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        if **self.known.load() != addrs {
            let mut seeds = self.config.seeds();
            seeds.extend(
                addrs
                    .iter()
                    .filter(|a| !seeds.contains(a))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            if let Ok(client) = build_client(&self.config, &seeds, &self.classifier) {
                self.client.store(Arc::new(client));
            }
            self.known.store(Arc::new(addrs));
        }
    }

    /// Throws the connection away (at most every [`RESET_EVERY`]) so the next request
    /// connects afresh and reads the slot map again: after a failover, requests that only
    /// ever reach the failed node may never receive the redirect that would teach the
    /// driver the new primary. Requests in flight finish on the old connection.
    pub(crate) fn reset(&self) {
        let mut last = self
            .last_reset
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < RESET_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        if self.live.swap(None).is_some() {
            tracing::info!(target: "cache_runtime::connection", "Redis Cluster keeps failing: reconnecting to refresh its topology");
        }
    }

    /// The cluster connection (cheap clone), connecting on first use and again when the
    /// runtime of the previous one shut down.
    pub(crate) async fn connection(&self) -> Result<ClusterConnection, CacheError> {
        if let Some(live) = self.live.load().as_ref() {
            if live.runtime_alive.load(Ordering::Acquire) {
                return Ok(live.conn.clone());
            }
        }
        let _one = self.connecting.lock().await;
        if let Some(live) = self.live.load().as_ref() {
            if live.runtime_alive.load(Ordering::Acquire) {
                return Ok(live.conn.clone());
            }
        }
        let client = self.client.load_full();
        let conn =
            match tokio::time::timeout(self.config.connect_timeout, client.get_async_connection())
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(self.explain_connect_failure(&e).await),
                Err(_) => {
                    return Err(self
                        .classifier
                        .connect_timed_out(self.config.connect_timeout)
                        .await)
                }
            };
        let runtime_alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&runtime_alive);
        let (watcher, dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            struct Clear(Arc<AtomicBool>);
            impl Drop for Clear {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _clear = Clear(flag);
            let _ = dropped.await;
        });
        tracing::info!(target: "cache_runtime::connection", seeds = %self.classifier.endpoint(), "connected to the Redis Cluster");
        self.live.store(Some(Arc::new(Live {
            conn: conn.clone(),
            runtime_alive,
            _watcher: watcher,
        })));
        // Every node becomes a seed for the next connect (best effort).
        let mut probe = conn.clone();
        let nodes = probe
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await;
        if let Ok(Ok(text)) = nodes.map(redis::from_redis_value::<String>) {
            self.learn(&parse_nodes(&text));
        }
        Ok(conn)
    }

    /// The driver reports a refused password or a failed handshake while creating the
    /// cluster connection as a dropped connection: ask one seed directly, which says why.
    async fn explain_connect_failure(&self, e: &redis::RedisError) -> CacheError {
        let generic = self.classifier.classify(e);
        for seed in self.config.seeds() {
            if let Err(direct) = self.node_connection(&seed).await {
                if matches!(direct, CacheError::Auth { .. } | CacheError::Tls { .. }) {
                    return direct;
                }
            }
        }
        generic
    }

    /// A client of one node (same credentials and TLS settings).
    pub(crate) fn node_client(&self, node: &NodeAddr) -> Result<redis::Client, CacheError> {
        let config = self.config.for_node(node);
        client::build_client(&config, &node_classifier(&config))
    }

    /// A connection to one node, bounded by the connect timeout.
    pub(crate) async fn node_connection(
        &self,
        node: &NodeAddr,
    ) -> Result<redis::aio::MultiplexedConnection, CacheError> {
        let config = self.config.for_node(node);
        let classifier = node_classifier(&config);
        let client = client::build_client(&config, &classifier)?;
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.socket_timeout));
        match tokio::time::timeout(
            config.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&settings),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(classifier.classify(&e)),
            Err(_) => Err(classifier.connect_timed_out(config.connect_timeout).await),
        }
    }

    /// A command on any primary (cluster-wide facts: `CLUSTER NODES`, `CLUSTER INFO`).
    pub(crate) async fn on_any_primary<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, CacheError> {
        let mut conn = self.connection().await?;
        let value = conn
            .route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .map_err(|e| self.classifier.classify(&e))?;
        redis::from_redis_value(value).map_err(|e| CacheError::Server {
            code: String::new(),
            detail: format!("unexpected reply: {e}"),
        })
    }

    /// Every node as the cluster sees it now.
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeLine>, CacheError> {
        let text: String = self
            .on_any_primary(redis::cmd("CLUSTER").arg("NODES").clone())
            .await?;
        let nodes = parse_nodes(&text);
        self.learn(&nodes);
        Ok(nodes)
    }

    /// What keeps the cluster from serving every key, if anything: its state, slots not
    /// served, a primary with slots failing.
    pub(crate) async fn problem(&self, nodes: &[NodeLine]) -> Option<String> {
        let info: Result<String, _> = self
            .on_any_primary(redis::cmd("CLUSTER").arg("INFO").clone())
            .await;
        let mut problems = Vec::new();
        match info {
            Ok(text) => {
                let f = crate::backend::parse_info(&text);
                if f.get("cluster_state").is_some_and(|s| *s != "ok") {
                    problems.push(format!(
                        "cluster_state is {}",
                        f.get("cluster_state").unwrap_or(&"unknown")
                    ));
                }
                if let Some(ok) = f
                    .get("cluster_slots_ok")
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    if ok < 16_384 {
                        problems.push(format!("only {ok} of 16384 slots are served"));
                    }
                }
            }
            Err(e) => problems.push(format!("CLUSTER INFO failed: {e}")),
        }
        // A failed node that serves no slot (a replica, or a primary replaced by its
        // replica) costs redundancy, not keys: the node list shows it, health stays up.
        for node in nodes.iter().filter(|n| n.failing && n.slots > 0) {
            problems.push(format!(
                "primary {} is failing: its {} slots have no primary until a replica takes over",
                node.addr, node.slots
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Marks a request in flight until the returned guard drops.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Whether the cluster connection is up (in this runtime).
    pub(crate) fn connected(&self) -> bool {
        self.live
            .load()
            .as_ref()
            .is_some_and(|l| l.runtime_alive.load(Ordering::Acquire))
    }

    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus[,hostname]> <flags> <primary> <ping> <pong>
/// <epoch> <link> <slot>...`.
pub(crate) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let id = f.next()?.to_owned();
            let addr = f.next()?;
            let flags = f.next()?;
            let hostport = addr.split('@').next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let port = port.parse().ok().filter(|p| *p > 0)?;
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.contains(&"noaddr") || flags.contains(&"handshake") || host.is_empty() {
                return None;
            }
            let slots = f
                .skip(5)
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                        (Ok(a), Ok(b)) if b >= a => b - a + 1,
                        _ => 0,
                    },
                    None => u32::from(s.parse::<u32>().is_ok()),
                })
                .sum();
            Some(NodeLine {
                id,
                addr: NodeAddr {
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port,
                },
                primary: flags.contains(&"master"),
                failing: flags.contains(&"fail") || flags.contains(&"fail?"),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
9fd8c3a5a0b7e0e5d09e4bb64ff8b5b8d6b0a0a0 :0@0 master,noaddr - 0 0 0 disconnected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert!(!nodes[0].primary && nodes[0].slots == 0);
        assert_eq!(nodes[1].slots, 5462);
        assert!(nodes[2].failing && nodes[2].primary);
        assert_eq!(nodes[3].slots, 5461);
        assert_eq!(nodes[3].addr.to_string(), "127.0.0.1:30001");
    }
}
