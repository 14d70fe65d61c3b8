//! Real-server Redis Cluster harness.
//!
//! A [`RedisCluster`] is a set of throwaway `redis-server` child processes in
//! cluster mode (`cluster-enabled yes`), each with its own directory (holding
//! `redis.conf`, `redis.log`, `stdio.log` and `nodes.conf`) inside one temp
//! dir, listening only on `127.0.0.1`. The cluster is created with
//! `redis-cli --cluster create`, so `redis-cli` must be installed next to
//! `redis-server`. Nothing is persisted (`save ""`, `appendonly no`), only the
//! cluster configuration (`nodes.conf`), so killed nodes can rejoin and the
//! whole cluster can be stopped and re-formed.
//!
//! Every node needs two free ports: its client port `P` and its cluster bus
//! port `P + 10000`. Client ports are drawn at random from
//! 10000..20000 (bus ports 20000..30000), below the kernel's ephemeral range,
//! and both are checked to be bindable; a node that loses a port race is
//! restarted on fresh ports. 6379 and 16379 are never used.
//!
//! `cluster-node-timeout` is 1000 ms so that failovers in tests take a few
//! seconds; [`ClusterOptions::extra_config`] lines come last in `redis.conf`
//! and override any harness directive (e.g. `"cluster-node-timeout 3000"`).
//!
//! ```no_run
//! use cache_tests::{ClusterOptions, RedisCluster};
//!
//! let cluster = RedisCluster::start(ClusterOptions::default());
//! let mut con = cluster.cluster_client().get_connection().unwrap();
//! redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
//! assert_eq!(cluster.keyspace()["k"], b"v".to_vec());
//! ```

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{
    generate_tls_files, install_crypto_provider, percent_encode, probe, quote, read_file,
    redis_available, tls_client, StartError, TlsFiles, HOST, READY_TIMEOUT, REDIS_MISSING,
    SHARED_REDIS_PORT, START_ATTEMPTS,
};

/// Panic message used when `redis-cli` is not on `PATH`.
pub const REDIS_CLI_MISSING: &str = "redis-cli not found: it is needed to create test clusters (`redis-cli --cluster create`); install it with apt-get install redis-tools (the redis-server package depends on it) or run ./scripts/test.sh";

/// Number of hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// Offset of a node's cluster bus port from its client port (fixed by Redis).
const BUS_PORT_OFFSET: u16 = 10000;
/// Client ports are drawn from this range (bus ports are `+ 10000`): below the
/// ephemeral range (32768..) and disjoint from the bus port range.
const PORT_RANGE: std::ops::Range<u16> = 10000..20000;
/// `cluster-node-timeout` of every node, in milliseconds.
const NODE_TIMEOUT_MS: u64 = 1000;
/// How long cluster creation and re-formation may take.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `redis-cli --cluster` invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout of the harness's own short-lived connections.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read/write timeout of the harness's own short-lived connections.
const PROBE_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Read/write timeout of [`RedisCluster::admin_connection`].
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two polls of the cluster state.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of each node's log included in panic messages.
const LOG_TAIL_LINES: usize = 100;

/// `(first slot, last slot, owner port)` in a slot map.
type SlotRangeOwner = (u16, u16, u16);

/// Returns `true` when a runnable `redis-cli` binary is on `PATH`.
pub fn redis_cli_available() -> bool {
    Command::new("redis-cli")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Shape and settings of a [`RedisCluster`]; [`RedisCluster::start`] takes one.
///
/// The default is 3 primaries with 1 replica each, plain TCP, no password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Number of primaries (at least 3, a `redis-cli --cluster create` limit).
    pub primaries: usize,
    /// Replicas per primary (`--cluster-replicas`).
    pub replicas_per_primary: usize,
    /// TLS-only nodes (`port 0`, `tls-port N`, `tls-cluster yes`,
    /// `tls-replication yes`) sharing one generated CA and server certificate
    /// (SAN `IP:127.0.0.1`, `DNS:localhost`); client certificates are not required.
    pub tls: bool,
    /// `requirepass` (and `masterauth`) of the default user on every node.
    pub password: Option<String>,
    /// Extra `redis.conf` lines appended verbatim to every node's config;
    /// they come last, so they override the harness's directives.
    pub extra_config: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            primaries: 3,
            replicas_per_primary: 1,
            tls: false,
            password: None,
            extra_config: Vec::new(),
        }
    }
}

/// Role of a cluster node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeRole {
    /// A primary (`master` flag); it owns slots unless they were all moved away.
    Primary,
    /// A replica (`slave` flag) of some primary.
    Replica,
}

/// One `redis-server` process of a [`RedisCluster`].
///
/// Port, node id and directory never change once the cluster is created;
/// the process id changes on every restart.
#[derive(Debug)]
pub struct ClusterNode {
    port: u16,
    id: String,
    initial_role: NodeRole,
    dir: PathBuf,
    child: Option<Child>,
    /// Slot ranges the node owned when [`RedisCluster::kill_node`] killed it.
    slots_at_kill: Option<Vec<(u16, u16)>>,
}

impl ClusterNode {
    /// Client port (the TLS port for TLS clusters); the bus port is `port + 10000`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port, `port + 10000`.
    pub fn bus_port(&self) -> u16 {
        self.port + BUS_PORT_OFFSET
    }

    /// The 40-character node id (kept across restarts in `nodes.conf`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Role right after the cluster was created (failovers do not update it;
    /// see [`RedisCluster::primaries`] for the current topology).
    pub fn initial_role(&self) -> NodeRole {
        self.initial_role
    }

    /// Process id of the running server, `None` while it is killed/stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `true` unless the node was killed or stopped (and not restarted).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's own directory (`redis.conf`, `nodes.conf`, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's log file (`logfile` directive).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Kills the process with SIGKILL and reaps it. Idempotent.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }

