//! The embedded store's eviction policy: LRU, like Redis' `allkeys-lru`. Every write is
//! kept; when a bound (entries or bytes) is reached, the least recently used entries (read
//! or written) go first. TTLs and user clearing work as before.
//!
//! Survival is checked with `exists`, which (as Redis' `EXISTS`) does not count as a use.

use std::collections::BTreeSet;
use std::time::Duration;

use cache_runtime::service::CacheService;
use cache_runtime::{Cache, CacheConfig, KeyTtl};

const TTL: Duration = Duration::from_secs(600);

/// An embedded store bounded by `max_entries` and `max_bytes`.
fn store(max_entries: u64, max_bytes: u64) -> Cache {
    let config = CacheConfig::builder()
        .memory_max_entries(max_entries)
        .memory_max_bytes(max_bytes)
        .build()
        .unwrap();
    let cache = Cache::new(config).unwrap();
    assert_eq!(cache.backend_kind(), "embedded");
    cache
}

/// Which of `keys` are still stored in namespace `ns`.
async fn surviving(
    cache: &Cache,
    ns: &str,
    keys: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let ns = cache.namespace(ns).unwrap();
    let mut alive = BTreeSet::new();
    for key in keys {
        if ns.exists(&key).await.unwrap() {
            alive.insert(key);
        }
    }
    alive
}

