//! The two-tier cache: an in-process L1 in front of Redis stays coherent across
//! processes (two `Cache`s on separate connections stand for two processes), never
//! outlives Redis' TTL, and stops serving while its invalidation channel is down.

use std::time::{Duration, Instant};

use cache_runtime::{Cache, CacheConfig};
use cache_tests::RedisServer;

fn l1_cache(server: &RedisServer) -> Cache {
    let config = CacheConfig::builder()
        .url(server.url())
        .l1(true)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config");
    Cache::new(config).expect("cache")
}

/// Polls `check` until it holds or `limit` passes; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

async fn wait_active(cache: &Cache) {
    let ns = cache.namespace("general").expect("namespace");
    // The listener starts on first use.
    let _ = ns.get::<u32>("warm-up").await;
    within(Duration::from_secs(5), async || cache.l1_active())
        .await
        .expect("L1 invalidation channel comes up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_one_process_reaches_the_others_l1_within_100ms() {
    let server = RedisServer::plain();
    let (a, b) = (l1_cache(&server), l1_cache(&server));
    wait_active(&a).await;
    wait_active(&b).await;
    let (na, nb) = (
        a.namespace("general").unwrap(),
        b.namespace("general").unwrap(),
    );

    na.set("k", &1u32, None).await.unwrap();
    assert_eq!(nb.get::<u32>("k").await.unwrap(), Some(1));
    // Soon served from B's L1. (A's own announcement of its store may reach B after B's
    // first read; that read then rightly does not fill, and the next one does.)
    let from_l1 = within(Duration::from_secs(2), async || {
        assert_eq!(nb.get::<u32>("k").await.unwrap(), Some(1));
        b.counters()["general"].l1_hits >= 1
    })
    .await;
    assert!(from_l1.is_some(), "{:?}", b.counters());

    na.set("k", &2u32, None).await.unwrap();
    let seen = within(Duration::from_millis(100), async || {
        nb.get::<u32>("k").await.unwrap() == Some(2)
    })
    .await;
    assert!(seen.is_some(), "B still served the old value after 100 ms");
    println!("store seen by the other L1 after {:?}", seen.unwrap());

    na.delete("k").await.unwrap();
    let gone = within(Duration::from_millis(100), async || {
        nb.get::<u32>("k").await.unwrap().is_none()
    })
    .await;
    assert!(
        gone.is_some(),
        "B still served a deleted value after 100 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_reach_the_other_l1() {
    let server = RedisServer::plain();
    let (a, b) = (l1_cache(&server), l1_cache(&server));
    wait_active(&a).await;
    wait_active(&b).await;
    let nb = b.namespace("analytics").unwrap();
    a.namespace("analytics")
        .unwrap()
        .set("x", &"v", None)
        .await
        .unwrap();
    assert_eq!(nb.get::<String>("x").await.unwrap().as_deref(), Some("v"));
    assert_eq!(a.clear_namespace("analytics").await.unwrap(), 1);
    let gone = within(Duration::from_millis(100), async || {
        nb.get::<String>("x").await.unwrap().is_none()
    })
    .await;
    assert!(gone.is_some(), "namespace clear not seen by the other L1");

    let sa = cache_runtime::service::CacheService::new(a.clone());
    let sb = cache_runtime::service::CacheService::new(b.clone());
    sa.cache_user_data("u1", "profile", &"p", None)
        .await
        .unwrap();
    assert_eq!(
        sb.get_user_data::<String>("u1", "profile")
            .await
            .unwrap()
            .as_deref(),
        Some("p")
    );
    assert_eq!(sa.clear_all_user_cache("u1").await.unwrap(), 1);
    let gone = within(Duration::from_millis(100), async || {
        sb.get_user_data::<String>("u1", "profile")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(gone.is_some(), "user clear not seen by the other L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_never_outlives_the_redis_ttl() {
    let server = RedisServer::plain();
    let a = l1_cache(&server);
    wait_active(&a).await;
    let ns = a.namespace("general").unwrap();
    ns.set("short", &7u8, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(ns.get::<u8>("short").await.unwrap(), Some(7));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(ns.get::<u8>("short").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_does_not_serve_while_the_channel_is_down() {
    let mut server = RedisServer::plain();
    let a = l1_cache(&server);
    wait_active(&a).await;
    let ns = a.namespace("general").unwrap();
    ns.set("k", &1u32, None).await.unwrap();
    assert_eq!(ns.get::<u32>("k").await.unwrap(), Some(1));
    assert_eq!(ns.get::<u32>("k").await.unwrap(), Some(1), "L1 filled");

    server.stop();
    let down = within(Duration::from_secs(5), async || !a.l1_active()).await;
    assert!(down.is_some(), "L1 kept serving with the channel down");
    // Without Redis and without L1, the value cannot be read: an error, not a stale hit.
    assert!(ns.get::<u32>("k").await.is_err());

    // Back up (empty: no persistence): L1 comes back empty, the old value is gone.
    server.restart();
    let up = within(Duration::from_secs(10), async || {
        let _ = ns.get::<u32>("k").await;
        a.l1_active()
    })
    .await;
    assert!(up.is_some(), "L1 came back with the channel");
    assert_eq!(ns.get::<u32>("k").await.unwrap(), None);
}
