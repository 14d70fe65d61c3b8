//! A Redis Cluster primary killed (`SIGKILL`) under 64 tasks of load: its replica takes
//! over, calls go on with 0 wrong values and 0 failed calls, caching of that primary's slots
//! resumes within 5 s of the promotion, and health names the outage while it lasts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster};

const KEYS: u64 = 300;
const TASKS: usize = 64;

static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

fn expected(k: u64) -> u64 {
    k.wrapping_mul(2_654_435_761) ^ 0x5eed
}

#[cache_result(namespace = "failover", ttl = 600)]
async fn value_of(k: u64) -> u64 {
    BODY_RUNS.fetch_add(1, SeqCst);
    expected(k)
}

/// The keys of `value_of(k)` for `ks` (to find which primary holds each).
async fn keys_of(cache: &Cache, ks: impl IntoIterator<Item = u64>) -> Vec<String> {
    let ks: Vec<u64> = ks.into_iter().collect();
    with_cache(cache.clone(), async {
        ks.iter()
            .map(|k| value_of_cache_key(k).expect("a key"))
            .collect()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_is_survived() {
    let mut cluster = RedisCluster::start(ClusterOptions::default());
    let cache = Cache::new(
        CacheConfig::builder()
            .url(cluster.url())
            .socket_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .unwrap();
    // Warm: every key cached, on every primary.
    with_cache(cache.clone(), async {
        for k in 0..KEYS {
            assert_eq!(value_of(k).await, expected(k));
        }
    })
    .await;
    assert_eq!(BODY_RUNS.load(SeqCst), KEYS);
    cluster.wait_for_replication(Duration::from_secs(10));

    // The victim: the primary of key 0's slot.
    let keys = keys_of(&cache, 0..KEYS).await;
    let victim = cluster.primary_for_key(&keys[0]);
    let victim_keys: Vec<u64> = tokio::task::block_in_place(|| {
        (0..KEYS)
            .filter(|k| cluster.primary_for_key(&keys[*k as usize]) == victim)
            .collect()
    });
    assert!(
        victim_keys.len() > KEYS as usize / 6,
        "{} keys",
        victim_keys.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..TASKS)
        .map(|t| {
            let (cache, stop, calls, wrong) =
                (cache.clone(), stop.clone(), calls.clone(), wrong.clone());
            tokio::spawn(with_cache(cache, async move {
                let mut k = t as u64 * 7;
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

    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_node(victim));
    // While the victim's slots have no primary, health says so.
    let mut saw_unhealthy = None;
    let probe_deadline = Instant::now() + Duration::from_secs(10);
    while saw_unhealthy.is_none() && Instant::now() < probe_deadline {
        let h = cache.health().await;
        if h.status == "unhealthy" {
            saw_unhealthy = h.error;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster_ref = &cluster;
    let promoted = tokio::task::block_in_place(|| {
        cluster_ref.wait_for_failover_of(victim, Duration::from_secs(30))
    });
    let promoted_at = Instant::now();

    // Caching of the victim's slots resumes: a cold key there is stored and then hit.
    let mut resumed_after = None;
    let mut probe = KEYS + 1_000;
    while resumed_after.is_none() {
        assert!(
            promoted_at.elapsed() < Duration::from_secs(15),
            "caching of the failed primary's slots never resumed"
        );
        probe += 1;
        let probe_key = keys_of(&cache, [probe]).await.remove(0);
        // The harness is synchronous: keep it off the runtime's workers.
        if tokio::task::block_in_place(|| cluster.primary_for_key(&probe_key)) != promoted {
            continue;
        }
        let before = BODY_RUNS.load(SeqCst);
        let v = with_cache(cache.clone(), async {
            value_of(probe).await;
            value_of(probe).await
        })
        .await;
        assert_eq!(v, expected(probe));
        if BODY_RUNS.load(SeqCst) - before == 1 {
            resumed_after = Some(promoted_at.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for task in load {
        task.await.expect("no load task panicked: no call failed");
    }
    let health = cache.health().await;

    let resumed_after = resumed_after.unwrap_or_default();
    println!(
        "failover: {} calls by {TASKS} tasks, {} wrong values; promotion {:?} after the kill; caching of its slots resumed {:?} after the promotion; health during the outage: {:?}",
        calls.load(SeqCst),
        wrong.load(SeqCst),
        promoted_at.duration_since(killed_at),
        resumed_after,
        saw_unhealthy
    );
    assert_eq!(wrong.load(SeqCst), 0, "wrong values");
    assert!(calls.load(SeqCst) > 1_000, "the load ran");
    assert!(resumed_after < Duration::from_secs(5), "{resumed_after:?}");
    let reason = saw_unhealthy.expect("health reported the outage");
    assert!(
        reason.contains("fail") || reason.contains("slots") || reason.contains("cluster_state"),
        "{reason}"
    );
    assert_eq!(health.status, "healthy", "{health:?}");
    // Keys of the other primaries stayed cached throughout: reading them all again runs no
    // body for them.
    let others: Vec<u64> = (0..KEYS).filter(|k| !victim_keys.contains(k)).collect();
    let before = BODY_RUNS.load(SeqCst);
    with_cache(cache.clone(), async {
        for k in &others {
            assert_eq!(value_of(*k).await, expected(*k));
        }
    })
    .await;
    assert_eq!(
        BODY_RUNS.load(SeqCst) - before,
        0,
        "the other shards kept their entries"
    );
}
