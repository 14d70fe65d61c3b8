//! The cache on a Redis Cluster (3 primaries, 1 replica each, started once for this binary):
//! decorated calls of both attributes, clearing, the L1 across processes, health, stats,
//! a standalone configuration pointed at a cluster, and `cachectl`.
//!
//! The manual operations and the service API run on the cluster with every other backend in
//! `runtime_manual_ops.rs`; failover, resharding and a cluster down and back each have their
//! own binary (`cluster_faults_*.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use cache_runtime::cli::{self, Io, EXIT_OK, EXIT_USAGE};
use cache_runtime::{
    cache_result, cache_user_specific, with_cache, Cache, CacheConfig, CacheConfigBuilder,
    CacheError, ClusterMode,
};
use cache_tests::{ClusterOptions, RedisCluster};

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start(ClusterOptions::default()));
/// One test at a time on the cluster (each starts from an empty one). An async mutex: the
/// turn is held across awaits, and each test has its own runtime.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster, emptied, for this test alone.
async fn cluster() -> (&'static RedisCluster, tokio::sync::MutexGuard<'static, ()>) {
    let turn = TURN.lock().await;
    tokio::task::block_in_place(|| CLUSTER.flushall());
    (&CLUSTER, turn)
}

fn builder(cluster: &RedisCluster) -> CacheConfigBuilder {
    CacheConfig::builder()
        .url(cluster.url())
        .socket_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
}

fn cache(cluster: &RedisCluster) -> Cache {
    Cache::new(builder(cluster).build().unwrap()).unwrap()
}

