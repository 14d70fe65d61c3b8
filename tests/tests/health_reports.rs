//! health() and stats() against real servers: fields a managed service withholds come
//! back null (not errors), and stats() stays bounded on a large database.

use std::time::{Duration, Instant};

use cache_runtime::{Cache, CacheConfig};
use cache_tests::{raw_client, RedisServer};

fn cache_for(url: &str) -> Cache {
    Cache::new(CacheConfig::builder().url(url).build().expect("config")).expect("cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_info_and_config_come_back_null() {
    // Like a managed service: INFO and CONFIG are not allowed for the application's user.
    let server = RedisServer::with_acl_user("app", "s3cret", "~* +@all -info -config");
    let cache = cache_for(&server.url());
    cache
        .namespace("users")
        .unwrap()
        .set("k", &1u8, None)
        .await
        .expect("writes are allowed");

    let health = cache.health().await;
    assert!(health.connected, "{health:?}");
    assert_eq!(health.status, "healthy");
    assert_eq!(health.info.server.version, None);
    assert_eq!(health.info.clients.connected, None);
    assert_eq!(health.info.pool.max_connections, Some(50));

    let stats = cache.stats().await;
    assert_eq!(stats.memory.used_memory, None);
    assert_eq!(stats.memory.maxmemory, None);
    assert_eq!(stats.keys.by_namespace.get("users"), Some(&1));
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["memory"]["maxmemory_policy"].is_null(), "{json}");
    assert!(stats.error.is_some(), "says why fields are null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_a_large_database_is_bounded_and_says_approximate() {
    let server = RedisServer::plain();
    let mut raw = raw_client(&server);
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(400_000)
        .arg("tradistry:general:filler")
        .exec(&mut raw)
        .expect("populate");
    let cache = cache_for(&server.url());
    let start = Instant::now();
    let stats = cache.stats().await;
    let took = start.elapsed();
    println!(
        "stats over 400000 keys: {took:?}, scanned {}",
        stats.keys.scanned
    );
    assert_eq!(stats.keys.total, Some(400_000));
    assert!(stats.keys.approximate, "a partial scan must say so");
    assert!(stats.keys.scanned < 400_000);
    let general = stats.keys.by_namespace["general"];
    // Extrapolated from the sample: all filler keys are in `general`.
    assert!(
        (300_000..=500_000).contains(&general),
        "general ~ 400000, got {general}"
    );
    // Bounded by the scan budget (2 s) plus one page; generous for a loaded machine.
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_report_hits_misses_and_ratio_per_namespace() {
    let server = RedisServer::plain();
    let cache = cache_for(&server.url());
    let ns = cache.namespace("analytics").unwrap();
    assert_eq!(ns.get::<u8>("a").await.unwrap(), None);
    ns.set("a", &1u8, None).await.unwrap();
    assert_eq!(ns.get::<u8>("a").await.unwrap(), Some(1));
    assert_eq!(ns.get::<u8>("a").await.unwrap(), Some(1));
    let stats = cache.stats().await;
    let c = stats.counters["analytics"];
    assert_eq!((c.hits, c.misses, c.stores), (2, 1, 1));
    assert!((c.hit_ratio.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!(!stats.keys.approximate);
    assert_eq!(stats.keys.by_namespace["analytics"], 1);
}