/// `len` bytes that no codec compresses (values above `CACHE_COMPRESS_ABOVE` are
/// compressed, and their stored size is what the byte bound counts).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key(i: usize) -> String {
    format!("k{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recent_writes_survive_a_full_store() {
    let cache = store(1_000, 256 * 1024 * 1024);
    let ns = cache.namespace("general").unwrap();
    for i in 0..5_000 {
        ns.set(&key(i), &(i as u64), Some(TTL)).await.unwrap();
    }
    let alive = surviving(&cache, "general", (0..5_000).map(key)).await;
    let newest = (4_100..5_000)
        .map(key)
        .filter(|k| alive.contains(k))
        .count();
    println!(
        "5000 sets into a 1000-entry store: {} survive, {newest} of the newest 900",
        alive.len()
    );

    assert_eq!(
        newest, 900,
        "every one of the 900 most recent writes is kept"
    );
    assert_eq!(alive.len(), 1_000, "the store is full, not emptier");
    assert!(
        (0..4_000).map(key).all(|k| !alive.contains(&k)),
        "the oldest writes are the ones evicted"
    );
    for i in 4_000..5_000 {
        assert_eq!(ns.get::<u64>(&key(i)).await.unwrap(), Some(i as u64));
    }
    // The evictions are counted for `/metrics` (`cache_evictions_total`).
    let text = cache_runtime::metrics::render(&cache);
    assert!(
        text.lines().any(|l| l == "cache_evictions_total 4000"),
        "4,000 evictions in:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_survives_the_next_hundred_writes() {
    let cache = store(1_000, 256 * 1024 * 1024);
    let ns = cache.namespace("general").unwrap();
    // Full before the trials start, so every trial's writes evict.
    for i in 0..1_000 {
        ns.set(&format!("fill{i}"), &1u8, Some(TTL)).await.unwrap();
    }
    let mut kept = 0;
    for trial in 0..100 {
        let watched = format!("watched{trial}");
        ns.set(&watched, "fresh", Some(TTL)).await.unwrap();
        for other in 0..100 {
            ns.set(&format!("other{trial}-{other}"), &2u8, Some(TTL))
                .await
                .unwrap();
        }
        if ns.get::<String>(&watched).await.unwrap().as_deref() == Some("fresh") {
            kept += 1;
        }
    }
    println!("a set followed by 100 other writes survived {kept} times in 100");
    assert_eq!(kept, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recently_read_key_outlives_older_unread_ones() {
    let cache = store(1_000, 256 * 1024 * 1024);
    let ns = cache.namespace("general").unwrap();
    for i in 0..1_000 {
        ns.set(&key(i), &(i as u64), Some(TTL)).await.unwrap();
    }
    // k0 is the oldest write, but read after every other one was written.
    assert_eq!(ns.get::<u64>(&key(0)).await.unwrap(), Some(0));
    for i in 1_000..1_500 {
        ns.set(&key(i), &(i as u64), Some(TTL)).await.unwrap();
    }
    let alive = surviving(&cache, "general", (0..1_500).map(key)).await;
    println!(
        "after a read of k0 and 500 more writes: k0 alive = {}",
        alive.contains("k0")
    );

    assert!(
        alive.contains("k0"),
        "a read counts as a use: LRU, not FIFO"
    );
    let evicted: Vec<String> = (1..=500).map(key).filter(|k| alive.contains(k)).collect();
    assert!(
        evicted.is_empty(),
        "the least recently used went: {evicted:?} remain"
    );
    assert!((501..1_500).map(key).all(|k| alive.contains(&k)));
    assert_eq!(alive.len(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_values_evict_by_bytes() {
    // 1,000 entries would be allowed; 100 kB holds only 9 values of 10 kB.
    let cache = store(1_000, 100_000);
    let ns = cache.namespace("general").unwrap();
    for i in 0..50 {
        ns.set(&key(i), &noise(10_000, i as u64), Some(TTL))
            .await
            .unwrap();
    }
    let alive = surviving(&cache, "general", (0..50).map(key)).await;
    println!("50 values of 10 kB into 100 kB: {} survive", alive.len());

    let newest: BTreeSet<String> = (50 - alive.len()..50).map(key).collect();
    assert_eq!(alive, newest, "the survivors are the newest writes");
    assert_eq!(
        alive.len(),
        9,
        "as many as fit in the byte bound (10 kB + key + envelope each)"
    );
    let stats = cache.stats().await;
    let used = stats.memory.used_memory.unwrap();
    assert!(used <= 100_000 && used > 90_000, "used {used}");
    assert_eq!(stats.memory.maxmemory, Some(100_000));
    assert_eq!(
        stats.memory.maxmemory_policy.as_deref(),
        Some("allkeys-lru")
    );
    assert_eq!(stats.keys.total, Some(9));

    // A value larger than the whole store is not kept, and does not empty the store.
    ns.set("k49", &noise(150_000, 49), Some(TTL)).await.unwrap();
    assert!(
        !ns.exists("k49").await.unwrap(),
        "neither the new value nor the old one"
    );
    let after = surviving(&cache, "general", (0..49).map(key)).await;
    assert_eq!(after, (41..49).map(key).collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_still_honoured() {
    let cache = store(1_000, 256 * 1024 * 1024);
    let ns = cache.namespace("general").unwrap();
    ns.set("short", &1u8, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    ns.set("long", &2u8, Some(TTL)).await.unwrap();
    assert_eq!(ns.get::<u8>("short").await.unwrap(), Some(1));
    assert!(matches!(ns.get_ttl("long").await.unwrap(), KeyTtl::ExpiresIn(d) if d <= TTL));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns.get::<u8>("short").await.unwrap(), None);
    assert!(!ns.exists("short").await.unwrap());
    assert_eq!(ns.get_ttl("short").await.unwrap(), KeyTtl::Missing);
    assert_eq!(ns.get::<u8>("long").await.unwrap(), Some(2));

    // Counters keep their first TTL, as INCRBY after PEXPIRE … NX.
    assert_eq!(
        ns.increment("n", 2, Some(Duration::from_millis(100)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(ns.increment("n", 3, Some(TTL)).await.unwrap(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns.get_counter("n").await.unwrap(), None);

    // Expired entries are not counted.
    ns.set("short", &1u8, Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = cache.stats().await;
    assert_eq!(stats.keys.total, Some(1), "only `long` is left");
    assert_eq!(stats.keys.by_namespace.get("general"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_keys_leave_their_user_index() {
    let cache = store(100, 256 * 1024 * 1024);
    let service = CacheService::new(cache.clone());
    for i in 0..50 {
        service
            .cache_ai_response("u1", &format!("p{i}"), "old", Some(TTL))
            .await
            .unwrap();
    }
    // u2's 100 writes evict every one of u1's keys.
    for i in 0..100 {
        service
            .cache_ai_response("u2", &format!("p{i}"), "new", Some(TTL))
            .await
            .unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            service
                .get_ai_response::<String>("u1", &format!("p{i}"))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        cache.clear_user("u1").await.unwrap(),
        0,
        "nothing of u1 is left"
    );
    assert_eq!(
        cache.clear_user("u2").await.unwrap(),
        100,
        "u2's index lists all its keys"
    );
    assert_eq!(cache.stats().await.keys.total, Some(0));

    // Written again after being evicted, a key is listed again.
    service
        .cache_ai_response("u1", "p0", "again", Some(TTL))
        .await
        .unwrap();
    assert_eq!(cache.clear_user("u1").await.unwrap(), 1);
    assert_eq!(
        service.get_ai_response::<String>("u1", "p0").await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_under_concurrent_tasks() {
    let cache = store(500, 200_000);
    let mut tasks = Vec::new();
    for task in 0..8 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let ns = cache.namespace("general").unwrap();
            for i in 0..2_000 {
                let value = "v".repeat(i % 700);
                ns.set(&format!("t{task}-{}", i % 900), &value, Some(TTL))
                    .await
                    .unwrap();
                let _ = ns
                    .get::<String>(&format!("t{}-{}", (task + 1) % 8, i % 900))
                    .await
                    .unwrap();
                if i % 97 == 0 {
                    let _ = ns
                        .increment(&format!("c{task}"), 1, Some(TTL))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = cache.stats().await;
    let total = stats.keys.total.unwrap();
    let used = stats.memory.used_memory.unwrap();
    println!("after 8 concurrent tasks: {total} entries, {used} bytes");
    assert!(total <= 500, "{total} entries");
    assert!(used <= 200_000, "{used} bytes");
    assert_eq!(stats.keys.by_namespace.get("general"), Some(&total));
    // The counters are as exact as the store is: cleared, it is empty.
    assert_eq!(cache.clear_namespace("general").await.unwrap(), total);
    let stats = cache.stats().await;
    assert_eq!(
        (stats.keys.total, stats.memory.used_memory),
        (Some(0), Some(0))
    );
}