/// Our keys per primary port.
fn keys_per_primary(cluster: &RedisCluster, prefix: &str) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for key in cluster.keyspace().keys().filter(|k| k.starts_with(prefix)) {
        *out.entry(cluster.primary_for_key(key)).or_insert(0) += 1;
    }
    out
}

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "clustered", ttl = 600)]
async fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x * x
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(data_type = "reports", ttl = 600)]
async fn report(user_id: &str, kind: &str) -> String {
    REPORT_RUNS.fetch_add(1, SeqCst);
    format!("{kind} report of {user_id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decorated_calls_cache_on_every_primary_and_clears_are_exact() {
    let (cluster, _turn) = cluster().await;
    let cache = cache(cluster);
    with_cache(cache.clone(), async {
        let before = SQUARE_RUNS.load(SeqCst);
        for x in 0..100 {
            assert_eq!(square(x).await, x * x);
            assert_eq!(square(x).await, x * x);
        }
        assert_eq!(
            SQUARE_RUNS.load(SeqCst) - before,
            100,
            "every second call is a hit"
        );
        let c = cache.counters()["clustered"];
        assert_eq!(
            (c.hits, c.misses, c.stores, c.errors),
            (100, 100, 100, 0),
            "{c:?}"
        );
        // The keys are spread over the three primaries: every slot is cached, not one
        // node's third of them.
        let spread = keys_per_primary(cluster, "tradistry:clustered:");
        assert_eq!(spread.values().sum::<usize>(), 100, "{spread:?}");
        assert_eq!(spread.len(), 3, "{spread:?}");
        assert!(spread.values().all(|n| *n >= 15), "{spread:?}");

        // User-specific results: one slot per user, so clearing a user is one-slot work.
        let before = REPORT_RUNS.load(SeqCst);
        for u in 0..10 {
            for kind in ["daily", "weekly", "monthly"] {
                let user = format!("u{u}");
                assert_eq!(
                    report(&user, kind).await,
                    format!("{kind} report of {user}")
                );
                assert_eq!(
                    report(&user, kind).await,
                    format!("{kind} report of {user}")
                );
            }
        }
        assert_eq!(REPORT_RUNS.load(SeqCst) - before, 30);
        let users = keys_per_primary(cluster, "tradistry:users:");
        assert_eq!(users.values().sum::<usize>(), 30, "{users:?}");
        assert!(
            users.len() >= 2,
            "users spread over the primaries: {users:?}"
        );
        assert_eq!(cache.clear_user("u3").await.unwrap(), 3);
        let left = cluster.keyspace();
        assert!(!left.keys().any(|k| k.contains("{user:u3}")), "{left:?}");
        assert_eq!(
            left.keys()
                .filter(|k| k.starts_with("tradistry:users:"))
                .count(),
            27
        );
        let before = REPORT_RUNS.load(SeqCst);
        report("u3", "daily").await;
        report("u4", "daily").await;
        assert_eq!(
            REPORT_RUNS.load(SeqCst) - before,
            1,
            "u3 recomputed, u4 still cached"
        );

        // A namespace clear covers every primary, and its count is exact.
        assert_eq!(cache.clear_namespace("clustered").await.unwrap(), 100);
        assert!(keys_per_primary(cluster, "tradistry:clustered:").is_empty());
        let before = SQUARE_RUNS.load(SeqCst);
        assert_eq!(square(7).await, 49);
        assert_eq!(
            SQUARE_RUNS.load(SeqCst) - before,
            1,
            "nothing stale after a clear"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_on_the_cluster_hears_the_writes_of_other_processes() {
    let (cluster, _turn) = cluster().await;
    let with_l1 = || Cache::new(builder(cluster).l1(true).build().unwrap()).unwrap();
    let (a, b) = (with_l1(), with_l1());
    let ns_a = a.namespace("l1c").unwrap();
    let ns_b = b.namespace("l1c").unwrap();
    // Keys on every primary, user keys included.
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for k in &keys {
        ns_b.set(k, &1u32, None).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.l1_active() && b.l1_active()) {
        assert!(Instant::now() < deadline, "L1 channels never came up");
        for k in &keys {
            let _ = ns_a.get::<u32>(k).await;
            let _ = ns_b.get::<u32>(k).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for k in &keys {
        // Redis, then L1.
        assert_eq!(ns_a.get::<u32>(k).await.unwrap(), Some(1));
        assert_eq!(ns_a.get::<u32>(k).await.unwrap(), Some(1));
    }
    assert!(
        a.counters()["l1c"].l1_hits >= keys.len() as u64,
        "A's L1 serves"
    );
    let mut worst = Duration::ZERO;
    for k in &keys {
        let written = Instant::now();
        ns_b.set(k, &2u32, None).await.unwrap();
        loop {
            if ns_a.get::<u32>(k).await.unwrap() == Some(2) {
                worst = worst.max(written.elapsed());
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "A still serves the old value of {k} after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!("cluster L1: worst time for another process's write to reach it: {worst:?}");
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    // A namespace clear by B empties A's L1 for that namespace too.
    assert_eq!(ns_b.clear().await.unwrap(), keys.len() as u64);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in &keys {
        assert_eq!(ns_a.get::<u32>(k).await.unwrap(), None, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_stats_describe_every_node() {
    let (cluster, _turn) = cluster().await;
    let cache = cache(cluster);
    let ns = cache.namespace("stats").unwrap();
    for i in 0..50 {
        ns.set(&format!("k{i}"), &i, None).await.unwrap();
    }
    let health = cache.health().await;
    assert_eq!(health.status, "healthy", "{health:?}");
    assert_eq!(health.info.server.mode.as_deref(), Some("cluster"));
    assert_eq!(health.info.nodes.len(), 6, "{health:?}");
    let primaries: Vec<_> = health
        .info
        .nodes
        .iter()
        .filter(|n| n.role == "primary")
        .collect();
    assert_eq!(primaries.len(), 3);
    assert_eq!(primaries.iter().map(|n| n.slots).sum::<u32>(), 16_384);
    assert!(health
        .info
        .nodes
        .iter()
        .all(|n| n.status == "ok" && n.latency_ms.is_some()));
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["info"]["nodes"].as_array().map(Vec::len), Some(6));

    let stats = cache.stats().await;
    assert_eq!(stats.keys.by_namespace["stats"], 50, "{stats:?}");
    assert!(!stats.keys.approximate);
    assert_eq!(stats.keys.total, Some(50));
    assert_eq!(stats.nodes.len(), 6);
    let primary_memory: u64 = stats
        .nodes
        .iter()
        .filter(|n| n.role == "primary")
        .filter_map(|n| n.used_memory)
        .sum();
    assert_eq!(stats.memory.used_memory, Some(primary_memory));
    let primary_keys: u64 = stats
        .nodes
        .iter()
        .filter(|n| n.role == "primary")
        .filter_map(|n| n.keys)
        .sum();
    assert_eq!(primary_keys, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_configuration_is_refused_and_auto_switches() {
    let (cluster, _turn) = cluster().await;
    // REDIS_CLUSTER=false at a cluster node: refused with the reason, never a partial cache.
    let refused = Cache::new(
        builder(cluster)
            .cluster(ClusterMode::Disabled)
            .build()
            .unwrap(),
    )
    .unwrap();
    let ns = refused.namespace("refused").unwrap();
    let err = ns.set("k", &1u8, None).await.unwrap_err();
    assert!(matches!(err, CacheError::WrongTopology(_)), "{err:?}");
    assert!(err.to_string().contains("REDIS_CLUSTER"), "{err}");
    let health = refused.health().await;
    assert_eq!(health.status, "unhealthy");
    assert!(
        health
            .error
            .as_deref()
            .unwrap_or("")
            .contains("REDIS_CLUSTER"),
        "{health:?}"
    );
    let before = SQUARE_RUNS.load(SeqCst);
    with_cache(refused.clone(), async {
        assert_eq!(square(3).await, 9);
        assert_eq!(square(3).await, 9);
    })
    .await;
    assert_eq!(
        SQUARE_RUNS.load(SeqCst) - before,
        2,
        "uncached, and correct"
    );
    assert!(cluster.keyspace().is_empty());
    let (code, out) = cachectl(&["ping"], builder(cluster).cluster(ClusterMode::Disabled)).await;
    assert_eq!(code, EXIT_USAGE, "{out}");
    assert!(out.contains("REDIS_CLUSTER=auto"), "{out}");

    // The same URL with the default (auto): cluster mode, every slot.
    let auto = cache(cluster);
    let ns = auto.namespace("auto").unwrap();
    for i in 0..30 {
        ns.set(&format!("k{i}"), &i, None).await.unwrap();
    }
    assert_eq!(keys_per_primary(cluster, "tradistry:auto:").len(), 3);
    assert_eq!(
        auto.health().await.info.server.mode.as_deref(),
        Some("cluster")
    );
}

/// Runs `cachectl ARGS`; returns the exit code and stdout + stderr.
async fn cachectl(args: &[&str], config: CacheConfigBuilder) -> (u8, String) {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| Some(true);
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        cli::run(
            args.iter().map(|s| (*s).to_owned()),
            config.build(),
            &mut io,
        )
        .await
    };
    (
        code,
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cachectl_shows_and_clears_the_cluster() {
    let (cluster, _turn) = cluster().await;
    let cache = cache(cluster);
    let ns = cache.namespace("ctl").unwrap();
    for i in 0..40 {
        ns.set(&format!("k{i}"), &i, None).await.unwrap();
    }
    let (code, out) = cachectl(&["ping"], builder(cluster)).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert_eq!(out.matches(" primary ").count(), 3, "{out}");
    assert_eq!(out.matches(" replica ").count(), 3, "{out}");
    for node in cluster.nodes() {
        assert!(out.contains(&format!("127.0.0.1:{}", node.port())), "{out}");
    }
    let (code, out) = cachectl(&["--json", "health"], builder(cluster)).await;
    assert_eq!(code, EXIT_OK, "{out}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(json["info"]["server"]["mode"], "cluster");
    assert_eq!(json["info"]["nodes"].as_array().map(Vec::len), Some(6));
    let (code, out) = cachectl(&["stats"], builder(cluster)).await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("ctl") && out.contains("40"), "{out}");
    let (code, out) = cachectl(
        &["--json", "clear", "--namespace", "ctl", "--yes"],
        builder(cluster),
    )
    .await;
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("\"cleared\": 40"), "{out}");
    assert!(cluster.keyspace().is_empty());
}
