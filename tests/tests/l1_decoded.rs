//! L1 hits of decorated functions whose stored type is `Clone + Send + Sync` return a clone
//! of a decoded copy the L1 keeps beside the bytes (no decoding); other types decode on
//! every hit. On a real server, with two caches standing for two processes:
//!
//! - the kept copy never outlives its entry: another process's invalidation drops it, and
//!   the next hit clones the new value;
//! - a caller that mutates what it got does not change what the next hit returns;
//! - a type that cannot be cloned is still served by the L1 (decoded: no copy is kept).
//!
//! Every test first shows that the L1 served (its hit counter grew).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache};
use cache_tests::{l1_cache_at, RedisServer};
use serde::{Deserialize, Serialize};

const NS: &str = "l1copy";

fn l1_cache(server: &RedisServer) -> Cache {
    l1_cache_at(server.url())
}

fn l1_hits(cache: &Cache) -> u64 {
    cache.counters().get(NS).map_or(0, |c| c.l1_hits)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Report {
    id: u32,
    version: u64,
    owner: String,
    series: Vec<f64>,
}

static REPORT_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_result(ttl = 600, namespace = "l1copy")]
async fn report(id: u32) -> Report {
    let version = REPORT_RUNS.fetch_add(1, SeqCst) + 1;
    Report {
        id,
        version,
        owner: format!("user_{id}"),
        series: vec![0.5; 8],
    }
}

/// Not `Clone`: served from the L1 by decoding its bytes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sealed {
    id: u32,
    words: Vec<String>,
}

#[cache_result(ttl = 600, namespace = "l1copy")]
async fn sealed(id: u32) -> Sealed {
    Sealed {
        id,
        words: vec!["a".to_owned(), format!("w{id}")],
    }
}

#[cache_result(ttl = 600, namespace = "l1copy")]
async fn series(id: u32) -> Vec<u64> {
    vec![u64::from(id); 4]
}

/// Calls `call` in `cache` until one call is an L1 hit in [`NS`] (a first read may rightly
/// not fill); returns that call's value. Panics if none is within 5 s.
async fn until_l1_hit<T, F: std::future::Future<Output = T>>(
    cache: &Cache,
    call: impl FnMut() -> F,
) -> T {
    until_hit_in(cache, NS, call).await
}

/// [`until_l1_hit`] for a call counted in `namespace`.
async fn until_hit_in<T, F: std::future::Future<Output = T>>(
    cache: &Cache,
    namespace: &str,
    mut call: impl FnMut() -> F,
) -> T {
    let hits = |c: &Cache| c.counters().get(namespace).map_or(0, |c| c.l1_hits);
    let start = Instant::now();
    loop {
        let before = hits(cache);
        let value = with_cache(cache.clone(), call()).await;
        if hits(cache) > before {
            return value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never served from the L1 in {namespace} (active: {}): {:?}",
            cache.l1_active(),
            cache.counters()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_copy_never_outlives_an_invalidation_from_another_process() {
    let server = RedisServer::plain();
    let (a, b) = (l1_cache(&server), l1_cache(&server));
    let first = until_l1_hit(&a, || report(7)).await;
    assert_eq!(first.id, 7);
    // Hits keep returning the kept copy: equal values, and the body did not run again.
    let runs = REPORT_RUNS.load(SeqCst);
    for _ in 0..20 {
        assert_eq!(with_cache(a.clone(), report(7)).await, first);
    }
    assert_eq!(REPORT_RUNS.load(SeqCst), runs, "hits ran the body");

    // Process B removes the entry: A's L1 drops it (and its kept copy) within 100 ms, so
    // A's next call runs the body and returns the new version.
    assert!(with_cache(b.clone(), report_invalidate(&7)).await.unwrap());
    let start = Instant::now();
    let newer = loop {
        let got = with_cache(a.clone(), report(7)).await;
        if got.version != first.version {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "A served the invalidated copy for {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(newer.version > first.version);
    // And the L1 serves the new value from then on, never the old copy.
    let again = until_l1_hit(&a, || report(7)).await;
    assert_eq!(again, newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_a_returned_value_does_not_change_the_next_hit() {
    let server = RedisServer::plain();
    let cache = l1_cache(&server);
    let mut got = until_l1_hit(&cache, || series(3)).await;
    assert_eq!(got, vec![3; 4]);
    got.push(99);
    got[0] = 0;
    let before = l1_hits(&cache);
    assert_eq!(with_cache(cache.clone(), series(3)).await, vec![3; 4]);
    assert!(l1_hits(&cache) > before, "the second read was an L1 hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_that_cannot_be_cloned_is_still_served_by_the_l1() {
    let server = RedisServer::plain();
    let cache = l1_cache(&server);
    let first = until_l1_hit(&cache, || sealed(5)).await;
    let expected = Sealed {
        id: 5,
        words: vec!["a".to_owned(), "w5".to_owned()],
    };
    assert_eq!(first, expected);
    let before = l1_hits(&cache);
    for _ in 0..10 {
        assert_eq!(with_cache(cache.clone(), sealed(5)).await, expected);
    }
    assert_eq!(l1_hits(&cache), before + 10, "every read was an L1 hit");
}

#[cache_result(ttl = 600, namespace = "l1copy")]
async fn doubled(id: u32) -> Vec<u64> {
    vec![u64::from(id) * 2; 4]
}

#[cache_user_specific(ttl = 600, data_type = "l1copy")]
async fn for_user(user_id: &str, id: u32) -> String {
    format!("{user_id}/{id}")
}

/// Two inner functions with one module path (`…::inner`) and the same argument, in two
/// namespaces: two sites and two keys, never one L1 entry. (In one namespace they would
/// share their Redis key: a function is known by its path, name and signature.)
async fn inner_a(id: u32) -> String {
    #[cache_result(ttl = 600, namespace = "l1copy")]
    async fn inner(id: u32) -> String {
        format!("a{id}")
    }
    inner(id).await
}

async fn inner_b(id: u32) -> String {
    #[cache_result(ttl = 600, namespace = "l1copy_b")]
    async fn inner(id: u32) -> String {
        format!("b{id}")
    }
    inner(id).await
}

/// L1 hits are found by the call's site and serialised arguments, not by its key text:
/// the same arguments to other functions, other users, or another function of the same
/// path each find their own entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_finds_its_own_entry_in_the_l1() {
    let server = RedisServer::plain();
    let cache = l1_cache(&server);
    for round in 0..2 {
        for id in [1, 2] {
            let s = until_l1_hit(&cache, || series(id)).await;
            let d = until_l1_hit(&cache, || doubled(id)).await;
            let want = (vec![u64::from(id); 4], vec![u64::from(id) * 2; 4]);
            assert_eq!((s, d), want, "round {round}");
            let a = until_l1_hit(&cache, || inner_a(id)).await;
            let b = until_hit_in(&cache, "l1copy_b", || inner_b(id)).await;
            assert_eq!(
                (a, b),
                (format!("a{id}"), format!("b{id}")),
                "round {round}"
            );
        }
        for user in ["u1", "u2"] {
            let got = until_hit_in(&cache, "users", || for_user(user, 5)).await;
            assert_eq!(got, format!("{user}/5"), "round {round}");
        }
    }
}