    /// Last [`LOG_TAIL_LINES`] lines of the node's log and stdout/stderr.
    fn log_tail(&self) -> String {
        let tail = |name: &str| match fs::read_to_string(self.dir.join(name)) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("<cannot read {name}: {e}>"),
        };
        format!(
            "--- node 127.0.0.1:{} (pid {:?}) redis.log (last {LOG_TAIL_LINES} lines) ---\n{}\n--- stdout/stderr ---\n{}",
            self.port,
            self.pid(),
            tail("redis.log"),
            tail("stdio.log")
        )
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node as seen in a `CLUSTER NODES` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Client port announced by the node (`0` for `noaddr` nodes).
    pub port: u16,
    /// `Primary` for the `master` flag, `Replica` for `slave`.
    pub role: NodeRole,
    /// The primary's node id for replicas.
    pub primary_id: Option<String>,
    /// All flags, e.g. `["myself", "master"]`, `["slave", "fail"]`.
    pub flags: Vec<String>,
    /// Link state of the viewer's link to this node is `connected`.
    pub connected: bool,
    /// Owned slot ranges (inclusive), without migration annotations.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// `true` when the node is flagged `fail` or `fail?` (PFAIL).
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    /// Number of slots in [`Self::slots`].
    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    }

    /// `true` when `slot` is in one of [`Self::slots`].
    pub fn owns_slot(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// A Redis Cluster of `redis-server` child processes owned by a test.
///
/// * Created with `redis-cli --cluster create … --cluster-replicas N`, then the
///   harness waits (up to 30 s) until every node reports `cluster_state:ok`
///   with all 16384 slots assigned and ok, all nodes agree on the slot map,
///   know each other and every replica's `master_link_status` is `up`; on
///   failure it panics with the tail of every node's log.
/// * Topology queries ([`Self::primaries`], [`Self::topology`], …) ask the
///   running nodes at call time, so they follow failovers and resharding.
/// * [`Drop`] kills every node with SIGKILL, reaps it and removes all dirs.
#[derive(Debug)]
pub struct RedisCluster {
    options: ClusterOptions,
    nodes: Vec<ClusterNode>,
    tls: Option<TlsFiles>,
    // Declared last so the processes are killed before the dirs go away.
    root: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `options.primaries * (1 + options.replicas_per_primary)` nodes,
    /// creates the cluster and waits until it is fully formed (see the type docs).
    ///
    /// Panics with [`REDIS_MISSING`] / [`REDIS_CLI_MISSING`] when the binaries
    /// are missing, and with the nodes' logs when the cluster does not form.
    pub fn start(options: ClusterOptions) -> RedisCluster {
        if !redis_available() {
            panic!("{REDIS_MISSING}");
        }
        if !redis_cli_available() {
            panic!("{REDIS_CLI_MISSING}");
        }
        assert!(
            options.primaries >= 3,
            "cache-tests: a Redis Cluster needs at least 3 primaries (redis-cli --cluster create refuses fewer), got {}",
            options.primaries
        );
        let root = tempfile::Builder::new()
            .prefix("cache-tests-cluster-")
            .tempdir()
            .expect("cache-tests: cannot create a temp dir for the cluster");
        let tls = options.tls.then(|| {
            let dir = root.path().join("tls");
            fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cache-tests: cannot create {}: {e}", dir.display()));
            generate_tls_files(&dir)
        });
        let total = options.primaries * (1 + options.replicas_per_primary);
        let mut cluster = RedisCluster {
            options,
            nodes: Vec::with_capacity(total),
            tls,
            root,
        };
        let mut used = BTreeSet::new();
        for i in 0..total {
            let dir = cluster.root.path().join(format!("node-{i}"));
            fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cache-tests: cannot create {}: {e}", dir.display()));
            cluster.nodes.push(ClusterNode {
                port: 0,
                id: String::new(),
                initial_role: NodeRole::Primary,
                dir,
                child: None,
                slots_at_kill: None,
            });
            let mut last = String::new();
            let mut started = false;
            for _ in 0..START_ATTEMPTS {
                let port = cluster_port(&used);
                cluster.nodes[i].port = port;
                match cluster.spawn_and_wait(i) {
                    Ok(()) => {
                        used.insert(port);
                        started = true;
                        break;
                    }
                    Err(StartError::PortInUse(log)) => last = log,
                    Err(StartError::Fatal(msg)) => panic!("{msg}"),
                }
            }
            if !started {
                panic!(
                    "cache-tests: cluster node {i} could not bind a free port pair (P, P+10000) after {START_ATTEMPTS} attempts; last log:\n{last}"
                );
            }
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut cluster.admin_connection(cluster.nodes[i].port))
                .unwrap_or_else(|e| panic!("cache-tests: CLUSTER MYID failed on node {i}: {e}"));
            cluster.nodes[i].id = id;
        }

        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(cluster.nodes.iter().map(|n| format!("{HOST}:{}", n.port)));
        args.extend([
            "--cluster-replicas".to_owned(),
            cluster.options.replicas_per_primary.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        cluster.redis_cli(&args);
        cluster.wait_until_ok(FORM_TIMEOUT);

        let topology = cluster.topology();
        for node in &mut cluster.nodes {
            let view = topology
                .iter()
                .find(|v| v.id == node.id)
                .unwrap_or_else(|| {
                    panic!(
                        "cache-tests: node {} ({}) missing from CLUSTER NODES after create",
                        node.port, node.id
                    )
                });
            node.initial_role = view.role;
        }
        cluster
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// All nodes, in creation order (`redis-cli` picks the primaries: see
    /// [`ClusterNode::initial_role`]).
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node listening on `port`. Panics for unknown ports.
    pub fn node(&self, port: u16) -> &ClusterNode {
        &self.nodes[self.index_of(port)]
    }

    /// `redis://` (or `rediss://` for TLS) URLs of all nodes (running or
    /// not) with the password, percent-encoded, as `:password@`.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| self.node_url(n.port)).collect()
    }

    /// URL of the first node (see [`Self::seed_urls`]).
    pub fn url(&self) -> String {
        self.node_url(self.nodes[0].port)
    }

    /// The password of every node's default user, if any.
    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// PEM of the CA that signed the nodes' certificate. Panics for non-TLS clusters.
    pub fn ca_cert_path(&self) -> &Path {
        &self.tls_files().ca_cert
    }

    /// PEM of an unrelated CA that did *not* sign the nodes' certificate.
    /// Panics for non-TLS clusters.
    pub fn wrong_ca_path(&self) -> &Path {
        &self.tls_files().wrong_ca_cert
    }

    /// A sync connection to the node on `port` as the default user (TLS and
    /// password included), with 5 s read/write timeouts. It is a plain
    /// connection: commands for slots the node does not own get `MOVED`/`ASK`.
    pub fn admin_connection(&self, port: u16) -> redis::Connection {
        self.index_of(port);
        self.try_connect(port, Duration::from_secs(5), ADMIN_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!("cache-tests: admin_connection to {HOST}:{port} failed: {e}")
            })
    }

    /// A plain `redis::Client` for the node on `port` (TLS and password included).
    pub fn node_client(&self, port: u16) -> redis::Client {
        self.index_of(port);
        self.client_for(&self.node_url(port))
    }

    /// A builder seeded with [`Self::seed_urls`], the CA for TLS clusters and
    /// 5 s connection/response timeouts, for tests that tune retries etc.
    pub fn cluster_client_builder(&self) -> redis::cluster::ClusterClientBuilder {
        let mut builder = redis::cluster::ClusterClient::builder(self.seed_urls())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5));
        if let Some(files) = &self.tls {
            install_crypto_provider();
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(read_file(&files.ca_cert)),
            });
        }
        builder
    }

    /// A `redis::cluster::ClusterClient` for raw tests (sync `get_connection`
    /// or async `get_async_connection`), see [`Self::cluster_client_builder`].
    pub fn cluster_client(&self) -> redis::cluster::ClusterClient {
        self.cluster_client_builder()
            .build()
            .unwrap_or_else(|e| panic!("cache-tests: cannot build ClusterClient: {e}"))
    }

    /// The current `CLUSTER NODES` view of the first running node that
    /// answers (views of different nodes can briefly differ while the
    /// cluster converges). Panics when no node answers.
    pub fn topology(&self) -> Vec<NodeView> {
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match self.try_topology_seen_by(node.port) {
                Ok(view) => return view,
                Err(e) => errors.push(format!("{}: {e}", node.port)),
            }
        }
        panic!(
            "cache-tests: no running cluster node answered CLUSTER NODES: {errors:?}\n{}",
            self.logs()
        );
    }

    /// The `CLUSTER NODES` view of the node on `port`.
    pub fn topology_seen_by(&self, port: u16) -> Vec<NodeView> {
        self.index_of(port);
        self.try_topology_seen_by(port)
            .unwrap_or_else(|e| panic!("cache-tests: CLUSTER NODES on {HOST}:{port} failed: {e}"))
    }

    /// Ports of the current primaries (per [`Self::topology`]) that are
    /// running and not flagged failing, sorted.
    pub fn primaries(&self) -> Vec<u16> {
        self.current(NodeRole::Primary)
    }

    /// Ports of the current replicas (per [`Self::topology`]) that are running
    /// and not flagged failing, sorted.
    pub fn replicas(&self) -> Vec<u16> {
        self.current(NodeRole::Replica)
    }

    /// Ports of the running replicas currently replicating the node on
    /// `primary_port`, sorted.
    pub fn replicas_of(&self, primary_port: u16) -> Vec<u16> {
        let id = self.node(primary_port).id.clone();
        let mut out: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|v| {
                v.role == NodeRole::Replica
                    && v.primary_id.as_deref() == Some(id.as_str())
                    && !v.is_failing()
                    && self.is_running_port(v.port)
            })
            .map(|v| v.port)
            .collect();
        out.sort_unstable();
        out
    }

    /// Port of the primary owning `slot` (per [`Self::topology`]). Panics when
    /// no node owns it.
    pub fn primary_for_slot(&self, slot: u16) -> u16 {
        let topology = self.topology();
        topology
            .iter()
            .find(|v| v.role == NodeRole::Primary && v.owns_slot(slot))
            .map(|v| v.port)
            .unwrap_or_else(|| panic!("cache-tests: no primary owns slot {slot}: {topology:?}"))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on a running node).
    pub fn key_slot(&self, key: impl AsRef<[u8]>) -> u16 {
        let port = self.any_running_port();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key.as_ref())
            .query(&mut self.admin_connection(port))
            .unwrap_or_else(|e| panic!("cache-tests: CLUSTER KEYSLOT failed: {e}"))
    }

    /// Port of the primary currently owning `key`'s slot.
    pub fn primary_for_key(&self, key: impl AsRef<[u8]>) -> u16 {
        self.primary_for_slot(self.key_slot(key))
    }

    /// Kills the node on `port` with SIGKILL and reaps it; its directory and
    /// `nodes.conf` are kept for [`Self::restart_node`]. Does not wait for the
    /// cluster to notice (see [`Self::wait_for_failover_of`]). No-op when the
    /// node is not running.
    pub fn kill_node(&mut self, port: u16) {
        let i = self.index_of(port);
        if !self.nodes[i].is_running() {
            return;
        }
        let id = self.nodes[i].id.clone();
        // Remember the slots it owned, for wait_for_failover_of. Ask the node
        // itself first (most up to date about its own slots), then the others.
        let mut slots = self
            .try_topology_seen_by(port)
            .ok()
            .and_then(|view| view.into_iter().find(|v| v.id == id))
            .map(|v| v.slots);
        if slots.is_none() {
            slots = self
                .nodes
                .iter()
                .filter(|n| n.is_running() && n.port != port)
                .find_map(|n| self.try_topology_seen_by(n.port).ok())
                .and_then(|view| view.into_iter().find(|v| v.id == id))
                .map(|v| v.slots);
        }
        self.nodes[i].slots_at_kill = slots;
        self.nodes[i].kill();
    }

    /// Starts the killed node on `port` again with the same port, directory
    /// and `nodes.conf`, so it rejoins the cluster (a former primary that was
    /// failed over comes back as a replica). Waits only until the process
    /// answers; call [`Self::wait_until_ok`] to wait for the rejoin. Its data
    /// is gone (nothing is persisted). Panics when the node is running.
    pub fn restart_node(&mut self, port: u16) {
        let i = self.index_of(port);
        assert!(
            !self.nodes[i].is_running(),
            "cache-tests: cluster node {port} is running; kill_node it before restart_node"
        );
        self.respawn(i);
        self.nodes[i].slots_at_kill = None;
    }

    /// Kills every node (SIGKILL + reap), keeping dirs and `nodes.conf` files.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Starts every stopped node again with its `nodes.conf` and waits (up to
    /// 30 s) until the cluster has re-formed, as in [`Self::wait_until_ok`].
    /// All data is gone (nothing is persisted).
    pub fn start_all(&mut self) {
        // Spawn all first, then wait: started one by one, early nodes could
        // flag late ones as failing (and fail them over) before they are up.
        let mut stopped = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                stopped.push((i, self.spawn(i)));
            }
        }
        for (i, pid) in stopped {
            match self.wait_ready(i, pid) {
                Ok(()) => {}
                Err(StartError::PortInUse(_)) => self.respawn(i),
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
            self.nodes[i].slots_at_kill = None;
        }
        self.wait_until_ok(FORM_TIMEOUT);
    }

    /// One-shot check of what [`Self::wait_until_ok`] waits for; `Err` says
    /// which condition does not hold (yet).
    ///
    /// On every *running* node: `cluster_state:ok`, 16384 slots assigned and
    /// ok, all nodes known, the same slot map as the other nodes with every
    /// slot owned by a running node, no running node flagged `fail`/`fail?` or
    /// disconnected, every node's role (and primary) as the node itself says,
    /// and for replicas `master_link_status:up`.
    pub fn check_state(&self) -> Result<(), String> {
        let running: BTreeSet<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect();
        if running.is_empty() {
            return Err("no node is running".to_owned());
        }
        let mut reference: Option<(u16, Vec<SlotRangeOwner>)> = None;
        let mut views: Vec<(u16, Vec<NodeView>)> = Vec::new();
        for &port in &running {
            let mut con = self
                .try_connect(port, PROBE_CONNECT_TIMEOUT, PROBE_IO_TIMEOUT)
                .map_err(|e| format!("{port}: cannot connect: {e}"))?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut con)
                .map_err(|e| format!("{port}: CLUSTER INFO: {e}"))?;
            let field = |name: &str| info_field(&info, name).unwrap_or_default();
            if field("cluster_state") != "ok" {
                return Err(format!("{port}: cluster_state:{}", field("cluster_state")));
            }
            for name in ["cluster_slots_assigned", "cluster_slots_ok"] {
                if field(name) != CLUSTER_SLOTS.to_string() {
                    return Err(format!("{port}: {name}:{}", field(name)));
                }
            }
            if field("cluster_known_nodes") != self.nodes.len().to_string() {
                return Err(format!(
                    "{port}: cluster_known_nodes:{} (expected {})",
                    field("cluster_known_nodes"),
                    self.nodes.len()
                ));
            }

            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut con)
                .map_err(|e| format!("{port}: CLUSTER NODES: {e}"))?;
            let view = parse_cluster_nodes(&text)?;
            for v in view.iter().filter(|v| running.contains(&v.port)) {
                if v.is_failing() || !v.connected || v.flags.iter().any(|f| f == "handshake") {
                    return Err(format!(
                        "{port} sees running node {} as flags={:?} connected={}",
                        v.port, v.flags, v.connected
                    ));
                }
            }
            let mut map: Vec<SlotRangeOwner> = view
                .iter()
                .filter(|v| v.role == NodeRole::Primary)
                .flat_map(|v| v.slots.iter().map(move |&(a, b)| (a, b, v.port)))
                .collect();
            map.sort_unstable();
            if let Some(&(_, _, owner)) = map.iter().find(|(_, _, p)| !running.contains(p)) {
                return Err(format!(
                    "{port}: slots still owned by node {owner}, which is not running"
                ));
            }
            match &reference {
                None => reference = Some((port, map)),
                Some((ref_port, ref_map)) if *ref_map != map => {
                    return Err(format!(
                        "slot maps differ: {ref_port} sees {ref_map:?}, {port} sees {map:?}"
                    ));
                }
                Some(_) => {}
            }
            views.push((port, view));

            let repl: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .map_err(|e| format!("{port}: INFO replication: {e}"))?;
            if info_field(&repl, "role") == Some("slave")
                && info_field(&repl, "master_link_status") != Some("up")
            {
                return Err(format!(
                    "{port}: replica with master_link_status:{}",
                    info_field(&repl, "master_link_status").unwrap_or("<missing>")
                ));
            }
        }
        // Roles: every view agrees with what each running node says of itself
        // (views lag behind, e.g. right after CLUSTER REPLICATE or a rejoin).
        let own: BTreeMap<&str, (NodeRole, Option<&str>)> = views
            .iter()
            .filter_map(|(_, view)| view.iter().find(|v| v.flags.iter().any(|f| f == "myself")))
            .map(|v| (v.id.as_str(), (v.role, v.primary_id.as_deref())))
            .collect();
        for (port, view) in &views {
            for v in view {
                if let Some(&(role, primary)) = own.get(v.id.as_str()) {
                    if (v.role, v.primary_id.as_deref()) != (role, primary) {
                        return Err(format!(
                            "{port} sees node {} as {:?} of {:?}, it says {role:?} of {primary:?}",
                            v.port, v.role, v.primary_id
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until [`Self::check_state`] succeeds, polling every 100 ms;
    /// panics after `timeout` with the last failed condition and every
    /// node's log.
    pub fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.check_state() {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "cache-tests: cluster not ok within {timeout:?}; last problem: {err}\n{}",
                    self.logs()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// After [`Self::kill_node`] of a primary: waits until its slots are owned
    /// by another (running) node, i.e. one of its replicas was promoted, and
    /// the surviving nodes are ok (see [`Self::check_state`]). Returns the
    /// port of the new owner of its first slot range. Panics after `timeout`
    /// with every node's log, or at once if the node is running or owned no
    /// slots when it was killed.
    pub fn wait_for_failover_of(&self, port: u16, timeout: Duration) -> u16 {
        let node = self.node(port);
        assert!(
            !node.is_running(),
            "cache-tests: node {port} is running; kill_node it before wait_for_failover_of"
        );
        let slots = match &node.slots_at_kill {
            Some(slots) if !slots.is_empty() => slots.clone(),
            _ => panic!(
                "cache-tests: node {port} owned no slots when it was killed (a replica, or not killed with kill_node): nothing fails over"
            ),
        };
        let first_slot = slots[0].0;
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.check_state().and_then(|()| {
                let owners: BTreeSet<u16> = self
                    .topology()
                    .iter()
                    .filter(|v| {
                        v.role == NodeRole::Primary && slots.iter().any(|&(a, _)| v.owns_slot(a))
                    })
                    .map(|v| v.port)
                    .collect();
                if owners.contains(&port) || owners.is_empty() {
                    return Err(format!(
                        "slots {slots:?} of killed node {port} still owned by {owners:?}"
                    ));
                }
                Ok(self.primary_for_slot(first_slot))
            });
            match result {
                Ok(new_primary) => return new_primary,
                Err(err) if Instant::now() >= deadline => panic!(
                    "cache-tests: no failover of node {port} within {timeout:?}; last problem: {err}\n{}",
                    self.logs()
                ),
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Moves `slots` slots from the primary on `from_port` to the primary on
    /// `to_port` with `redis-cli --cluster reshard` (keys included), then waits
    /// until the cluster is ok and consistent again.
    pub fn reshard(&self, from_port: u16, to_port: u16, slots: usize) {
        let from = self.node(from_port).id.clone();
        let to = self.node(to_port).id.clone();
        let args = vec![
            "--cluster".to_owned(),
            "reshard".to_owned(),
            format!("{HOST}:{from_port}"),
            "--cluster-from".to_owned(),
            from,
            "--cluster-to".to_owned(),
            to,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        self.redis_cli(&args);
        self.wait_until_ok(FORM_TIMEOUT);
    }

    /// Moves one slot and its keys from `from_port` to `to_port` by hand
    /// (`SETSLOT IMPORTING`/`MIGRATING`, `GETKEYSINSLOT` + `MIGRATE`,
    /// `SETSLOT NODE` on all primaries) and waits until the cluster is ok.
    pub fn migrate_slot(&self, slot: u16, from_port: u16, to_port: u16) {
        self.begin_slot_migration(slot, from_port, to_port).finish();
    }

    /// Starts moving `slot` from `from_port` (which must own it) to `to_port`:
    /// the target is set `IMPORTING` and the source `MIGRATING`, no key is
    /// moved yet. While the returned guard lives, keys already moved get `ASK`
    /// redirects on the source. Finish with [`SlotMigration::finish`]
    /// (dropping the guard outside a panic finishes it too).
    pub fn begin_slot_migration(
        &self,
        slot: u16,
        from_port: u16,
        to_port: u16,
    ) -> SlotMigration<'_> {
        assert!(
            slot < CLUSTER_SLOTS,
            "cache-tests: slot {slot} out of range 0..{CLUSTER_SLOTS}"
        );
        assert!(
            from_port != to_port,
            "cache-tests: cannot migrate slot {slot} from node {from_port} to itself"
        );
        for port in [from_port, to_port] {
            assert!(
                self.node(port).is_running(),
                "cache-tests: node {port} is not running"
            );
        }
        let owner = self.primary_for_slot(slot);
        assert!(
            owner == from_port,
            "cache-tests: slot {slot} is owned by node {owner}, not by {from_port}"
        );
        let from_id = self.node(from_port).id.clone();
        let to_id = self.node(to_port).id.clone();
        self.setslot(to_port, slot, &["IMPORTING", &from_id]);
        self.setslot(from_port, slot, &["MIGRATING", &to_id]);
        SlotMigration {
            cluster: self,
            slot,
            from_port,
            to_port,
            finished: false,
        }
    }

    /// Every key of every current primary (SCAN) mapped to its value for
    /// strings (GET), or to the `TYPE` name as bytes (e.g. `b"hash"`) for
    /// other types, like [`crate::keyspace`] for a single server.
    pub fn keyspace(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for port in self.primaries() {
            out.extend(dump_keys(&mut self.admin_connection(port)));
        }
        out
    }

    /// Waits until every running replica has applied everything its primary
    /// had written when the call started (`slave_repl_offset` of the replica
    /// at least the primary's `master_repl_offset`). Replication is
    /// asynchronous: call this after writes and before killing a primary when
    /// the test expects its replica to have the data. Panics after `timeout`.
    ///
    /// (`WAIT` on a harness connection would not do: it only waits for the
    /// writes made on that same connection.)
    pub fn wait_for_replication(&self, timeout: Duration) {
        let replication = |port: u16| -> String {
            redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.admin_connection(port))
                .unwrap_or_else(|e| panic!("cache-tests: INFO replication on {port} failed: {e}"))
        };
        let offset = |info: &str, name: &str| -> i64 {
            info_field(info, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1)
        };
        let mut targets: BTreeMap<u16, i64> = BTreeMap::new();
        let mut replicas: Vec<(u16, u16)> = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let info = replication(node.port);
            match info_field(&info, "role") {
                Some("master") => {
                    targets.insert(node.port, offset(&info, "master_repl_offset"));
                }
                _ => {
                    let primary = info_field(&info, "master_port")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    replicas.push((node.port, primary));
                }
            }
        }
        let deadline = Instant::now() + timeout;
        for (replica, primary) in replicas {
            let Some(&target) = targets.get(&primary) else {
                continue; // its primary is down: nothing to catch up with
            };
            loop {
                let applied = offset(&replication(replica), "slave_repl_offset");
                if applied >= target {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "cache-tests: replica {replica} applied offset {applied} of its primary {primary}, not {target}, within {timeout:?}\n{}",
                        self.logs()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `FLUSHALL SYNC` on every current primary, then `WAIT` (up to 2 s) for
    /// its replicas to apply it.
    pub fn flushall(&self) {
        for port in self.primaries() {
            let mut con = self.admin_connection(port);
            redis::cmd("FLUSHALL")
                .arg("SYNC")
                .exec(&mut con)
                .unwrap_or_else(|e| panic!("cache-tests: FLUSHALL on {port} failed: {e}"));
            let repl: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap_or_else(|e| panic!("cache-tests: INFO replication on {port} failed: {e}"));
            let replicas: u64 = info_field(&repl, "connected_slaves")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if replicas > 0 {
                let _: redis::RedisResult<i64> =
                    redis::cmd("WAIT").arg(replicas).arg(2000).query(&mut con);
            }
        }
    }

    /// The tail of every node's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let _ = writeln!(out, "{}", node.log_tail());
        }
        out
    }

    // ----- internals -----

    fn tls_files(&self) -> &TlsFiles {
        self.tls.as_ref().unwrap_or_else(|| {
            panic!(
                "cache-tests: certificate paths exist only for TLS clusters (ClusterOptions::tls)"
            )
        })
    }

    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| {
                panic!(
                    "cache-tests: no cluster node on port {port}; nodes: {:?}",
                    self.nodes.iter().map(|n| n.port).collect::<Vec<_>>()
                )
            })
    }

    fn is_running_port(&self, port: u16) -> bool {
        self.nodes.iter().any(|n| n.port == port && n.is_running())
    }

    fn any_running_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(|n| n.port)
            .expect("cache-tests: no cluster node is running")
    }

    fn current(&self, role: NodeRole) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|v| {
                v.role == role
                    && !v.is_failing()
                    && !v.flags.iter().any(|f| f == "handshake" || f == "noaddr")
                    && self.is_running_port(v.port)
            })
            .map(|v| v.port)
            .collect();
        out.sort_unstable();
        out
    }

    fn node_url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let creds = match &self.options.password {
            Some(pw) => format!(":{}@", percent_encode(pw)),
            None => String::new(),
        };
        format!("{scheme}://{creds}{HOST}:{port}")
    }

    fn client_for(&self, url: &str) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(url)
                .unwrap_or_else(|e| panic!("cache-tests: bad redis URL {url}: {e}")),
            Some(files) => tls_client(url, &files.ca_cert, None),
        }
    }

    fn try_connect(
        &self,
        port: u16,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<redis::Connection, String> {
        let con = self
            .client_for(&self.node_url(port))
            .get_connection_with_timeout(connect_timeout)
            .map_err(|e| e.to_string())?;
        con.set_read_timeout(Some(io_timeout))
            .map_err(|e| e.to_string())?;
        con.set_write_timeout(Some(io_timeout))
            .map_err(|e| e.to_string())?;
        Ok(con)
    }

    fn try_topology_seen_by(&self, port: u16) -> Result<Vec<NodeView>, String> {
        let mut con = self.try_connect(port, PROBE_CONNECT_TIMEOUT, PROBE_IO_TIMEOUT)?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut con)
            .map_err(|e| e.to_string())?;
        parse_cluster_nodes(&text)
    }

    fn setslot(&self, port: u16, slot: u16, args: &[&str]) {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .exec(&mut self.admin_connection(port))
            .unwrap_or_else(|e| {
                panic!(
                    "cache-tests: CLUSTER SETSLOT {slot} {} on {port} failed: {e}",
                    args.join(" ")
                )
            });
    }

    /// `redis-cli <args>` with the cluster's TLS and password flags; panics
    /// with its output and the nodes' logs unless it succeeds within 60 s.
    fn redis_cli(&self, args: &[String]) -> String {
        let mut cmd = Command::new("redis-cli");
        if let Some(files) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&files.ca_cert);
        }
        if let Some(pw) = &self.options.password {
            cmd.arg("-a").arg(pw).arg("--no-auth-warning");
        }
        cmd.args(args);
        let out_path = self.root.path().join("redis-cli.log");
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&out_path)
            .unwrap_or_else(|e| panic!("cache-tests: cannot open {}: {e}", out_path.display()));
        let err = out
            .try_clone()
            .expect("cache-tests: cannot clone redis-cli log handle");
        let shown = format!("redis-cli {}", args.join(" "));
        let mut child = cmd
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{REDIS_CLI_MISSING} (spawn failed: {e})"));
        let deadline = Instant::now() + CLI_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("cache-tests: cannot poll `{shown}`: {e}"),
            }
        };
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        match status {
            Some(s) if s.success() && !output.contains("[ERR]") => output,
            Some(s) => panic!(
                "cache-tests: `{shown}` failed ({s}):\n{output}\n{}",
                self.logs()
            ),
            None => panic!(
                "cache-tests: `{shown}` did not finish within {CLI_TIMEOUT:?}:\n{output}\n{}",
                self.logs()
            ),
        }
    }

    /// Starts node `i` again on its port, retrying briefly if the port is taken.
    fn respawn(&mut self, i: usize) {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait(i) {
                Ok(()) => return,
                Err(StartError::PortInUse(log)) => {
                    last = log;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-tests: cannot restart cluster node on port {}: the port (or bus port) is taken; log:\n{last}",
            self.nodes[i].port
        );
    }

    fn write_config(&self, i: usize) -> PathBuf {
        let node = &self.nodes[i];
        let dir = &node.dir;
        let mut lines = vec![
            format!("bind {HOST}"),
            "daemonize no".to_owned(),
            "save \"\"".to_owned(),
            "appendonly no".to_owned(),
            format!("dir {}", quote(&dir.to_string_lossy())),
            format!("logfile {}", quote(&node.log_path().to_string_lossy())),
            "enable-debug-command yes".to_owned(),
            "cluster-enabled yes".to_owned(),
            "cluster-config-file nodes.conf".to_owned(),
            format!("cluster-node-timeout {NODE_TIMEOUT_MS}"),
            format!("cluster-announce-ip {HOST}"),
            // A replica may always fail over, however long it was disconnected.
            "cluster-replica-validity-factor 0".to_owned(),
            // Full syncs (new replicas, rejoining primaries) start at once.
            "repl-diskless-sync-delay 0".to_owned(),
        ];
        match &self.tls {
            None => lines.push(format!("port {}", node.port)),
            Some(files) => {
                lines.push("port 0".to_owned());
                lines.push(format!("tls-port {}", node.port));
                lines.push("tls-cluster yes".to_owned());
                lines.push("tls-replication yes".to_owned());
                lines.push(format!(
                    "tls-cert-file {}",
                    quote(&files.server_cert.to_string_lossy())
                ));
                lines.push(format!(
                    "tls-key-file {}",
                    quote(&files.server_key.to_string_lossy())
                ));
                lines.push(format!(
                    "tls-ca-cert-file {}",
                    quote(&files.ca_cert.to_string_lossy())
                ));
                // The cluster bus always demands a client certificate from
                // peers (whatever tls-auth-clients says), and the server
                // certificate has no clientAuth usage: nodes present the
                // generated client certificate on outgoing links (bus,
                // replication, MIGRATE).
                lines.push(format!(
                    "tls-client-cert-file {}",
                    quote(&files.client_cert.to_string_lossy())
                ));
                lines.push(format!(
                    "tls-client-key-file {}",
                    quote(&files.client_key.to_string_lossy())
                ));
                // Ordinary clients (tests, redis-cli) need no certificate.
                lines.push("tls-auth-clients no".to_owned());
            }
        }
        if let Some(pw) = &self.options.password {
            lines.push(format!("requirepass {}", quote(pw)));
            lines.push(format!("masterauth {}", quote(pw)));
        }
        lines.extend(self.options.extra_config.iter().cloned());
        let path = dir.join("redis.conf");
        fs::write(&path, lines.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("cache-tests: cannot write {}: {e}", path.display()));
        path
    }

    /// Spawns node `i` on its port and waits until it answers as our child.
    fn spawn_and_wait(&mut self, i: usize) -> Result<(), StartError> {
        let pid = self.spawn(i);
        self.wait_ready(i, pid)
    }

    /// Spawns `redis-server` for node `i` and returns its pid.
    fn spawn(&mut self, i: usize) -> u32 {
        assert!(
            self.nodes[i].child.is_none(),
            "cache-tests: cluster node already running"
        );
        let conf = self.write_config(i);
        let dir = self.nodes[i].dir.clone();
        let stdio_path = dir.join("stdio.log");
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .unwrap_or_else(|e| panic!("cache-tests: cannot open {}: {e}", stdio_path.display()));
        let stdio2 = stdio
            .try_clone()
            .expect("cache-tests: cannot clone stdio log handle");
        let child = Command::new("redis-server")
            .arg(&conf)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stdio2)
            .spawn()
            .unwrap_or_else(|e| panic!("{REDIS_MISSING} (spawn failed: {e})"));
        let pid = child.id();
        crate::reaper::register(pid);
        self.nodes[i].child = Some(child);
        pid
    }

    /// Waits until node `i` (spawned as `pid`) answers as our child.
    fn wait_ready(&mut self, i: usize, pid: u32) -> Result<(), StartError> {
        let port = self.nodes[i].port;
        let client = self.client_for(&self.node_url(port));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error: String;
        loop {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .expect("child just spawned")
                .try_wait()
                .expect("cache-tests: cannot poll redis-server child");
            if let Some(status) = exited {
                crate::reaper::unregister(pid);
                self.nodes[i].child = None;
                let logs = self.nodes[i].log_tail();
                if logs.contains("Address already in use") {
                    return Err(StartError::PortInUse(logs));
                }
                return Err(StartError::Fatal(format!(
                    "cache-tests: cluster node redis-server exited early ({status}) on port {port}; logs:\n{logs}"
                )));
            }
            match probe(&client) {
                Ok(p) if p == pid => return Ok(()),
                Ok(other) => last_error = format!("port answered by foreign pid {other}"),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                self.nodes[i].kill();
                return Err(StartError::Fatal(format!(
                    "cache-tests: cluster node redis-server (pid {pid}) not ready on {HOST}:{port} within {READY_TIMEOUT:?}; last error: {last_error}; logs:\n{}",
                    self.nodes[i].log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// A slot migration in progress, from [`RedisCluster::begin_slot_migration`].
///
/// Between the `MIGRATING` step and [`Self::finish`], keys already moved to
/// the target make the source answer `-ASK`, while keys still on the source
/// are served there.
#[derive(Debug)]
#[must_use = "a slot migration stays half-done until finish() (or drop) completes it"]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from_port: u16,
    to_port: u16,
    finished: bool,
}

impl SlotMigration<'_> {
    /// The slot being migrated.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Port of the source (`MIGRATING`) node.
    pub fn from_port(&self) -> u16 {
        self.from_port
    }

    /// Port of the target (`IMPORTING`) node.
    pub fn to_port(&self) -> u16 {
        self.to_port
    }

    /// Keys of the slot still on the source (`CLUSTER COUNTKEYSINSLOT`).
    pub fn remaining_keys(&self) -> usize {
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(self.slot)
            .query(&mut self.cluster.admin_connection(self.from_port))
            .unwrap_or_else(|e| panic!("cache-tests: CLUSTER COUNTKEYSINSLOT failed: {e}"))
    }

    /// Moves up to `n` keys of the slot to the target with `MIGRATE` and
    /// returns them (fewer when the source runs out of keys).
    pub fn migrate_some_keys(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut con = self.cluster.admin_connection(self.from_port);
        let mut moved = Vec::new();
        while moved.len() < n {
            let batch: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(self.slot)
                .arg((n - moved.len()).min(100))
                .query(&mut con)
                .unwrap_or_else(|e| panic!("cache-tests: CLUSTER GETKEYSINSLOT failed: {e}"));
            if batch.is_empty() {
                break;
            }
            let mut cmd = redis::cmd("MIGRATE");
            cmd.arg(HOST).arg(self.to_port).arg("").arg(0).arg(5000);
            if let Some(pw) = &self.cluster.options.password {
                cmd.arg("AUTH").arg(pw);
            }
            cmd.arg("KEYS").arg(&batch);
            let _: redis::Value = cmd.query(&mut con).unwrap_or_else(|e| {
                panic!(
                    "cache-tests: MIGRATE of slot {} from {} to {} failed: {e}",
                    self.slot, self.from_port, self.to_port
                )
            });
            moved.extend(batch);
        }
        moved
    }

    /// Moves the remaining keys, assigns the slot to the target on the target,
    /// the source and every other primary (`SETSLOT NODE`), and waits until
    /// the cluster is ok and consistent.
    pub fn finish(mut self) {
        self.complete();
    }

    fn complete(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        while !self.migrate_some_keys(1000).is_empty() {}
        let to_id = self.cluster.node(self.to_port).id.clone();
        let mut order = vec![self.to_port, self.from_port];
        order.extend(
            self.cluster
                .primaries()
                .into_iter()
                .filter(|p| *p != self.to_port && *p != self.from_port),
        );
        for port in order {
            self.cluster
                .setslot(port, self.slot, &["NODE", to_id.as_str()]);
        }
        self.cluster.wait_until_ok(FORM_TIMEOUT);
    }
}

impl Drop for SlotMigration<'_> {
    fn drop(&mut self) {
        if !self.finished && !thread::panicking() {
            self.complete();
        }
    }
}

/// A client port `P` in [`PORT_RANGE`] such that `P` and `P + 10000` were
/// free on 127.0.0.1 a moment ago and `P` is not in `used`.
fn cluster_port(used: &BTreeSet<u16>) -> u16 {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..10_000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        let bus = port + BUS_PORT_OFFSET;
        if used.contains(&port)
            || [port, bus]
                .iter()
                .any(|p| *p == SHARED_REDIS_PORT || *p == SHARED_REDIS_PORT + BUS_PORT_OFFSET)
        {
            continue;
        }
        // Both listeners are held at the same time, then released.
        let a = TcpListener::bind((HOST, port));
        let b = TcpListener::bind((HOST, bus));
        if a.is_ok() && b.is_ok() {
            return port;
        }
    }
    panic!("cache-tests: found no free port pair (P, P+10000) with P in {PORT_RANGE:?} on {HOST}");
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The value of `name:` in an `INFO`-style reply.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Parses a `CLUSTER NODES` reply.
fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeView>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("malformed CLUSTER NODES line {line:?}"));
        }
        // ip:port@cport[,hostname]
        let addr = fields[1].split('@').next().unwrap_or("");
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("bad address in CLUSTER NODES line {line:?}"))?;
        let flags: Vec<String> = fields[2].split(',').map(str::to_owned).collect();
        let role = if flags.iter().any(|f| f == "slave") {
            NodeRole::Replica
        } else {
            NodeRole::Primary
        };
        let primary_id = (fields[3] != "-").then(|| fields[3].to_owned());
        let mut slots = Vec::new();
        for s in &fields[8..] {
            if s.starts_with('[') {
                continue; // [slot->-id] / [slot-<-id]: migration in progress
            }
            let parse = |v: &str| {
                v.parse::<u16>()
                    .map_err(|_| format!("bad slot {s:?} in CLUSTER NODES line {line:?}"))
            };
            let range = match s.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(s)?, parse(s)?),
            };
            slots.push(range);
        }
        out.push(NodeView {
            id: fields[0].to_owned(),
            port,
            role,
            primary_id,
            flags,
            connected: fields[7] == "connected",
            slots,
        });
    }
    Ok(out)
}

