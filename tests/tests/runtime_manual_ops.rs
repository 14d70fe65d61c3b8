//! Manual cache operations and the service API, with the same test bodies run against
//! every backend: the embedded store, plain Redis, TLS Redis, plain Redis with the L1
//! enabled, and a Redis Cluster (3 primaries, 1 replica each), plain and TLS (real
//! `redis-server` processes started by the `cache-tests` harness). Each cluster is started
//! once for this binary; its tests take turns on it, each starting from an empty cluster.
//!
//! Test names are `<body>::<backend>`, e.g. `typed_roundtrip_both_codecs::tls`, so
//! `cargo test --test runtime_manual_ops ::tls` runs one backend.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cache_runtime::service::{prompt_hash, CacheService};
use cache_runtime::{Cache, CacheConfig, CacheConfigBuilder, CacheError, CodecKind, KeyTtl};
use std::sync::{LazyLock, Mutex, MutexGuard};

use cache_tests::{keyspace, raw_client, ClusterOptions, RedisCluster, RedisServer, TlsOptions};
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Plain,
    Tls,
    /// Plain Redis with the optional in-process L1 in front (`CACHE_L1=true`).
    PlainL1,
    /// A Redis Cluster found by `REDIS_CLUSTER=auto` from one node's URL.
    Cluster,
    /// A TLS Redis Cluster given as `REDIS_CLUSTER=true` with every node in
    /// `REDIS_CLUSTER_NODES`.
    ClusterTls,
}

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start(ClusterOptions::default()));
static CLUSTER_TLS: LazyLock<RedisCluster> = LazyLock::new(|| {
    RedisCluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    })
});
/// One test at a time on the clusters (the bodies check the whole keyspace).
static CLUSTER_TURN: Mutex<()> = Mutex::new(());

/// One backend under test: the server (for Redis) and how to build caches on it.
struct Fixture {
    server: Option<RedisServer>,
    cluster: Option<(&'static RedisCluster, MutexGuard<'static, ()>)>,
    l1: bool,
    cluster_nodes: bool,
}

impl Fixture {
    fn start(kind: Kind) -> Self {
        let server = match kind {
            Kind::Embedded | Kind::Cluster | Kind::ClusterTls => None,
            Kind::Plain | Kind::PlainL1 => Some(RedisServer::plain()),
            Kind::Tls => Some(RedisServer::tls(TlsOptions::default())),
        };
        let cluster = match kind {
            Kind::Cluster => Some(&*CLUSTER),
            Kind::ClusterTls => Some(&*CLUSTER_TLS),
            _ => None,
        }
        .map(|cluster| {
            let turn = CLUSTER_TURN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cluster.flushall();
            (cluster, turn)
        });
        Self {
            server,
            cluster,
            l1: matches!(kind, Kind::PlainL1),
            cluster_nodes: matches!(kind, Kind::ClusterTls),
        }
    }

    fn builder(&self) -> CacheConfigBuilder {
        let builder = CacheConfig::builder();
        if let Some((cluster, _)) = &self.cluster {
            let builder = builder
                .url(cluster.url())
                .socket_timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(5));
            let builder = if self.cluster_nodes {
                let nodes = cluster
                    .nodes()
                    .iter()
                    .map(|n| cache_runtime::config::NodeAddr::new("127.0.0.1", n.port()))
                    .collect::<Vec<_>>();
                builder
                    .cluster(cache_runtime::config::ClusterMode::Enabled)
                    .cluster_nodes(nodes)
            } else {
                builder
            };
            return if cluster.options().tls {
                builder.ca_certs(cluster.ca_cert_path())
            } else {
                builder
            };
        }
        let Some(server) = &self.server else {
            return builder;
        };
        let builder = builder
            .url(server.url())
            .socket_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .l1(self.l1);
        if server.config().tls {
            builder.ca_certs(server.ca_cert_path())
        } else {
            builder
        }
    }

    fn cache(&self) -> Cache {
        self.cache_with(|b| b)
    }

    fn cache_with(&self, f: impl FnOnce(CacheConfigBuilder) -> CacheConfigBuilder) -> Cache {
        let config = f(self.builder()).build().expect("valid test config");
        let cache = Cache::new(config).expect("cache");
        let expected = if self.server.is_some() || self.cluster.is_some() {
            "redis"
        } else {
            "embedded"
        };
        assert_eq!(cache.backend_kind(), expected);
        cache
    }

    /// Every key of the Redis server or cluster (`None` for the embedded store).
    fn keyspace(&self) -> Option<BTreeMap<String, Vec<u8>>> {
        if let Some((cluster, _)) = &self.cluster {
            return Some(cluster.keyspace());
        }
        self.server.as_ref().map(keyspace)
    }

    /// A raw admin connection to the Redis server or cluster (`None` for the embedded store).
    fn raw(&self) -> Option<Raw> {
        if let Some((cluster, _)) = &self.cluster {
            let con = cluster
                .cluster_client()
                .get_connection()
                .expect("raw cluster connection");
            return Some(Raw(Box::new(con)));
        }
        self.server.as_ref().map(|s| Raw(Box::new(raw_client(s))))
    }
}

/// A raw connection to a server or a cluster (which routes each command by its key).
struct Raw(Box<dyn redis::ConnectionLike>);

