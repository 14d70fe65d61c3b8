//! Decorated functions on a real Redis: the behaviours that `cache-runtime/tests/
//! macro_behaviour.rs` shows on the embedded store (invalidation companions, `cache_none`,
//! version bumps, an invalidation during a running call), here with the Redis backend,
//! checked both by the calls (body runs) and in the server's keyspace.
//!
//! Each test has its own server and its own `Cache`, which its decorated calls use through
//! `cache_runtime::with_cache` (a task-local override), and its own functions: the tests
//! run in parallel and never touch the process-wide cache.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig};
use cache_tests::{keyspace, RedisServer};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

fn redis_cache(server: &RedisServer) -> Cache {
    let config = CacheConfig::builder()
        .url(server.url())
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config");
    let cache = Cache::new(config).expect("cache");
    assert_eq!(cache.backend_kind(), "redis");
    cache
}

/// The keys of the server whose name contains `needle`.
fn keys_with(server: &RedisServer, needle: &str) -> Vec<String> {
    keyspace(server)
        .into_keys()
        .filter(|k| k.contains(needle))
        .collect()
}

// ------------------------------------------------------------------- companions

static PRICE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "trading", ttl = "15m")]
async fn price(symbol: &str, venue: String) -> f64 {
    PRICE_RUNS.fetch_add(1, SeqCst);
    #[allow(clippy::cast_precision_loss)]
    let p = (symbol.len() * 100 + venue.len()) as f64;
    p
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    user: String,
    kind: String,
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 1800, data_type = "reports")]
async fn user_report(user_id: &str, kind: &str) -> Report {
    REPORT_RUNS.fetch_add(1, SeqCst);
    Report {
        user: user_id.to_owned(),
        kind: kind.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_companions_remove_one_entry_from_redis() {
    let server = RedisServer::plain();
    let cache = redis_cache(&server);
    with_cache(cache.clone(), async {
        let venue = "NASDAQ".to_owned();
        let aapl = price_cache_key("AAPL", &venue).expect("a key");
        let msft = price_cache_key("MSFT", &venue).expect("a key");
        assert!(aapl.starts_with("tradistry:trading:"), "{aapl}");
        assert_eq!(price("AAPL", venue.clone()).await, 406.0);
        assert_eq!(price("MSFT", venue.clone()).await, 406.0);
        assert_eq!(price("AAPL", venue.clone()).await, 406.0);
        assert_eq!(PRICE_RUNS.load(SeqCst), 2, "the second AAPL call is a hit");
        let stored = keyspace(&server);
        assert!(
            stored.contains_key(&aapl) && stored.contains_key(&msft),
            "{stored:?}"
        );

        assert!(matches!(price_invalidate("AAPL", &venue).await, Ok(true)));
        let stored = keyspace(&server);
        assert!(
            !stored.contains_key(&aapl),
            "AAPL still in Redis: {stored:?}"
        );
        assert!(
            stored.contains_key(&msft),
            "MSFT was removed too: {stored:?}"
        );
        assert!(
            matches!(price_invalidate("AAPL", &venue).await, Ok(false)),
            "nothing left to remove"
        );
        assert_eq!(price("AAPL", venue.clone()).await, 406.0);
        assert_eq!(
            PRICE_RUNS.load(SeqCst),
            3,
            "the invalidated entry is computed again"
        );
        assert_eq!(price("MSFT", venue.clone()).await, 406.0);
        assert_eq!(PRICE_RUNS.load(SeqCst), 3, "other entries are untouched");
        assert!(keyspace(&server).contains_key(&aapl), "stored again");

        // A user-specific entry: the companion removes it (and only it) from Redis.
        let weekly = user_report_cache_key("u1", "weekly").expect("a key");
        let monthly = user_report_cache_key("u1", "monthly").expect("a key");
        assert!(weekly.starts_with("tradistry:users:{user:u1}:"), "{weekly}");
        for kind in ["weekly", "monthly", "weekly"] {
            assert_eq!(
                user_report("u1", kind).await,
                Report {
                    user: "u1".into(),
                    kind: kind.into()
                }
            );
        }
        assert_eq!(REPORT_RUNS.load(SeqCst), 2);
        assert!(matches!(
            user_report_invalidate("u1", "weekly").await,
            Ok(true)
        ));
        let stored = keyspace(&server);
        assert!(!stored.contains_key(&weekly), "{stored:?}");
        assert!(stored.contains_key(&monthly), "{stored:?}");
        let _ = user_report("u1", "weekly").await;
        assert_eq!(REPORT_RUNS.load(SeqCst), 3);
    })
    .await;
    // The calls used this cache (not the global one).
    let counters = cache.counters();
    assert_eq!(
        (counters["trading"].hits, counters["trading"].misses),
        (2, 3),
        "{counters:?}"
    );
}

// ------------------------------------------------------------------- cache_none

static MAYBE_RUNS: AtomicUsize = AtomicUsize::new(0);
static MAYBE_NONE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "options")]
async fn maybe(id: u32) -> Option<u32> {
    MAYBE_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id / 2)
}

