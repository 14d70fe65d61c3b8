//! The whole Redis Cluster down and back: calls fail open (the body's value, at bounded
//! latency once the breaker has opened), health says why, and caching resumes by itself
//! once the cluster is back (empty: nothing is persisted in the harness).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster};

static RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_result(namespace = "downup", ttl = 600)]
async fn double(k: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    k * 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_while_down_and_caching_resumes_when_back() {
    let mut cluster = RedisCluster::start(ClusterOptions::default());
    let socket_timeout = Duration::from_millis(300);
    let cache = Cache::new(
        CacheConfig::builder()
            .url(cluster.url())
            .socket_timeout(socket_timeout)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .unwrap();
    with_cache(cache.clone(), async {
        for k in 0..50 {
            assert_eq!(double(k).await, k * 2);
            assert_eq!(double(k).await, k * 2);
        }
    })
    .await;
    assert_eq!(RUNS.load(SeqCst), 50);

    cluster.stop_all();
    let mut latencies = Vec::new();
    let down = Instant::now();
    with_cache(cache.clone(), async {
        for k in 0..200 {
            let started = Instant::now();
            assert_eq!(
                double(k % 50).await,
                (k % 50) * 2,
                "fail-open: the body's value"
            );
            latencies.push(started.elapsed());
        }
    })
    .await;
    let health = cache.health().await;
    assert_eq!(health.status, "unhealthy");
    assert!(health.error.is_some(), "{health:?}");
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    println!(
        "cluster down: 200 calls in {:?}, median {median:?}, worst {worst:?}; health: {:?}",
        down.elapsed(),
        health.error
    );
    // One request costs at most the socket timeout (plus scheduling); with the breaker
    // open most calls skip Redis at once.
    assert!(worst < socket_timeout * 4, "{worst:?}");
    assert!(median < socket_timeout / 2, "{median:?}");

    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| cluster_ref.start_all());
    let back = Instant::now();
    // Caching resumes by itself: a key is stored, then a hit.
    let mut resumed = None;
    let mut k = 1_000;
    while resumed.is_none() {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "caching never resumed after the cluster came back"
        );
        k += 1;
        let before = RUNS.load(SeqCst);
        with_cache(cache.clone(), async {
            assert_eq!(double(k).await, k * 2);
            assert_eq!(double(k).await, k * 2);
        })
        .await;
        if RUNS.load(SeqCst) - before == 1 {
            resumed = Some(back.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "cluster back: caching resumed {:?} after it was up",
        resumed.unwrap_or_default()
    );
    assert_eq!(cache.health().await.status, "healthy");
}
