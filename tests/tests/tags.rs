//! Tags (`tags = [...]`, `with_tags`, `Cache::invalidate_tag`) with the same bodies on
//! every backend: the embedded store, plain Redis, Redis with the L1, a Redis Cluster (where
//! a tag's set lives in one slot and its members anywhere).
//!
//! Test names are `<body>::<backend>`.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cache_runtime::service::CacheService;
use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster, RedisServer};

/// Body runs, one counter per test (tests run concurrently).
type Runs = Arc<AtomicU64>;

/// Tagged by its user and by the market; the tag is built from the arguments.
#[cache_result(ttl = 60, namespace = "tags_a", tags = ["trades:{user_id}", "market"], skip(runs))]
async fn positions(user_id: String, symbol: String, runs: Runs) -> u64 {
    runs.fetch_add(1, SeqCst);
    (user_id.len() + symbol.len()) as u64
}

/// Another namespace, another attribute, the same per-user tag.
#[cache_user_specific(ttl = 60, namespace = "tags_b", data_type = "fills", tags = ["trades:{user_id}", "fills of {user_id} in {venue}"], skip(runs))]
async fn fills(user_id: &str, venue: &str, runs: &Runs) -> Vec<u32> {
    runs.fetch_add(1, SeqCst);
    vec![user_id.len() as u32, venue.len() as u32]
}

/// Short-lived, to see tag sets go away with their entries.
#[cache_result(ttl = 1, namespace = "tags_c", tags = ["short"], skip(runs))]
async fn short_lived(n: u32, runs: &Runs) -> u32 {
    runs.fetch_add(1, SeqCst);
    n
}

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start(ClusterOptions::default()));

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Plain,
    PlainL1,
    Cluster,
}

struct Fixture {
    server: Option<RedisServer>,
    kind: Kind,
    cache: Cache,
}

impl Fixture {
    fn start(kind: Kind) -> Self {
        let server = matches!(kind, Kind::Plain | Kind::PlainL1).then(RedisServer::plain);
        let builder = CacheConfig::builder();
        let builder = match (kind, &server) {
            (Kind::Embedded, _) => builder,
            (Kind::Cluster, _) => builder.url(CLUSTER.url()),
            (_, Some(s)) => builder.url(s.url()).l1(matches!(kind, Kind::PlainL1)),
            (_, None) => unreachable!("a Redis kind has a server"),
        };
        // Each test its own prefix: the cluster is shared by this binary's tests.
        let prefix = format!("tags{}{:?}", std::process::id(), kind).to_lowercase();
        let cache =
            Cache::new(builder.key_prefix(&prefix).build().expect("valid config")).expect("cache");
        Self {
            server,
            kind,
            cache,
        }
    }

    /// A raw connection to the store, for Redis backends.
    fn raw(&self) -> Option<Box<dyn redis::ConnectionLike>> {
        match (self.kind, &self.server) {
            (Kind::Cluster, _) => Some(Box::new(
                CLUSTER.cluster_client().get_connection().expect("cluster"),
            )),
            (_, Some(s)) => Some(Box::new(s.client().get_connection().expect("server"))),
            _ => None,
        }
    }
}

