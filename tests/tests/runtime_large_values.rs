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
        // Uncompressed: the point is 32 MiB on the wire (this value would shrink to KiBs).
        .compress_above(0)
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

/// A trade as an API would return it: JSON-like, repetitive field names and symbols.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Trade {
    id: u64,
    symbol: String,
    side: String,
    price: f64,
    quantity: u32,
    venue: String,
    note: Option<String>,
}

fn trades(n: u64) -> Vec<Trade> {
    (0..n)
        .map(|i| Trade {
            id: 1_000_000 + i,
            symbol: ["AAPL", "MSFT", "NVDA", "TSLA"][(i % 4) as usize].to_owned(),
            side: if i % 3 == 0 { "sell" } else { "buy" }.to_owned(),
            price: 100.0 + (i % 997) as f64 * 0.25,
            quantity: (i % 50) as u32 * 10,
            venue: "XNAS".to_owned(),
            note: (i % 10 == 0).then(|| format!("rebalance batch {}", i / 10)),
        })
        .collect()
}

/// Values above `CACHE_COMPRESS_ABOVE` are stored LZ4-compressed (smaller in Redis), read
/// back equal by the same cache and by one with compression off; with it off they are
/// stored as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_compressed_in_redis_and_read_back() {
    let server = RedisServer::plain();
    let cache_with = |above: usize| {
        Cache::new(
            CacheConfig::builder()
                .url(server.url())
                .codec(cache_runtime::CodecKind::Json)
                .compress_above(above)
                .build()
                .unwrap(),
        )
        .unwrap()
    };
    let compressing = cache_with(64 * 1024);
    let plain = cache_with(0);
    let value = trades(20_000);
    let mut raw = server.client().get_connection().unwrap();
    let strlen = |raw: &mut redis::Connection, key: &str| -> usize {
        redis::cmd("STRLEN").arg(key).query(raw).unwrap()
    };

    let ns = compressing.namespace("zip").unwrap();
    ns.set("trades", &value, Some(TTL)).await.unwrap();
    let packed = strlen(&mut raw, &ns.key("trades"));
    let ns_plain = plain.namespace("zip").unwrap();
    ns_plain
        .set("trades-plain", &value, Some(TTL))
        .await
        .unwrap();
    let unpacked = strlen(&mut raw, &ns_plain.key("trades-plain"));
    eprintln!(
        "20,000 trades as JSON: {unpacked} bytes stored plain, {packed} compressed ({:.1}% saved)",
        100.0 * (1.0 - packed as f64 / unpacked as f64)
    );
    assert!(packed * 3 < unpacked, "{packed} compressed vs {unpacked}");
    // Read back by both caches, whichever wrote it.
    for cache in [&compressing, &plain] {
        let ns = cache.namespace("zip").unwrap();
        assert_eq!(
            ns.get::<Vec<Trade>>("trades").await.unwrap().as_ref(),
            Some(&value)
        );
        assert_eq!(
            ns.get::<Vec<Trade>>("trades-plain").await.unwrap().as_ref(),
            Some(&value)
        );
    }
    // Small values are never compressed.
    ns.set("one", &value[..10], Some(TTL)).await.unwrap();
    let small: Vec<u8> = redis::cmd("GET")
        .arg(ns.key("one"))
        .query(&mut raw)
        .unwrap();
    assert!(
        small.windows(6).any(|w| w == b"\"AAPL\""),
        "plain JSON inside the envelope"
    );
}
