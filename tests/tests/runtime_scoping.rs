//! Which cache a decorated function uses, and calls made outside a Tokio runtime.
//!
//! - `cache = path` sends a function's entries to that cache, not the global one;
//! - `with_cache` overrides the cache for one task, in parallel tests, on the embedded store
//!   and on a real Redis;
//! - outside a Tokio runtime, Redis operations fail with `NoRuntime` and decorated calls run
//!   their body: never a panic (the driver and Tokio's timers would panic there).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig, CacheError};
use cache_tests::{keyspace, RedisServer};

/// A minimal executor: polls on this thread, parks until woken. No Tokio anywhere.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

static SERVER: LazyLock<RedisServer> = LazyLock::new(RedisServer::plain);

fn redis_cache() -> Cache {
    let config = CacheConfig::builder()
        .url(SERVER.url())
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config");
    Cache::new(config).expect("cache")
}

static ON_REDIS: LazyLock<Cache> = LazyLock::new(redis_cache);

fn on_redis() -> &'static Cache {
    &ON_REDIS
}

static DOUBLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "scoping", cache = on_redis)]
async fn double(x: u64) -> u64 {
    DOUBLE_RUNS.fetch_add(1, SeqCst);
    x * 2
}

#[test]
fn outside_tokio_redis_operations_fail_clearly_and_calls_run_their_body() {
    let cache = on_redis();
    let ns = cache.namespace("scoping").unwrap();
    for result in [
        block_on(ns.set("k", &1u32, None)).map(|()| 0),
        block_on(ns.get::<u32>("k")).map(|_| 0),
        block_on(cache.ping()).map(|_| 0),
        block_on(cache.connect()).map(|()| 0),
        block_on(cache.clear_namespace("scoping")),
    ] {
        let err = result.expect_err("no runtime, no Redis");
        assert!(matches!(err, CacheError::NoRuntime), "{err:?}");
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }
    let health = block_on(cache.health());
    assert_eq!(health.status, "unhealthy");
    assert!(health.error.unwrap().contains("Tokio runtime"));

    // Decorated calls: the body's value, every time, and nothing cached.
    let before = DOUBLE_RUNS.load(SeqCst);
    assert_eq!(block_on(double(21)), 42);
    assert_eq!(block_on(double(21)), 42);
    assert_eq!(DOUBLE_RUNS.load(SeqCst) - before, 2);
    assert!(block_on(double_invalidate(&21)).is_err());

    // The embedded store needs no runtime.
    let local = Cache::in_memory();
    let ns = local.namespace("manual").unwrap();
    block_on(ns.set("k", &7u32, None)).unwrap();
    assert_eq!(block_on(ns.get::<u32>("k")).unwrap(), Some(7));
    assert_eq!(block_on(with_cache(local.clone(), double(5))), 10);
    assert_eq!(block_on(with_cache(local.clone(), double(5))), 10);
    assert_eq!(local.counters()["scoping"].hits, 1);

    // The same cache inside a runtime works: nothing was left broken.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        ns_roundtrip(on_redis()).await;
    });
}

async fn ns_roundtrip(cache: &Cache) {
    let ns = cache.namespace("scoping").unwrap();
    ns.set("after", &3u32, None).await.unwrap();
    assert_eq!(ns.get::<u32>("after").await.unwrap(), Some(3));
}

static TRIPLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "scoped")]
async fn triple(x: u64) -> u64 {
    TRIPLE_RUNS.fetch_add(1, SeqCst);
    x * 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cache_keeps_parallel_tests_apart() {
    // Eight "tests" at once, each with its own cache, on the same function and arguments.
    let caches: Vec<Cache> = (0..8).map(|_| Cache::in_memory()).collect();
    let tasks: Vec<_> = caches
        .iter()
        .cloned()
        .map(|cache| {
            tokio::spawn(with_cache(cache, async {
                assert_eq!(triple(2).await, 6);
                assert_eq!(triple(2).await, 6);
            }))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for cache in &caches {
        let c = cache.counters()["scoped"];
        assert_eq!((c.misses, c.hits, c.stores), (1, 1, 1), "{c:?}");
    }
    assert_eq!(TRIPLE_RUNS.load(SeqCst), 8, "one body run per cache");
    // Nested scopes: the innermost wins.
    let (outer, inner) = (Cache::in_memory(), Cache::in_memory());
    with_cache(outer.clone(), async {
        triple(9).await;
        with_cache(inner.clone(), triple(9)).await;
    })
    .await;
    assert_eq!(outer.counters()["scoped"].stores, 1);
    assert_eq!(inner.counters()["scoped"].stores, 1);
    // A task spawned inside a scope is outside it (task-local): documented behaviour.
    let scoped = Cache::in_memory();
    with_cache(scoped.clone(), async {
        let global = tokio::spawn(triple(11)).await.unwrap();
        assert_eq!(global, 33);
    })
    .await;
    assert!(!scoped.counters().contains_key("scoped"));
}

#[cache_result(namespace = "scoped_again")]
async fn quadruple(x: u64) -> u64 {
    x * 4
}

#[tokio::test]
async fn a_new_scope_cache_never_inherits_a_dropped_ones_state() {
    // Sites keep the per-cache state of the last scope's cache; a cache dropped and a new
    // one allocated at the same address must still count and store on its own.
    for round in 0..50 {
        let cache = Cache::in_memory();
        with_cache(cache.clone(), async {
            assert_eq!(quadruple(round).await, round * 4);
            assert_eq!(quadruple(round).await, round * 4);
        })
        .await;
        let c = cache.counters()["scoped_again"];
        assert_eq!(
            (c.misses, c.hits, c.stores),
            (1, 1, 1),
            "round {round}: {c:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cache_on_redis_and_the_cache_option_write_where_they_say() {
    let server = RedisServer::plain();
    let cache = Cache::new(
        CacheConfig::builder()
            .url(server.url())
            .key_prefix("scoped")
            .build()
            .unwrap(),
    )
    .unwrap();
    // `double` names ON_REDIS; the scope sends it to `server` instead.
    assert_eq!(with_cache(cache.clone(), double(100)).await, 200);
    let keys: Vec<String> = keyspace(&server).into_keys().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("scoped:scoping:"), "{keys:?}");
    assert_eq!(
        with_cache(cache.clone(), async { double_cache_key(&100) }).await,
        Some(keys[0].clone())
    );
    assert_eq!(
        with_cache(cache.clone(), double_invalidate(&100))
            .await
            .ok(),
        Some(true)
    );
    assert!(keyspace(&server).is_empty());
    // Without the scope, `cache = on_redis` writes to ON_REDIS's server.
    assert_eq!(double(1000).await, 2000);
    let key = double_cache_key(&1000).unwrap();
    assert!(keyspace(&SERVER).contains_key(&key), "{key}");
    assert!(keyspace(&server).is_empty());
}