/// Like [`crate::keyspace`], on an open connection.
fn dump_keys(con: &mut redis::Connection) -> BTreeMap<String, Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(con)
            .unwrap_or_else(|e| panic!("cache-tests: keyspace SCAN failed: {e}"));
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(con)
            .unwrap_or_else(|e| panic!("cache-tests: keyspace TYPE failed: {e}"));
        let value = match kind.as_str() {
            "none" => continue,
            "string" => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query(con)
                    .unwrap_or_else(|e| panic!("cache-tests: keyspace GET failed: {e}"));
                match v {
                    Some(v) => v,
                    None => continue,
                }
            }
            other => other.as_bytes().to_vec(),
        };
        out.insert(String::from_utf8_lossy(&key).into_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 master,fail? - 1426238316232 1426238315000 5 disconnected 10923 10924-16383
";
        let v = parse_cluster_nodes(text).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].role, NodeRole::Replica);
        assert_eq!(
            v[0].primary_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert_eq!(v[1].port, 30002);
        assert_eq!(v[1].slots, vec![(5461, 10922)]);
        assert_eq!(v[2].slots, vec![(0, 5460)]);
        assert_eq!(v[2].slot_count(), 5461);
        assert!(v[3].is_failing() && !v[3].connected);
        assert_eq!(v[3].slots, vec![(10923, 10923), (10924, 16383)]);
        assert!(v[3].owns_slot(16383) && !v[3].owns_slot(0));
    }

    #[test]
    fn info_fields() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_slots_ok"), Some("16384"));
        assert_eq!(info_field(info, "cluster_slots"), None);
    }
}
