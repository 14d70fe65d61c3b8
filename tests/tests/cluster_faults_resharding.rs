//! Slots of a Redis Cluster moved while the cache is in use: a slot migrating half-way (ASK
//! redirects for the keys already moved), then `redis-cli --cluster reshard` of 2,000 slots
//! under 64 tasks of load (MOVED redirects). The redirects are followed: 0 wrong values,
//! nothing lost (every entry is still a hit), and nothing stale after a clear.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster};

const KEYS: u64 = 300;
const USER: &str = "ask-user";
const ITEMS: u64 = 60;

static VALUE_RUNS: AtomicU64 = AtomicU64::new(0);
static ITEM_RUNS: AtomicU64 = AtomicU64::new(0);

fn expected(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9) ^ 0xa11
}

#[cache_result(namespace = "reshard", ttl = 600)]
async fn value_of(k: u64) -> u64 {
    VALUE_RUNS.fetch_add(1, SeqCst);
    expected(k)
}

#[cache_user_specific(data_type = "items", ttl = 600)]
async fn item(user_id: &str, n: u64) -> String {
    ITEM_RUNS.fetch_add(1, SeqCst);
    format!("{user_id}/{n}")
}

/// Runs every `value_of` once; returns how many bodies ran.
async fn pass(cache: &Cache) -> u64 {
    let before = VALUE_RUNS.load(SeqCst);
    with_cache(cache.clone(), async {
        for k in 0..KEYS {
            assert_eq!(value_of(k).await, expected(k));
        }
    })
    .await;
    VALUE_RUNS.load(SeqCst) - before
}

/// Runs every `item` of the user once; returns how many bodies ran.
async fn items(cache: &Cache, n: u64) -> u64 {
    let before = ITEM_RUNS.load(SeqCst);
    with_cache(cache.clone(), async {
        for i in 0..n {
            assert_eq!(item(USER, i).await, format!("{USER}/{i}"));
        }
    })
    .await;
    ITEM_RUNS.load(SeqCst) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_ask_are_followed_nothing_is_lost_and_a_clear_leaves_nothing_stale() {
    let cluster = RedisCluster::start(ClusterOptions::default());
    let cache = Cache::new(
        CacheConfig::builder()
            .url(cluster.url())
            .socket_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pass(&cache).await, KEYS, "cold");
    assert_eq!(items(&cache, ITEMS).await, ITEMS, "cold");

    // --- ASK: one user's slot half-way through a migration.
    let key = with_cache(cache.clone(), async { item_cache_key(USER, &0) })
        .await
        .unwrap();
    let slot = cluster.key_slot(&key);
    let from = cluster.primary_for_slot(slot);
    let to = *cluster.primaries().iter().find(|p| **p != from).unwrap();
    let mut migration = cluster.begin_slot_migration(slot, from, to);
    let moved = migration.migrate_some_keys(30);
    assert!(moved.len() >= 20, "{} keys moved", moved.len());
    assert!(migration.remaining_keys() > 0, "half-way");
    assert_eq!(
        items(&cache, ITEMS).await,
        0,
        "every entry is a hit: the moved ones through ASK"
    );
    // A new entry while the slot migrates is stored (on the target) and then a hit.
    assert_eq!(items(&cache, ITEMS + 1).await, 1);
    assert_eq!(items(&cache, ITEMS + 1).await, 0);
    migration.finish();
    assert_eq!(items(&cache, ITEMS + 1).await, 0, "after the migration");
    println!(
        "resharding: slot {slot} moved from {from} to {to} half-way ({} keys), every entry a hit through ASK",
        moved.len()
    );

    // --- MOVED: 2,000 slots resharded under load.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..64)
        .map(|t| {
            let (cache, stop, calls, wrong) =
                (cache.clone(), stop.clone(), calls.clone(), wrong.clone());
            tokio::spawn(with_cache(cache, async move {
                let mut k = t * 5;
                while !stop.load(SeqCst) {
                    k = (k + 1) % KEYS;
                    if value_of(k).await != expected(k) {
                        wrong.fetch_add(1, SeqCst);
                    }
                    calls.fetch_add(1, SeqCst);
                }
            }))
        })
        .collect();
    let runs_before = VALUE_RUNS.load(SeqCst);
    let started = Instant::now();
    let (src, dst) = {
        let primaries = cluster.primaries();
        (primaries[0], primaries[1])
    };
    let cluster_ref = &cluster;
    tokio::task::block_in_place(|| cluster_ref.reshard(src, dst, 2_000));
    let took = started.elapsed();
    stop.store(true, SeqCst);
    for task in load {
        task.await.expect("no call failed");
    }
    let body_runs_during = VALUE_RUNS.load(SeqCst) - runs_before;
    println!(
        "resharding: 2000 slots from {src} to {dst} in {took:?} under load: {} calls, {} wrong values, {body_runs_during} body runs",
        calls.load(SeqCst),
        wrong.load(SeqCst)
    );
    assert_eq!(wrong.load(SeqCst), 0);
    assert!(calls.load(SeqCst) > 500, "the load ran");
    // On a loaded machine every cluster request can hang for one socket timeout right
    // after a slot's migration ends (seen beside a callgrind run; not fixed): the timeouts
    // open the breaker, and its probe closes it within a second. Until then every call
    // bypasses the cache, which says nothing about the entries.
    let waited = Instant::now();
    while cache.health().await.circuit_open {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the breaker closes once the cluster answers again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if waited.elapsed() > Duration::from_millis(100) {
        println!(
            "resharding: the breaker was open for {:?} after the load",
            waited.elapsed()
        );
    }
    // Nothing lost: every entry is still there, wherever its slot went.
    assert_eq!(
        pass(&cache).await,
        0,
        "every entry is a hit after resharding"
    );
    assert_eq!(items(&cache, ITEMS + 1).await, 0);

    // --- A clear after the move: exact, and nothing stale afterwards.
    assert_eq!(cache.clear_namespace("reshard").await.unwrap(), KEYS);
    assert_eq!(cache.clear_user(USER).await.unwrap(), ITEMS + 1);
    assert_eq!(
        pass(&cache).await,
        KEYS,
        "every call after the clear runs its body"
    );
    assert_eq!(items(&cache, ITEMS + 1).await, ITEMS + 1);
    assert!(cache.health().await.status == "healthy");
}
