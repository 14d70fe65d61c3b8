//! Head-of-line blocking: small GETs while 32 MiB values are in flight on the same cache.
//!
//! Prints baseline and loaded p50/p99 (see them with `--nocapture`). Asserts only what is
//! robust on a shared, noisy machine: every small GET succeeds with the right value, and
//! the median small GET under load is not dominated by the big transfers.

use std::time::{Duration, Instant};

use cache_runtime::{Cache, CacheConfig};
use cache_tests::RedisServer;

const BIG: usize = 32 * 1024 * 1024;
const SMALL_GETS: usize = 200;
const BIG_GETS: usize = 5;
const TTL: Duration = Duration::from_secs(600);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

fn summary(label: &str, mut lat: Vec<Duration>) -> (Duration, Duration) {
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "{label}: n={} p50={p50:?} p99={p99:?} max={:?}",
        lat.len(),
        lat[lat.len() - 1]
    );
    (p50, p99)
}

/// Small GETs, one after another, until `min` are done and `keep_going()` is false.
async fn small_gets(cache: &Cache, min: usize, keep_going: impl Fn() -> bool) -> Vec<Duration> {
    let ns = cache.namespace("hol").unwrap();
    let mut lat = Vec::with_capacity(min);
    while lat.len() < min || keep_going() {
        let start = Instant::now();
        let v = ns.get::<String>("small").await.expect("small GET failed");
        lat.push(start.elapsed());
        assert_eq!(v.as_deref(), Some("tiny"));
    }
    lat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_gets_are_not_stuck_behind_32_mib_transfers() {
    let server = RedisServer::plain();
    let config = CacheConfig::builder()
        .url(server.url())
        .max_value_bytes(64 * 1024 * 1024)
        .socket_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let cache = Cache::new(config).unwrap();
    let ns = cache.namespace("hol").unwrap();
    // A String decodes with one UTF-8 check (a Vec<u8> would decode byte by byte).
    let big = "x".repeat(BIG);
    ns.set("big", &big, Some(TTL)).await.unwrap();
    ns.set("small", "tiny", Some(TTL)).await.unwrap();
    drop(big);

    // Baseline in the same run: small GETs alone.
    let baseline = small_gets(&cache, SMALL_GETS, || false).await;

    // Under load: one task GETs the big value BIG_GETS times while this one keeps doing
    // small GETs (at least SMALL_GETS, and for as long as the big transfers last).
    let big_task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let ns = cache.namespace("hol").unwrap();
            let mut durations = Vec::with_capacity(BIG_GETS);
            for _ in 0..BIG_GETS {
                let start = Instant::now();
                let v = ns.get::<String>("big").await.expect("big GET failed");
                durations.push(start.elapsed());
                assert_eq!(v.map(|s| s.len()), Some(BIG));
            }
            durations
        })
    };
    // Let the first big GET get going.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let loaded = small_gets(&cache, SMALL_GETS, || !big_task.is_finished()).await;
    let big_durations = big_task.await.unwrap();

    let big_mean = big_durations.iter().sum::<Duration>() / big_durations.len() as u32;
    println!("32 MiB GETs: {big_durations:?} (mean {big_mean:?})");
    let (base_p50, base_p99) = summary("small GETs alone", baseline);
    let (load_p50, load_p99) = summary("small GETs during 32 MiB GETs", loaded);
    println!(
        "ratio loaded/baseline: p50 x{:.1}, p99 x{:.1}",
        load_p50.as_secs_f64() / base_p50.as_secs_f64(),
        load_p99.as_secs_f64() / base_p99.as_secs_f64()
    );
    println!("pool: {:?}", cache.pool_stats());

    assert!(
        load_p50 < big_mean,
        "the median small GET ({load_p50:?}) waited about as long as a whole 32 MiB GET ({big_mean:?}): head-of-line blocking"
    );
}