/// The tags of one user are removed in every namespace, manual and service entries
/// included, and nobody else's are.
async fn a_tag_removes_its_entries_in_every_namespace(kind: Kind) {
    let f = Fixture::start(kind);
    let service = CacheService::new(f.cache.clone());
    let r = Runs::default();
    let runs = || r.load(SeqCst);
    with_cache(f.cache.clone(), async {
        let u1 = format!("u1-{kind:?}");
        let u2 = format!("u2-{kind:?}");
        let t1 = format!("trades:{u1}");
        for user in [&u1, &u2] {
            positions(user.clone(), "AAPL".into(), r.clone()).await;
            positions(user.clone(), "MSFT".into(), r.clone()).await;
            fills(user, "xnas", &r).await;
            service
                .with_tags([format!("trades:{user}")])
                .cache_trading_data(user, "AAPL", "orders", &vec![1u8, 2, 3], None)
                .await
                .expect("service write");
        }
        let manual = f
            .cache
            .namespace("tags_m")
            .expect("namespace")
            .with_tags([t1.clone()]);
        manual
            .set("note", "for u1", None)
            .await
            .expect("manual write");
        let before = runs();
        // Hits: nothing runs.
        positions(u1.clone(), "AAPL".into(), r.clone()).await;
        fills(&u1, "xnas", &r).await;
        assert_eq!(runs(), before);

        // u1's: 2 positions, 1 fills, 1 service, 1 manual.
        assert_eq!(f.cache.invalidate_tag(&t1).await.expect("invalidate"), 5);
        assert_eq!(manual.get::<String>("note").await.expect("read"), None);
        let data: Option<Vec<u8>> = service
            .get_trading_data(&u1, "AAPL", "orders")
            .await
            .expect("read");
        assert_eq!(data, None, "the service entry went too");
        positions(u1.clone(), "AAPL".into(), r.clone()).await;
        fills(&u1, "xnas", &r).await;
        assert_eq!(runs(), before + 2, "u1's entries run their bodies again");
        // u2's stay.
        positions(u2.clone(), "AAPL".into(), r.clone()).await;
        fills(&u2, "xnas", &r).await;
        let data: Option<Vec<u8>> = service
            .get_trading_data(&u2, "AAPL", "orders")
            .await
            .expect("read");
        assert_eq!(data, Some(vec![1, 2, 3]));
        assert_eq!(runs(), before + 2, "u2's entries are still hits");

        // The re-run entries carry the tag again.
        assert_eq!(f.cache.invalidate_tag(&t1).await.expect("invalidate"), 2);
        assert_eq!(f.cache.invalidate_tag(&t1).await.expect("invalidate"), 0);
        // "market": u2's two positions (u1's went with its tag).
        assert_eq!(
            f.cache.invalidate_tag("market").await.expect("invalidate"),
            2
        );
        positions(u2.clone(), "MSFT".into(), r.clone()).await;
        assert_eq!(runs(), before + 3);
        // A tag built from two arguments.
        let both = format!("fills of {u2} in xnas");
        assert_eq!(f.cache.invalidate_tag(&both).await.expect("invalidate"), 1);
        fills(&u2, "xnas", &r).await;
        assert_eq!(runs(), before + 4);
        // Bad input says what to do.
        let err = f.cache.invalidate_tag("").await.expect_err("empty tag");
        assert!(err.to_string().contains("tag cannot be empty"), "{err}");
        let err = manual
            .clone()
            .with_tags([""])
            .set("x", &1u8, None)
            .await
            .expect_err("empty tag");
        assert!(err.to_string().contains("tag cannot be empty"), "{err}");
    })
    .await;
}