impl redis::ConnectionLike for Raw {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.0.req_packed_command(cmd)
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        self.0.req_command(cmd)
    }
    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
    fn supports_pipelining(&self) -> bool {
        self.0.supports_pipelining()
    }
    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }
    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// Runs each body against every backend: `<body>::embedded`, `::plain`, `::tls`,
/// `::plain_l1` (Redis with the in-process L1 enabled), `::cluster` and `::cluster_tls`.
macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            use super::{Fixture, Kind};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$body(Fixture::start(Kind::Embedded)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain() {
                super::$body(Fixture::start(Kind::Plain)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$body(Fixture::start(Kind::Tls)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain_l1() {
                super::$body(Fixture::start(Kind::PlainL1)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$body(Fixture::start(Kind::Cluster)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster_tls() {
                super::$body(Fixture::start(Kind::ClusterTls)).await;
            }
        }
    )*};
}

on_every_backend!(
    typed_roundtrip_both_codecs,
    get_missing_is_none,
    delete_returns_whether_it_existed,
    exists_follows_set_and_delete,
    get_ttl_reports_remaining_lifetime,
    ttl_expiry_removes_the_value,
    counters_increment_and_read,
    clear_namespace_deletes_only_that_namespace,
    invalid_namespace_is_rejected,
    too_large_value_is_not_stored,
    undecodable_value_is_a_miss_and_overwritten,
    service_key_layout_and_roundtrip,
    clear_user_cache_scopes,
    hostile_user_ids_never_touch_other_users,
);

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Position {
    symbol: String,
    quantity: i64,
    price: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Portfolio {
    user: String,
    positions: Vec<Position>,
    total: f64,
    tags: BTreeMap<String, String>,
    note: Option<String>,
    raw: Vec<u8>,
}

fn portfolio() -> Portfolio {
    Portfolio {
        user: "user_123".into(),
        positions: vec![
            Position {
                symbol: "AAPL".into(),
                quantity: 10,
                price: 187.25,
            },
            Position {
                symbol: "MSFT".into(),
                quantity: -3,
                price: 410.5,
            },
        ],
        total: 640.75,
        tags: [("risk".to_owned(), "high".to_owned())].into(),
        note: None,
        raw: vec![0, 1, 2, 255],
    }
}

fn keys_of(map: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    map.keys().cloned().collect()
}

fn pttl(con: &mut dyn redis::ConnectionLike, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).expect("PTTL")
}

/// Asserts that `ttl` is `ExpiresIn(d)` with `expected - elapsed - 10ms < d <= expected`.
fn assert_expires_in(ttl: KeyTtl, expected: Duration, elapsed: Duration) {
    match ttl {
        KeyTtl::ExpiresIn(d) => {
            let floor = expected.saturating_sub(elapsed + Duration::from_millis(10));
            assert!(
                d <= expected && d > floor,
                "TTL {d:?} not in ({floor:?}, {expected:?}] (elapsed {elapsed:?})"
            );
        }
        other => panic!("expected ExpiresIn(~{expected:?}), got {other:?}"),
    }
}

async fn typed_roundtrip_both_codecs(f: Fixture) {
    let p = portfolio();
    for codec in [CodecKind::Bincode, CodecKind::Json] {
        let cache = f.cache_with(|b| b.codec(codec));
        let ns = cache.namespace("portfolio").unwrap();
        let key = format!("p-{codec}");
        assert_eq!(ns.key(&key), format!("tradistry:portfolio:p-{codec}"));

        ns.set(&key, &p, Some(TTL)).await.unwrap();
        assert_eq!(ns.get::<Portfolio>(&key).await.unwrap(), Some(p.clone()));

        // Plain types and unsized values.
        ns.set(&format!("n-{codec}"), &42u64, None).await.unwrap();
        assert_eq!(
            ns.get::<u64>(&format!("n-{codec}")).await.unwrap(),
            Some(42)
        );
        ns.set(&format!("s-{codec}"), "a str", Some(TTL))
            .await
            .unwrap();
        assert_eq!(
            ns.get::<String>(&format!("s-{codec}"))
                .await
                .unwrap()
                .as_deref(),
            Some("a str")
        );
        let v: Vec<Option<i32>> = vec![Some(1), None, Some(-7)];
        ns.set(&format!("v-{codec}"), &v, Some(TTL)).await.unwrap();
        assert_eq!(
            ns.get::<Vec<Option<i32>>>(&format!("v-{codec}"))
                .await
                .unwrap(),
            Some(v)
        );

        // Overwrite.
        let mut p2 = p.clone();
        p2.note = Some("updated".into());
        ns.set(&key, &p2, Some(TTL)).await.unwrap();
        assert_eq!(ns.get::<Portfolio>(&key).await.unwrap(), Some(p2));
        ns.set(&key, &p, Some(TTL)).await.unwrap();

        let counters = cache.counters()["portfolio"];
        assert_eq!(counters.hits, 5, "{counters:?}");
        assert_eq!(counters.stores, 6, "{counters:?}");
        assert_eq!(counters.errors, 0, "{counters:?}");

        // On Redis the bytes are the documented envelope: [0xC2, codec id, shape tag (8
        // bytes), payload].
        if let Some(ks) = f.keyspace() {
            let raw = &ks[&ns.key(&key)];
            assert_eq!(raw[..2], [cache_runtime::codec::FORMAT_V2, codec.id()]);
            if codec == CodecKind::Json {
                let decoded: Portfolio = serde_json::from_slice(&raw[10..]).expect("JSON payload");
                assert_eq!(decoded, p);
            }
        }
        // Read as another type that happens to decode the same bytes: a miss, never a value.
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct SwappedPosition {
            price: f64,
            quantity: i64,
            symbol: String,
        }
        let px = Position {
            symbol: "AAPL".into(),
            quantity: 3,
            price: 150.25,
        };
        ns.set("position", &px, Some(TTL)).await.unwrap();
        assert_eq!(ns.get::<SwappedPosition>("position").await.unwrap(), None);
        assert_eq!(ns.get::<Position>("position").await.unwrap(), Some(px));
        assert_eq!(cache.counters()["portfolio"].shape_mismatches, 1);
    }
}

async fn get_missing_is_none(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("missing").unwrap();
    assert_eq!(ns.get::<String>("nope").await.unwrap(), None);
    assert_eq!(ns.get::<Portfolio>("").await.unwrap(), None);
    assert_eq!(ns.get_counter("nope").await.unwrap(), None);
    let c = cache.counters()["missing"];
    assert_eq!((c.hits, c.misses, c.hit_ratio), (0, 2, Some(0.0)), "{c:?}");
    if let Some(ks) = f.keyspace() {
        assert!(ks.is_empty(), "a read created keys: {ks:?}");
    }
}

async fn delete_returns_whether_it_existed(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("del").unwrap();
    assert!(!ns.delete("never").await.unwrap());
    ns.set("k", "v", Some(TTL)).await.unwrap();
    ns.set("keep", "v", Some(TTL)).await.unwrap();
    assert!(ns.delete("k").await.unwrap());
    assert!(!ns.delete("k").await.unwrap());
    assert_eq!(ns.get::<String>("k").await.unwrap(), None);
    assert_eq!(
        ns.get::<String>("keep").await.unwrap().as_deref(),
        Some("v")
    );
    // A counter is a key like any other.
    ns.increment("c", 1, None).await.unwrap();
    assert!(ns.delete("c").await.unwrap());
    assert_eq!(ns.get_counter("c").await.unwrap(), None);
    if let Some(ks) = f.keyspace() {
        assert_eq!(
            keys_of(&ks),
            BTreeSet::from(["tradistry:del:keep".to_owned()])
        );
    }
}

async fn exists_follows_set_and_delete(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("ex").unwrap();
    assert!(!ns.exists("k").await.unwrap());
    ns.set("k", &1u8, Some(TTL)).await.unwrap();
    assert!(ns.exists("k").await.unwrap());
    // Same key name in another namespace is another key.
    assert!(!cache.namespace("ex2").unwrap().exists("k").await.unwrap());
    ns.delete("k").await.unwrap();
    assert!(!ns.exists("k").await.unwrap());
}

async fn get_ttl_reports_remaining_lifetime(f: Fixture) {
    let cache = f.cache_with(|b| b.ttl_default(Duration::from_secs(120)));
    let ns = cache.namespace("ttl").unwrap();

    let ttl = Duration::from_secs(60);
    let start = Instant::now();
    ns.set("k", "v", Some(ttl)).await.unwrap();
    let got = ns.get_ttl("k").await.unwrap();
    assert_expires_in(got, ttl, start.elapsed());
    assert!((59..=60).contains(&got.as_redis_secs()), "{got:?}");

    // Sub-second precision.
    let start = Instant::now();
    ns.set("ms", "v", Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    assert_expires_in(
        ns.get_ttl("ms").await.unwrap(),
        Duration::from_millis(1500),
        start.elapsed(),
    );

    // `None` uses the namespace's strategy: custom namespaces get ttl_default,
    // the seed's namespaces their own.
    let start = Instant::now();
    ns.set("default", "v", None).await.unwrap();
    assert_expires_in(
        ns.get_ttl("default").await.unwrap(),
        Duration::from_secs(120),
        start.elapsed(),
    );
    for (name, secs) in [
        ("users", 3600),
        ("ai", 1800),
        ("trading", 900),
        ("analytics", 1800),
        ("general", 120),
    ] {
        let ns = cache.namespace(name).unwrap();
        let start = Instant::now();
        ns.set("k", "v", None).await.unwrap();
        assert_expires_in(
            ns.get_ttl("k").await.unwrap(),
            Duration::from_secs(secs),
            start.elapsed(),
        );
    }

    // Missing key, and a counter: created with the namespace's TTL.
    let missing = ns.get_ttl("missing").await.unwrap();
    assert_eq!(missing, KeyTtl::Missing);
    assert_eq!(missing.as_redis_secs(), -2);
    let start = Instant::now();
    ns.increment("counter", 1, None).await.unwrap();
    assert_expires_in(
        ns.get_ttl("counter").await.unwrap(),
        Duration::from_secs(120),
        start.elapsed(),
    );

    // A TTL of zero is refused, nothing is stored.
    assert!(ns.set("zero", "v", Some(Duration::ZERO)).await.is_err());
    assert!(!ns.exists("zero").await.unwrap());

    if let Some(mut raw) = f.raw() {
        let ms = pttl(&mut raw, "tradistry:ttl:k");
        assert!(ms > 50_000 && ms <= 60_000, "PTTL {ms}");
    }
}

async fn ttl_expiry_removes_the_value(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("expiry").unwrap();
    ns.set("short", "v", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    ns.set("long", "v", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        ns.get::<String>("short").await.unwrap().as_deref(),
        Some("v")
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(ns.get::<String>("short").await.unwrap(), None);
    assert!(!ns.exists("short").await.unwrap());
    assert_eq!(ns.get_ttl("short").await.unwrap(), KeyTtl::Missing);
    assert!(!ns.delete("short").await.unwrap());
    assert_eq!(
        ns.get::<String>("long").await.unwrap().as_deref(),
        Some("v")
    );
    if let Some(ks) = f.keyspace() {
        assert_eq!(
            keys_of(&ks),
            BTreeSet::from(["tradistry:expiry:long".to_owned()])
        );
    }
}

async fn counters_increment_and_read(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("counters").unwrap();
    assert_eq!(ns.increment("c", 5, None).await.unwrap(), 5);
    assert_eq!(ns.increment("c", 1, None).await.unwrap(), 6);
    assert_eq!(ns.increment("c", -8, None).await.unwrap(), -2);
    assert_eq!(ns.increment("c", 0, None).await.unwrap(), -2);
    assert_eq!(ns.get_counter("c").await.unwrap(), Some(-2));
    assert_eq!(ns.increment("fresh", -3, None).await.unwrap(), -3);
    assert_eq!(ns.get_counter("missing").await.unwrap(), None);
    // A counter is an integer value: read back as one (any integer type it fits).
    assert_eq!(ns.get::<i64>("c").await.unwrap(), Some(-2));
    assert_eq!(ns.get::<u32>("c").await.unwrap(), None, "-2 is no u32");
    assert_eq!(ns.get::<String>("c").await.unwrap(), None);
    // An integer `set` stores is a counter.
    ns.set("from-set", &40u64, Some(TTL)).await.unwrap();
    assert_eq!(ns.increment("from-set", 2, None).await.unwrap(), 42);
    assert_eq!(ns.get::<u64>("from-set").await.unwrap(), Some(42));
    // A counter gets the TTL it is created with, and one made by `set` keeps its own.
    let start = Instant::now();
    ns.increment("ttl-given", 1, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_expires_in(
        ns.get_ttl("ttl-given").await.unwrap(),
        Duration::from_secs(30),
        start.elapsed(),
    );
    assert_expires_in(
        ns.get_ttl("from-set").await.unwrap(),
        TTL,
        start.elapsed() + Duration::from_secs(2),
    );

    // A value that is not a counter: NotACounter, and the value is left alone.
    ns.set("text", "hello", Some(TTL)).await.unwrap();
    let err = ns.increment("text", 1, None).await.unwrap_err();
    assert!(matches!(err, CacheError::NotACounter(_)), "{err:?}");
    assert!(
        err.to_string().contains("integer counter"),
        "message: {err}"
    );
    let err = ns.get_counter("text").await.unwrap_err();
    assert!(matches!(err, CacheError::NotACounter(_)), "{err:?}");
    assert_eq!(
        ns.get::<String>("text").await.unwrap().as_deref(),
        Some("hello")
    );

    // Overflow is refused and the counter keeps its value.
    assert_eq!(ns.increment("big", i64::MAX, None).await.unwrap(), i64::MAX);
    let err = ns.increment("big", 1, None).await.unwrap_err();
    assert!(matches!(err, CacheError::NotACounter(_)), "{err:?}");
    assert_eq!(ns.get_counter("big").await.unwrap(), Some(i64::MAX));
    assert_eq!(ns.increment("min", i64::MIN, None).await.unwrap(), i64::MIN);
    let err = ns.increment("min", -1, None).await.unwrap_err();
    assert!(matches!(err, CacheError::NotACounter(_)), "{err:?}");

    if let Some(mut raw) = f.raw() {
        // Counters are plain Redis integers.
        let v: String = redis::cmd("GET")
            .arg("tradistry:counters:c")
            .query(&mut raw)
            .unwrap();
        assert_eq!(v, "-2");

        // INCRBY on a key with a TTL keeps the TTL.
        redis::cmd("SET")
            .arg("tradistry:counters:ttl")
            .arg("10")
            .arg("EX")
            .arg(100)
            .exec(&mut raw)
            .unwrap();
        assert_eq!(ns.increment("ttl", 1, None).await.unwrap(), 11);
        let start = Instant::now();
        assert_expires_in(
            ns.get_ttl("ttl").await.unwrap(),
            Duration::from_secs(100),
            start.elapsed() + Duration::from_secs(2),
        );

        // Another Redis type at the key: NotACounter, not a panic or a generic error.
        redis::cmd("HSET")
            .arg("tradistry:counters:hash")
            .arg("f")
            .arg("v")
            .exec(&mut raw)
            .unwrap();
        let err = ns.increment("hash", 1, None).await.unwrap_err();
        assert!(matches!(err, CacheError::NotACounter(_)), "{err:?}");
    }
}

async fn clear_namespace_deletes_only_that_namespace(f: Fixture) {
    const BULK: usize = 1200;
    let cache = f.cache();
    let other_app = f.cache_with(|b| b.key_prefix("otherapp"));
    let bulk = cache.namespace("bulk").unwrap();
    for i in 0..BULK {
        bulk.set(&format!("k{i}"), &i, Some(TTL)).await.unwrap();
    }
    bulk.increment("counter", 1, None).await.unwrap();
    // Neighbours: a namespace sharing the name's prefix, another namespace, the same
    // namespace under another key prefix, and user data.
    for i in 0..5 {
        for ns in ["bulk2", "other", "bul"] {
            cache
                .namespace(ns)
                .unwrap()
                .set(&format!("k{i}"), &i, Some(TTL))
                .await
                .unwrap();
        }
        other_app
            .namespace("bulk")
            .unwrap()
            .set(&format!("k{i}"), &i, Some(TTL))
            .await
            .unwrap();
    }
    let service = CacheService::new(cache.clone());
    service
        .cache_user_data("u1", "profile", "p", None)
        .await
        .unwrap();

    let mut expected = (BULK + 1) as u64;
    let before = if let Some(mut raw) = f.raw() {
        for (k, v) in [
            ("tradistry:bulk", "no trailing colon"),
            ("tradistry:bulkx:1", "x"),
            ("unrelated", "x"),
            ("bulk:k1", "x"),
        ] {
            redis::cmd("SET").arg(k).arg(v).exec(&mut raw).unwrap();
        }
        // A foreign type inside the namespace is deleted with it.
        redis::cmd("HSET")
            .arg("tradistry:bulk:hash")
            .arg("f")
            .arg("v")
            .exec(&mut raw)
            .unwrap();
        expected += 1;
        f.keyspace()
    } else {
        None
    };

    assert_eq!(cache.clear_namespace("bulk").await.unwrap(), expected);

    if let (Some(before), Some(after)) = (before, f.keyspace()) {
        let wanted: BTreeMap<String, Vec<u8>> = before
            .into_iter()
            .filter(|(k, _)| !k.starts_with("tradistry:bulk:"))
            .collect();
        assert_eq!(after, wanted, "clear_namespace touched other keys");
        assert!(after.contains_key("tradistry:bulk"));
        assert!(after.contains_key("otherapp:bulk:k0"));
    }
    for i in [0, 1, 499, 500, 1000, BULK - 1] {
        assert_eq!(bulk.get::<usize>(&format!("k{i}")).await.unwrap(), None);
    }
    assert_eq!(bulk.get_counter("counter").await.unwrap(), None);
    for ns in ["bulk2", "other", "bul"] {
        assert_eq!(
            cache.namespace(ns).unwrap().get::<i32>("k4").await.unwrap(),
            Some(4),
            "namespace {ns}"
        );
    }
    assert_eq!(
        other_app
            .namespace("bulk")
            .unwrap()
            .get::<i32>("k0")
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        service
            .get_user_data::<String>("u1", "profile")
            .await
            .unwrap()
            .as_deref(),
        Some("p")
    );
    // Idempotent; the NamespaceCache form agrees.
    assert_eq!(cache.clear_namespace("bulk").await.unwrap(), 0);
    assert_eq!(cache.namespace("bulk2").unwrap().clear().await.unwrap(), 5);
}

async fn invalid_namespace_is_rejected(f: Fixture) {
    let cache = f.cache();
    cache
        .namespace("victim")
        .unwrap()
        .set("k", &1u8, Some(TTL))
        .await
        .unwrap();
    let before = f.keyspace();
    let too_long = "a".repeat(65);
    for bad in [
        "",
        "Bad",
        "a:b",
        "*",
        "a*",
        "vic*",
        "a b",
        "ns?",
        "[x]",
        "é",
        "a\\",
        too_long.as_str(),
    ] {
        match cache.namespace(bad) {
            Err(CacheError::InvalidNamespace { name, .. }) => assert_eq!(name, bad),
            other => panic!("namespace({bad:?}) gave {other:?}"),
        }
        match cache.clear_namespace(bad).await {
            Err(CacheError::InvalidNamespace { name, .. }) => assert_eq!(name, bad),
            other => panic!("clear_namespace({bad:?}) gave {other:?}"),
        }
    }
    let err = cache.namespace("Bad:Name").unwrap_err().to_string();
    assert!(err.contains("a-z") && err.contains("64"), "message: {err}");
    for good in ["a", "reports-v2", "x_1", "0", &"a".repeat(64)] {
        cache.namespace(good).unwrap();
    }
    // Nothing was cleared by the rejected names (`*` in particular).
    assert_eq!(f.keyspace(), before);
    assert_eq!(
        cache
            .namespace("victim")
            .unwrap()
            .get::<u8>("k")
            .await
            .unwrap(),
        Some(1)
    );
}

async fn too_large_value_is_not_stored(f: Fixture) {
    let cache = f.cache_with(|b| b.max_value_bytes(1024));
    let ns = cache.namespace("big").unwrap();
    // bincode Vec<u8>: 8-byte length + bytes, plus the 10-byte envelope.
    let fits = vec![7u8; 1006];
    ns.set("fits", &fits, Some(TTL)).await.unwrap();
    assert_eq!(ns.get::<Vec<u8>>("fits").await.unwrap(), Some(fits));

    match ns.set("too", &vec![7u8; 1007], Some(TTL)).await {
        Err(CacheError::TooLarge { size, limit }) => assert_eq!((size, limit), (1025, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let err = ns
        .set("too", &vec![0u8; 5000], Some(TTL))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("CACHE_MAX_VALUE_BYTES"),
        "message: {err}"
    );
    assert!(!ns.exists("too").await.unwrap());
    assert_eq!(ns.get::<Vec<u8>>("too").await.unwrap(), None);
    assert_eq!(cache.counters()["big"].errors, 2);

    // The service API applies the same limit.
    let service = CacheService::new(cache.clone());
    let err = service
        .cache_user_data("u", "blob", &vec![1u8; 4096], None)
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::TooLarge { .. }), "{err:?}");
    assert_eq!(
        service.get_user_data::<Vec<u8>>("u", "blob").await.unwrap(),
        None
    );

    if let Some(ks) = f.keyspace() {
        assert_eq!(
            keys_of(&ks),
            BTreeSet::from(["tradistry:big:fits".to_owned()])
        );
    }
}

async fn undecodable_value_is_a_miss_and_overwritten(f: Fixture) {
    let cache = f.cache();
    let ns = cache.namespace("decode").unwrap();

    // A value of another type.
    ns.set("s", "a string", Some(TTL)).await.unwrap();
    assert_eq!(ns.get::<Portfolio>("s").await.unwrap(), None);
    assert_eq!(ns.get::<u64>("s").await.unwrap(), None);
    assert_eq!(
        ns.get::<String>("s").await.unwrap().as_deref(),
        Some("a string")
    );
    // A counter read as a string is a miss; the next set overwrites it.
    ns.increment("c", 5, None).await.unwrap();
    assert_eq!(ns.get::<String>("c").await.unwrap(), None);
    ns.set("c", "text now", Some(TTL)).await.unwrap();
    assert_eq!(
        ns.get::<String>("c").await.unwrap().as_deref(),
        Some("text now")
    );
    let mut misses = 3;

    if let Some(mut raw) = f.raw() {
        let set_raw = |raw: &mut dyn redis::ConnectionLike, key: &str, bytes: &[u8]| {
            redis::cmd("SET")
                .arg(ns.key(key))
                .arg(bytes)
                .exec(raw)
                .unwrap();
        };
        set_raw(&mut raw, "garbage", b"\x00\xffnot an envelope");
        set_raw(&mut raw, "empty", b"");
        set_raw(
            &mut raw,
            "json",
            &CodecKind::Json.encode("json text", 1024).unwrap(),
        );
        // A bincode envelope claiming a 2^63-byte string: a miss, not a huge allocation.
        let header = &CodecKind::Bincode.encode("", 64).unwrap()[..10];
        set_raw(
            &mut raw,
            "huge-claim",
            &[header, &[0, 0, 0, 0, 0, 0, 0, 0x7f, b'x'][..]].concat(),
        );
        for key in ["garbage", "empty", "json", "huge-claim"] {
            assert_eq!(ns.get::<String>(key).await.unwrap(), None, "key {key}");
            misses += 1;
        }
        // Other Redis types at the key: a miss too.
        redis::cmd("HSET")
            .arg(ns.key("hash"))
            .arg("f")
            .arg("v")
            .exec(&mut raw)
            .unwrap();
        redis::cmd("RPUSH")
            .arg(ns.key("list"))
            .arg("x")
            .exec(&mut raw)
            .unwrap();
        for key in ["hash", "list"] {
            assert_eq!(ns.get::<String>(key).await.unwrap(), None, "key {key}");
            misses += 1;
            assert!(ns.exists(key).await.unwrap());
        }
        // The next set overwrites all of them.
        for key in ["garbage", "empty", "json", "huge-claim", "hash", "list"] {
            ns.set(key, &format!("fixed {key}"), Some(TTL))
                .await
                .unwrap();
            assert_eq!(
                ns.get::<String>(key).await.unwrap(),
                Some(format!("fixed {key}")),
                "key {key}"
            );
        }
        let ks = f.keyspace().unwrap();
        assert_eq!(ks[&ns.key("hash")][..2], [0xC2, 1]);
    }
    let c = cache.counters()["decode"];
    assert_eq!(c.misses, misses, "{c:?}");
    assert_eq!(
        c.errors, 0,
        "undecodable values are misses, not errors: {c:?}"
    );
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Quote {
    symbol: String,
    bid: f64,
    ask: f64,
}

async fn service_key_layout_and_roundtrip(f: Fixture) {
    let service = CacheService::new(f.cache());
    let quote = Quote {
        symbol: "AAPL".into(),
        bid: 187.0,
        ask: 187.5,
    };
    let index = "tradistry:__index:{user:123}";

    service
        .cache_user_data("123", "profile", "John", None)
        .await
        .unwrap();
    if let Some(ks) = f.keyspace() {
        assert_eq!(
            keys_of(&ks),
            BTreeSet::from([
                "tradistry:users:{user:123}:profile".to_owned(),
                index.to_owned()
            ])
        );
        let stored = &ks["tradistry:users:{user:123}:profile"];
        assert_eq!(CodecKind::Bincode.decode::<String>(stored).unwrap(), "John");
        assert_eq!(ks[index], b"zset".to_vec());
    }
    service
        .cache_ai_response("123", "abc123", "an answer", None)
        .await
        .unwrap();
    service
        .cache_trading_data("123", "AAPL", "quote", &quote, None)
        .await
        .unwrap();
    let hash = prompt_hash("What is my win rate?");
    assert_eq!(hash.len(), 32);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    service
        .cache_ai_response("456", &hash, "other user", Some(Duration::from_secs(60)))
        .await
        .unwrap();

    if let Some(mut raw) = f.raw() {
        let ks = f.keyspace().unwrap();
        let expected: BTreeSet<String> = [
            "tradistry:users:{user:123}:profile".to_owned(),
            "tradistry:ai:{user:123}:prompt:abc123".to_owned(),
            "tradistry:trading:{user:123}:AAPL:quote".to_owned(),
            format!("tradistry:ai:{{user:456}}:prompt:{hash}"),
            index.to_owned(),
            "tradistry:__index:{user:456}".to_owned(),
        ]
        .into();
        assert_eq!(keys_of(&ks), expected);
        // The seed's TTL strategy.
        for (key, secs) in [
            ("tradistry:users:{user:123}:profile", 3600),
            ("tradistry:ai:{user:123}:prompt:abc123", 1800),
            ("tradistry:trading:{user:123}:AAPL:quote", 900),
        ] {
            let ms = pttl(&mut raw, key);
            assert!(
                ms > (secs - 10) * 1000 && ms <= secs * 1000,
                "{key}: PTTL {ms}"
            );
        }
        // The index lists the user's keys and lives as long as the longest of them.
        let mut members: Vec<String> = redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(-1)
            .query(&mut raw)
            .unwrap();
        members.sort();
        assert_eq!(
            members,
            [
                "tradistry:ai:{user:123}:prompt:abc123",
                "tradistry:trading:{user:123}:AAPL:quote",
                "tradistry:users:{user:123}:profile",
            ]
        );
        let ms = pttl(&mut raw, index);
        assert!(ms > 3_590_000 && ms <= 3_600_000, "index PTTL {ms}");
    }

    assert_eq!(
        service
            .get_user_data::<String>("123", "profile")
            .await
            .unwrap()
            .as_deref(),
        Some("John")
    );
    assert_eq!(
        service
            .get_ai_response::<String>("123", "abc123")
            .await
            .unwrap()
            .as_deref(),
        Some("an answer")
    );
    assert_eq!(
        service
            .get_trading_data::<Quote>("123", "AAPL", "quote")
            .await
            .unwrap(),
        Some(quote)
    );
    assert_eq!(
        service
            .get_ai_response::<String>("456", &hash)
            .await
            .unwrap()
            .as_deref(),
        Some("other user")
    );
    assert_eq!(
        service
            .get_user_data::<String>("456", "profile")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        service
            .get_trading_data::<Quote>("123", "MSFT", "quote")
            .await
            .unwrap(),
        None
    );

    let stats = service.cache().stats().await;
    assert_eq!(stats.keys.by_namespace["users"], 1, "{stats:?}");
    assert_eq!(stats.keys.by_namespace["ai"], 2, "{stats:?}");
    assert_eq!(stats.keys.by_namespace["trading"], 1, "{stats:?}");
}

async fn clear_user_cache_scopes(f: Fixture) {
    let service = CacheService::new(f.cache());
    let users = ["123", "1234", "12", "other"];
    for u in users {
        service
            .cache_user_data(u, "profile", &format!("profile {u}"), None)
            .await
            .unwrap();
        service
            .cache_user_data(u, "preferences", &format!("prefs {u}"), None)
            .await
            .unwrap();
        service
            .cache_ai_response(u, "h1", &format!("ai {u}"), None)
            .await
            .unwrap();
        service
            .cache_trading_data(u, "AAPL", "quote", &format!("quote {u}"), None)
            .await
            .unwrap();
    }
    // A manual key that looks like user data but is in no index.
    let manual = service.cache().namespace("users").unwrap();
    manual
        .set("user:123:profile", "manual", Some(TTL))
        .await
        .unwrap();

    let before = f.keyspace();
    assert_eq!(service.clear_user_cache("123").await.unwrap(), 2);
    if let (Some(before), Some(after)) = (before, f.keyspace()) {
        let removed: BTreeSet<String> = keys_of(&before)
            .difference(&keys_of(&after))
            .cloned()
            .collect();
        assert_eq!(
            removed,
            BTreeSet::from([
                "tradistry:users:{user:123}:profile".to_owned(),
                "tradistry:users:{user:123}:preferences".to_owned(),
            ])
        );
        assert!(keys_of(&after).is_subset(&keys_of(&before)));
    }
    assert_eq!(
        service
            .get_user_data::<String>("123", "profile")
            .await
            .unwrap(),
        None
    );
    assert!(service
        .get_ai_response::<String>("123", "h1")
        .await
        .unwrap()
        .is_some());
    assert!(service
        .get_trading_data::<String>("123", "AAPL", "quote")
        .await
        .unwrap()
        .is_some());

    let before = f.keyspace();
    assert_eq!(service.clear_all_user_cache("123").await.unwrap(), 2);
    if let (Some(before), Some(after)) = (before, f.keyspace()) {
        let removed: BTreeSet<String> = keys_of(&before)
            .difference(&keys_of(&after))
            .cloned()
            .collect();
        assert_eq!(
            removed,
            BTreeSet::from([
                "tradistry:ai:{user:123}:prompt:h1".to_owned(),
                "tradistry:trading:{user:123}:AAPL:quote".to_owned(),
                "tradistry:__index:{user:123}".to_owned(),
            ])
        );
    }
    assert_eq!(service.clear_all_user_cache("123").await.unwrap(), 0);
    assert_eq!(service.clear_user_cache("123").await.unwrap(), 0);

    for u in ["1234", "12", "other"] {
        assert_eq!(
            service.get_user_data::<String>(u, "profile").await.unwrap(),
            Some(format!("profile {u}"))
        );
        assert_eq!(
            service
                .get_user_data::<String>(u, "preferences")
                .await
                .unwrap(),
            Some(format!("prefs {u}"))
        );
        assert_eq!(
            service.get_ai_response::<String>(u, "h1").await.unwrap(),
            Some(format!("ai {u}"))
        );
        assert_eq!(
            service
                .get_trading_data::<String>(u, "AAPL", "quote")
                .await
                .unwrap(),
            Some(format!("quote {u}"))
        );
    }
    assert_eq!(
        manual
            .get::<String>("user:123:profile")
            .await
            .unwrap()
            .as_deref(),
        Some("manual")
    );
}

async fn hostile_user_ids_never_touch_other_users(f: Fixture) {
    let service = CacheService::new(f.cache());
    let ids = [
        "a*", "a:b", "a?", "[a]", "a b", "", "ab", "a", "a\\", "*", "%2A", "a%3Ab", "{a}",
        "user:a", "a\nb",
    ];
    if let Some(mut raw) = f.raw() {
        // Keys that hostile patterns would match if ids were not escaped.
        for k in [
            "tradistry:users:user:a",
            "tradistry:users:user:abc:x",
            "tradistry:users:{user:a}",
            "tradistry:users:{user:abc}:x",
            "tradistry:users:{user:a}x:y",
            "other",
        ] {
            redis::cmd("SET")
                .arg(k)
                .arg("foreign")
                .exec(&mut raw)
                .unwrap();
        }
    }
    let foreign = f.keyspace();
    let mut owned: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for id in ids {
        let before = f.keyspace();
        service
            .cache_user_data(id, "profile", &format!("profile {id}"), None)
            .await
            .unwrap();
        service
            .cache_ai_response(id, "h", &format!("ai {id}"), None)
            .await
            .unwrap();
        service
            .cache_trading_data(id, "AAPL", "quote", &format!("quote {id}"), None)
            .await
            .unwrap();
        if let (Some(before), Some(after)) = (before, f.keyspace()) {
            let new: BTreeSet<String> = keys_of(&after)
                .difference(&keys_of(&before))
                .cloned()
                .collect();
            // Data keys of three namespaces plus the user's index: distinct from every other id.
            assert_eq!(new.len(), 4, "id {id:?} created {new:?}");
            owned.insert(id, new);
        }
    }

    // Round 1: clear_user_cache (users namespace only) for each id in turn.
    for (n, id) in ids.iter().enumerate() {
        let before = f.keyspace();
        assert_eq!(service.clear_user_cache(id).await.unwrap(), 1, "id {id:?}");
        if let (Some(before), Some(after)) = (before, f.keyspace()) {
            let removed: Vec<String> = keys_of(&before)
                .difference(&keys_of(&after))
                .cloned()
                .collect();
            assert_eq!(removed.len(), 1, "id {id:?} removed {removed:?}");
            assert!(
                removed[0].starts_with("tradistry:users:{user:"),
                "{removed:?}"
            );
            assert!(
                owned[id].contains(&removed[0]),
                "id {id:?} removed {removed:?}"
            );
            assert!(keys_of(&after).is_subset(&keys_of(&before)));
        }
        for (m, other) in ids.iter().enumerate() {
            let profile = service
                .get_user_data::<String>(other, "profile")
                .await
                .unwrap();
            let expected = (m > n).then(|| format!("profile {other}"));
            assert_eq!(
                profile, expected,
                "after clearing {id:?}, profile of {other:?}"
            );
            assert_eq!(
                service.get_ai_response::<String>(other, "h").await.unwrap(),
                Some(format!("ai {other}")),
                "after clearing {id:?}, ai of {other:?}"
            );
        }
    }

    // Round 2: clear_all_user_cache for each id in turn.
    for (n, id) in ids.iter().enumerate() {
        let before = f.keyspace();
        assert_eq!(
            service.clear_all_user_cache(id).await.unwrap(),
            2,
            "id {id:?}"
        );
        if let (Some(before), Some(after)) = (before, f.keyspace()) {
            let removed: BTreeSet<String> = keys_of(&before)
                .difference(&keys_of(&after))
                .cloned()
                .collect();
            assert_eq!(removed.len(), 3, "id {id:?} removed {removed:?}");
            assert!(
                removed.is_subset(&owned[id]),
                "id {id:?} removed {removed:?}"
            );
            assert!(keys_of(&after).is_subset(&keys_of(&before)));
        }
        for (m, other) in ids.iter().enumerate() {
            let expected = (m > n).then(|| format!("quote {other}"));
            assert_eq!(
                service
                    .get_trading_data::<String>(other, "AAPL", "quote")
                    .await
                    .unwrap(),
                expected,
                "after clearing {id:?}, trading of {other:?}"
            );
        }
    }
    // Only the foreign keys are left.
    assert_eq!(f.keyspace(), foreign);
}

/// `Cache::in_memory()` (rather than a built config) behaves like the embedded backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_constructor_works() {
    let cache = Cache::in_memory();
    assert_eq!(cache.backend_kind(), "embedded");
    assert_eq!(cache.pool_stats(), None);
    let ns = cache.namespace("custom").unwrap();
    ns.set("key", &portfolio(), Some(TTL)).await.unwrap();
    assert_eq!(ns.get::<Portfolio>("key").await.unwrap(), Some(portfolio()));
    assert_eq!(ns.increment("counter", 5, None).await.unwrap(), 5);
    assert_eq!(cache.clear_namespace("custom").await.unwrap(), 2);
    let health = cache.health().await;
    assert_eq!((health.status, health.connected), ("healthy", true));
    assert_eq!(health.backend, "embedded");
}