#[cache_result(namespace = "options", cache_none = true)]
async fn maybe_cache_none(id: u32) -> Option<u32> {
    MAYBE_NONE_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id / 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_is_stored_in_redis_only_with_cache_none() {
    let server = RedisServer::plain();
    let cache = redis_cache(&server);
    with_cache(cache, async {
        assert_eq!(maybe(1).await, None);
        assert_eq!(maybe(1).await, None);
        assert_eq!(MAYBE_RUNS.load(SeqCst), 2, "None is not cached by default");
        let none_key = maybe_cache_key(&1).expect("a key");
        assert!(
            !keyspace(&server).contains_key(&none_key),
            "None was stored"
        );
        assert_eq!(maybe(2).await, Some(1));
        assert_eq!(maybe(2).await, Some(1));
        assert_eq!(MAYBE_RUNS.load(SeqCst), 3, "Some is cached");
        assert!(keyspace(&server).contains_key(&maybe_cache_key(&2).expect("a key")));

        assert_eq!(maybe_cache_none(1).await, None);
        assert_eq!(maybe_cache_none(1).await, None);
        assert_eq!(
            MAYBE_NONE_RUNS.load(SeqCst),
            1,
            "cache_none = true caches None"
        );
        let stored_none = maybe_cache_none_cache_key(&1).expect("a key");
        assert!(
            keyspace(&server).contains_key(&stored_none),
            "cache_none = true did not store None in Redis"
        );
        assert_eq!(maybe_cache_none(2).await, Some(1));
        assert_eq!(maybe_cache_none(2).await, Some(1));
        assert_eq!(MAYBE_NONE_RUNS.load(SeqCst), 2);
    })
    .await;
    assert_eq!(keys_with(&server, "tradistry:options:").len(), 3);
}

// ------------------------------------------------------------------ version bump

mod bump {
    use super::*;

    pub(super) static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[cache_result(namespace = "versions", version = 2)]
    pub(super) async fn lookup(x: u32) -> u32 {
        RUNS.fetch_add(1, SeqCst);
        x + 1000
    }

    /// What the macro generated for `lookup` before the bump: the same function path and
    /// signature, `version = 1` (the key equality checked below proves the simulation
    /// faithful: with version 2 this site renders exactly the macro's key).
    pub(super) fn site(version: u32) -> &'static cache_runtime::__private::Site {
        Box::leak(Box::new(cache_runtime::__private::Site::new(
            "versions",
            concat!(module_path!(), "::lookup"),
            version,
            "cache_result;value;(x:u32)->u32",
            0,
        )))
    }

    pub(super) fn call_key(
        site: &'static cache_runtime::__private::Site,
        x: u32,
    ) -> cache_runtime::__private::CallKey {
        let mut k = cache_runtime::__private::KeyBuilder::new::<u32>(site);
        k.arg(&x);
        k.finish()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_bump_never_reads_values_stored_in_redis_by_the_old_version() {
    use cache_runtime::__private::{cached_value, key_of};
    let server = RedisServer::plain();
    let cache = redis_cache(&server);
    with_cache(cache, async {
        let (old, new) = (bump::site(1), bump::site(2));
        let new_key = bump::lookup_cache_key(&7).expect("a key");
        assert_eq!(
            key_of(new, &bump::call_key(new, 7)).as_deref(),
            Some(new_key.as_str()),
            "the hand-made site must render the macro's key"
        );
        let old_key = key_of(old, &bump::call_key(old, 7)).expect("a key");

        // The old release stored a value for lookup(7), in Redis.
        assert_eq!(
            cached_value(old, bump::call_key(old, 7), None, async { 1u32 }).await,
            1
        );
        assert_eq!(
            cached_value(old, bump::call_key(old, 7), None, async { 2u32 }).await,
            1,
            "the old release reads its own value back"
        );
        assert!(keyspace(&server).contains_key(&old_key));
        // The new release never sees it: it runs its body and stores under its own key.
        assert_eq!(bump::lookup(7).await, 1007);
        assert_eq!(bump::lookup(7).await, 1007);
        assert_eq!(bump::RUNS.load(SeqCst), 1);
        let stored = keyspace(&server);
        assert!(
            stored.contains_key(&old_key) && stored.contains_key(&new_key),
            "{stored:?}"
        );
        // And the old release still reads its own (both live side by side until expiry).
        assert_eq!(
            cached_value(old, bump::call_key(old, 7), None, async { 3u32 }).await,
            1
        );
        // The version is a segment of the key (readable in redis-cli).
        assert!(old_key.contains("::bump::lookup:v1:"), "{old_key}");
        assert!(new_key.contains("::bump::lookup:v2:"), "{new_key}");
    })
    .await;
}

// ------------------------------------------------ invalidation during a running call

mod during_run {
    use super::*;

    pub(super) static SOURCE: AtomicU32 = AtomicU32::new(1);
    pub(super) static RUNS: AtomicUsize = AtomicUsize::new(0);
    /// The first run has read its source.
    pub(super) static FIRST_READ: Notify = Notify::const_new();
    /// Lets the first run finish.
    pub(super) static FIRST_MAY_FINISH: Notify = Notify::const_new();

    /// Reads its source of truth, then takes a while (as a database query would): the
    /// first run until the test lets it finish, later runs not at all.
    #[cache_result(namespace = "invalidation")]
    pub(super) async fn slow_read(x: u32) -> u32 {
        let v = SOURCE.load(SeqCst);
        if RUNS.fetch_add(1, SeqCst) == 0 {
            FIRST_READ.notify_one();
            FIRST_MAY_FINISH.notified().await;
        }
        v * 1000 + x
    }
}

/// An invalidation while a call is running ends that call's flight: a later call runs its
/// body (sees the new data) instead of joining it, and the old call does not overwrite
/// the fresh entry in Redis with its stale result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_running_call_is_not_undone_by_it_on_redis() {
    use during_run::{
        slow_read, slow_read_cache_key, slow_read_invalidate, FIRST_MAY_FINISH, FIRST_READ, RUNS,
        SOURCE,
    };
    let server = RedisServer::plain();
    let cache = redis_cache(&server);
    let old = tokio::spawn(with_cache(cache.clone(), slow_read(7)));
    with_cache(cache.clone(), async {
        // The old call is inside its body and has read the old data.
        FIRST_READ.notified().await;
        SOURCE.store(2, SeqCst);
        assert!(matches!(slow_read_invalidate(&7).await, Ok(false)));
        // Does not join the old flight (which waits for the old call, held until below):
        // runs the body, reads the new data, stores it.
        let new = tokio::time::timeout(Duration::from_secs(10), slow_read(7)).await;
        assert_eq!(
            new.ok(),
            Some(2007),
            "a call after the invalidation joined the flight that predates it"
        );
        let key = slow_read_cache_key(&7).expect("a key");
        let fresh = keyspace(&server).get(&key).cloned();
        assert!(fresh.is_some(), "the new call stored its value");

        FIRST_MAY_FINISH.notify_one();
        assert_eq!(
            old.await.ok(),
            Some(1007),
            "the old caller still gets its own result"
        );
        assert_eq!(RUNS.load(SeqCst), 2);
        // The old call did not overwrite the fresh entry with its stale value.
        assert_eq!(keyspace(&server).get(&key), fresh.as_ref());
        assert_eq!(slow_read(7).await, 2007);
        assert_eq!(RUNS.load(SeqCst), 2, "the fresh entry is a hit");
    })
    .await;
}