/// Hostile tag strings are exact names, never patterns or slots of their own choosing;
/// tag invalidation interleaves with user and namespace clears.
async fn hostile_tags_interleaved_with_clears(kind: Kind) {
    let f = Fixture::start(kind);
    let hostile = [
        "*",
        ":",
        "{}",
        "{",
        "}",
        "trades:*",
        "a b",
        "ünïcödé 🚀",
        "\n",
        "%2A",
        "tag\0nul",
        "[a-z]",
        "?",
        "\\",
    ];
    let a = f.cache.namespace("tags_h1").expect("ns");
    let b = f.cache.namespace("tags_h2").expect("ns");
    // Each hostile tag on one entry in each of two namespaces, plus a control tag on all.
    for (i, tag) in hostile.iter().enumerate() {
        for ns in [&a, &b] {
            ns.clone()
                .with_tags([*tag, "control"])
                .set(&format!("k{i}"), &(i as u64), None)
                .await
                .expect("write");
        }
    }
    // An entry whose tag a glob would match, if tags were patterns.
    a.clone()
        .with_tags(["trades:x"])
        .set("plain", &7u64, None)
        .await
        .expect("write");
    let service = CacheService::new(f.cache.clone()).with_tags(["*"]);
    service
        .cache_user_data("hostile user *", "profile", "p", None)
        .await
        .expect("service write");

    // `*` is one tag: its two manual entries and the service entry, nothing else.
    assert_eq!(f.cache.invalidate_tag("*").await.expect("invalidate"), 3);
    assert_eq!(a.get::<u64>("plain").await.expect("read"), Some(7));
    assert_eq!(
        a.get::<u64>("k1").await.expect("read"),
        Some(1),
        "`:`'s entry"
    );
    assert_eq!(
        f.cache
            .invalidate_tag("trades:*")
            .await
            .expect("invalidate"),
        2
    );
    assert_eq!(
        a.get::<u64>("plain").await.expect("read"),
        Some(7),
        "`trades:x` survives `trades:*`"
    );

    // A namespace clear, then tags that listed entries in both namespaces: only what is
    // left is counted.
    b.clear().await.expect("clear");
    assert_eq!(f.cache.invalidate_tag("{}").await.expect("invalidate"), 1);
    assert_eq!(
        f.cache
            .invalidate_tag("ünïcödé 🚀")
            .await
            .expect("invalidate"),
        1
    );
    // A user clear of the service's user after its tag already went: nothing left.
    assert_eq!(
        f.cache.clear_user("hostile user *").await.expect("clear"),
        0
    );

    // Every other hostile tag still finds its entry in `a` (and none in the cleared `b`).
    for (i, tag) in hostile.iter().enumerate() {
        if ["*", "trades:*", "{}", "ünïcödé 🚀"].contains(tag) {
            continue;
        }
        assert_eq!(
            a.get::<u64>(&format!("k{i}")).await.expect("read"),
            Some(i as u64),
            "{tag:?}"
        );
        assert_eq!(
            f.cache.invalidate_tag(tag).await.expect("invalidate"),
            1,
            "{tag:?}"
        );
        assert_eq!(
            a.get::<u64>(&format!("k{i}")).await.expect("read"),
            None,
            "{tag:?}"
        );
    }
    assert_eq!(
        f.cache.invalidate_tag("control").await.expect("invalidate"),
        0,
        "all gone"
    );
    assert_eq!(
        f.cache
            .invalidate_tag("trades:x")
            .await
            .expect("invalidate"),
        1
    );

    // Nothing of ours is left but (on Redis) no tag set either.
    if let Some(mut raw) = f.raw() {
        for tag in hostile.iter().chain(&["control", "trades:x"]) {
            let index = f.cache.keys().tag_index(tag);
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&index)
                .query(&mut *raw)
                .expect("exists");
            assert_eq!(exists, 0, "{tag:?}'s set is gone once empty");
        }
    }
}

/// A tag's set expires with its longest-lived entry, and its members with theirs.
async fn tag_sets_go_with_their_entries(kind: Kind) {
    let f = Fixture::start(kind);
    let r = Runs::default();
    let runs = || r.load(SeqCst);
    with_cache(f.cache.clone(), async {
        for n in 0..50 {
            short_lived(n, &r).await;
        }
        let index = f.cache.keys().tag_index("short");
        if let Some(mut raw) = f.raw() {
            let members: u64 = redis::cmd("ZCARD")
                .arg(&index)
                .query(&mut *raw)
                .expect("zcard");
            assert_eq!(members, 50);
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&index)
                .query(&mut *raw)
                .expect("pttl");
            assert!(
                pttl > 0 && pttl <= 1_000,
                "the set lives as long as its entries: {pttl} ms"
            );
        }
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        if let Some(mut raw) = f.raw() {
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&index)
                .query(&mut *raw)
                .expect("exists");
            assert_eq!(exists, 0, "the set expired with its entries");
        }
        assert_eq!(
            f.cache.invalidate_tag("short").await.expect("invalidate"),
            0
        );
        let before = runs();
        short_lived(1, &r).await;
        assert_eq!(runs(), before + 1);
        assert_eq!(
            f.cache.invalidate_tag("short").await.expect("invalidate"),
            1
        );
    })
    .await;
}

macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$body(Kind::Embedded).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn plain() {
                    super::$body(Kind::Plain).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn plain_l1() {
                    super::$body(Kind::PlainL1).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$body(Kind::Cluster).await;
                }
            }
        )*
    };
}

on_every_backend!(
    a_tag_removes_its_entries_in_every_namespace,
    hostile_tags_interleaved_with_clears,
    tag_sets_go_with_their_entries,
);
