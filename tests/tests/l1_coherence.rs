//! The two-tier cache: an in-process L1 in front of Redis stays coherent across
//! processes (two `Cache`s on separate connections stand for two processes), never
//! outlives Redis' TTL, and stops serving while its invalidation channel is down, including
//! when only the invalidation connection fails while Redis itself is fine (a stalled or a
//! killed subscription): then another process's writes must not be hidden by stale L1
//! entries for longer than the documented bound.
//!
//! Every test first shows that the L1 actually serves (`l1_hits` grows), so none of them
//! could pass with the L1 off.

mod reliability_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::Cache;
use cache_tests::{l1_cache_at, raw_async_client, RedisServer};
use reliability_support::tap::TapProxy;

fn l1_cache(server: &RedisServer) -> Cache {
    l1_cache_at(server.url())
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

fn l1_hits(cache: &Cache, namespace: &str) -> u64 {
    cache.counters().get(namespace).map_or(0, |c| c.l1_hits)
}

/// Reads `key` until one read is served by the L1 (a first read may rightly not fill: the
/// announcement of the store it read may land after it). Panics if none is within 2 s.
async fn until_l1_hit<
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
>(
    cache: &Cache,
    namespace: &str,
    key: &str,
    expected: &T,
) {
    let ns = cache.namespace(namespace).unwrap();
    let before = l1_hits(cache, namespace);
    let hit = within(Duration::from_secs(2), async || {
        assert_eq!(ns.get::<T>(key).await.unwrap().as_ref(), Some(expected));
        l1_hits(cache, namespace) > before
    })
    .await;
    assert!(
        hit.is_some(),
        "{key} never served from the L1: {:?}",
        cache.counters()
    );
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
    // Soon served from B's L1.
    until_l1_hit(&b, "general", "k", &1u32).await;

    na.set("k", &2u32, None).await.unwrap();
    let seen = within(Duration::from_millis(100), async || {
        nb.get::<u32>("k").await.unwrap() == Some(2)
    })
    .await;
    assert!(seen.is_some(), "B still served the old value after 100 ms");
    println!("store seen by the other L1 after {:?}", seen.unwrap());

    until_l1_hit(&b, "general", "k", &2u32).await;
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
        .set("x", "v", None)
        .await
        .unwrap();
    // B holds it in its L1 (so a clear that did not reach B would show).
    until_l1_hit(&b, "analytics", "x", &"v".to_owned()).await;
    assert_eq!(a.clear_namespace("analytics").await.unwrap(), 1);
    let gone = within(Duration::from_millis(100), async || {
        nb.get::<String>("x").await.unwrap().is_none()
    })
    .await;
    assert!(gone.is_some(), "namespace clear not seen by the other L1");

    let sa = cache_runtime::service::CacheService::new(a.clone());
    let sb = cache_runtime::service::CacheService::new(b.clone());
    sa.cache_user_data("u1", "profile", "p", None)
        .await
        .unwrap();
    let before = l1_hits(&b, "users");
    let hit = within(Duration::from_secs(2), async || {
        assert_eq!(
            sb.get_user_data::<String>("u1", "profile")
                .await
                .unwrap()
                .as_deref(),
            Some("p")
        );
        l1_hits(&b, "users") > before
    })
    .await;
    assert!(hit.is_some(), "user data never served from B's L1");
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

/// The L1 serves the entry while Redis holds it, and not once Redis has expired it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_never_outlives_the_redis_ttl() {
    const TTL: Duration = Duration::from_millis(1500);
    let server = RedisServer::plain();
    let a = l1_cache(&server);
    wait_active(&a).await;
    let ns = a.namespace("general").unwrap();
    ns.set("short", &7u8, Some(TTL)).await.unwrap();
    // Redis received the SET before it returned, so it expires the key no later than this.
    let expires_by = Instant::now() + TTL;
    until_l1_hit(&a, "general", "short", &7u8).await;
    assert!(
        Instant::now() < expires_by,
        "too slow to see an L1 hit before the TTL; the check below would prove nothing"
    );
    // Redis no longer has it: a read must not find it (neither in Redis nor in the L1).
    tokio::time::sleep_until((expires_by + Duration::from_millis(50)).into()).await;
    let hits = l1_hits(&a, "general");
    assert_eq!(
        ns.get::<u8>("short").await.unwrap(),
        None,
        "served after its Redis TTL"
    );
    assert_eq!(l1_hits(&a, "general"), hits);
}

/// After Redis restarts (empty, no persistence), the L1 comes back with the channel, and
/// empty: what it held before is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_l1_comes_back_empty() {
    let mut server = RedisServer::plain();
    let a = l1_cache(&server);
    wait_active(&a).await;
    let ns = a.namespace("general").unwrap();
    ns.set("k", &1u32, None).await.unwrap();
    until_l1_hit(&a, "general", "k", &1u32).await;

    server.stop();
    let down = within(Duration::from_secs(5), async || !a.l1_active()).await;
    assert!(down.is_some(), "L1 kept serving with the channel down");
    assert_eq!(a.health().await.l1_active, Some(false));
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
    assert_eq!(a.health().await.l1_active, Some(true));
    assert_eq!(ns.get::<u32>("k").await.unwrap(), None);
}

// ------------------------------------------------------- a silent subscription

/// How long the invalidation connection is kept failing (and re-subscribing impossible):
/// longer than every bound below, so an L1 that went on serving would show it.
const HOLD: Duration = Duration::from_secs(4);

/// What the reader saw and when the writer's values were committed.
#[derive(Default)]
struct Timeline {
    /// `committed[i]`: when the set of value `i + 1` returned (Redis holds it, and the
    /// announcement of it was published: every later read must see it or newer).
    committed: Vec<Instant>,
    /// Reads: when each started, and the value it returned.
    reads: Vec<(Instant, u64)>,
}

impl Timeline {
    /// The longest a read returned a value after a newer one was committed, and when that
    /// read started.
    fn worst_staleness(&self) -> (Duration, Option<Instant>) {
        let mut worst = (Duration::ZERO, None);
        for &(started, value) in &self.reads {
            // Value `value + 1` is at index `value`.
            let Some(&newer) = self.committed.get(value as usize) else {
                continue;
            };
            if newer < started && started - newer > worst.0 {
                worst = (started - newer, Some(started));
            }
        }
        worst
    }
}

/// What [`stale_reads_while_the_channel_fails`] measured.
struct Measured {
    /// From the fault to `l1_active() == false`.
    noticed_after: Duration,
    /// The longest a superseded value was served, over the whole run.
    worst_staleness: Duration,
    /// When (relative to the fault) that read started.
    worst_at: Option<Duration>,
    /// From lifting the fault to `l1_active() == true`.
    back_after: Duration,
}

/// Process B (an L1 cache reaching Redis through `proxy`) reads one key in a loop while
/// process A (another L1 cache with its own, direct connections) writes ever-increasing
/// values to it. `fault` cuts B's invalidation channel only (B's reads still reach Redis);
/// `fault` returns when it took effect; `lift` lets B subscribe again, [`HOLD`] after it. Checks that the L1 serves
/// before and after, serves nothing while the channel is down (`l1_active` and health say
/// so), and measures how stale B's reads got.
async fn stale_reads_while_the_channel_fails(
    server: &RedisServer,
    proxy: &TapProxy,
    fault: impl AsyncFnOnce() -> Instant,
    lift: impl FnOnce(),
) -> Measured {
    let a = l1_cache(server);
    let b = l1_cache_at(format!("redis://{}", proxy.addr()));
    wait_active(&a).await;
    wait_active(&b).await;
    assert_eq!(
        proxy.subscribers(),
        1,
        "B's subscription goes through the proxy"
    );
    a.namespace("general")
        .unwrap()
        .set("k", &1u64, None)
        .await
        .unwrap();
    let timeline = Arc::new(Mutex::new(Timeline {
        committed: vec![Instant::now()],
        reads: Vec::new(),
    }));
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (a, timeline, stop) = (a.clone(), Arc::clone(&timeline), Arc::clone(&stop));
        tokio::spawn(async move {
            let ns = a.namespace("general").unwrap();
            let mut value = 1u64;
            while !stop.load(SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                value += 1;
                ns.set("k", &value, None)
                    .await
                    .expect("the writer's Redis is fine");
                timeline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .committed
                    .push(Instant::now());
            }
        })
    };
    let reader = {
        let (b, timeline, stop) = (b.clone(), Arc::clone(&timeline), Arc::clone(&stop));
        tokio::spawn(async move {
            let ns = b.namespace("general").unwrap();
            while !stop.load(SeqCst) {
                let started = Instant::now();
                let value = ns
                    .get::<u64>("k")
                    .await
                    .expect("B's Redis connections are fine")
                    .expect("the key is always there");
                timeline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reads
                    .push((started, value));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // Before the fault the L1 serves.
    let hits = l1_hits(&b, "general");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        l1_hits(&b, "general") > hits,
        "the L1 never served before the fault: {:?}",
        b.counters()
    );

    let fault_at = fault().await;
    let noticed_after = within(HOLD, async || !b.l1_active())
        .await
        .map(|_| fault_at.elapsed());
    let Some(noticed_after) = noticed_after else {
        panic!("the L1 still served {HOLD:?} after its invalidation channel failed");
    };
    assert_eq!(
        b.health().await.l1_active,
        Some(false),
        "health reports the L1 as serving while its channel is down"
    );
    // From now until the fault is lifted, nothing is served from the L1.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let hits_while_down = l1_hits(&b, "general");
    tokio::time::sleep_until((fault_at + HOLD).into()).await;
    assert!(
        !b.l1_active(),
        "the L1 came back while the channel could not"
    );
    assert_eq!(
        l1_hits(&b, "general"),
        hits_while_down,
        "the L1 served while its channel was down"
    );

    lift();
    let lifted_at = Instant::now();
    let back_after = within(Duration::from_secs(10), async || b.l1_active())
        .await
        .expect("the L1 comes back with its channel");
    assert_eq!(b.health().await.l1_active, Some(true));
    // And serves again.
    let hits = l1_hits(&b, "general");
    let served = within(Duration::from_secs(2), async || {
        l1_hits(&b, "general") > hits
    })
    .await;
    assert!(served.is_some(), "the L1 does not serve after coming back");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, SeqCst);
    writer.await.expect("writer");
    reader.await.expect("reader");
    let timeline = timeline.lock().unwrap_or_else(PoisonError::into_inner);
    let (worst_staleness, worst_read) = timeline.worst_staleness();
    println!(
        "{} writes, {} reads; channel down {noticed_after:?} after the fault, back \
         {back_after:?} after it was lifted ({:?} after the fault)",
        timeline.committed.len(),
        timeline.reads.len(),
        lifted_at + back_after - fault_at,
    );
    Measured {
        noticed_after,
        worst_staleness,
        worst_at: worst_read.map(|r| r.saturating_duration_since(fault_at)),
        back_after,
    }
}

/// The server kills the subscription (`CLIENT KILL TYPE pubsub`), and B's re-subscription
/// hangs for [`HOLD`] (the proxy holds it), so the channel stays down meanwhile while
/// B's other connections and Redis are fine. A closed connection is noticed at once
/// (`backend/redis/pubsub.rs`): about 100 ms at most, asserted under 1 s (a loaded 2-core
/// machine may be slow to schedule the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_stops_the_l1_at_once() {
    const BOUND: Duration = Duration::from_secs(1);
    let server = RedisServer::plain();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = TapProxy::start("127.0.0.1:0", upstream).await;
    let measured = stale_reads_while_the_channel_fails(
        &server,
        &proxy,
        async || {
            proxy.hold_new_subscribers();
            let mut raw = raw_async_client(&server).await;
            let at = Instant::now();
            let killed: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut raw)
                .await
                .expect("CLIENT KILL");
            // B's subscription, and A's (A is a writer here; its L1 does not matter).
            assert!(killed >= 1, "CLIENT KILL TYPE pubsub killed no client");
            at
        },
        || proxy.release_subscribers(),
    )
    .await;
    println!(
        "CLIENT KILL TYPE pubsub: L1 off after {:?}; worst stale read {:?} (at {:?} after \
         the kill); back {:?} after the re-subscription was let through",
        measured.noticed_after, measured.worst_staleness, measured.worst_at, measured.back_after
    );
    assert!(
        measured.noticed_after < BOUND,
        "the L1 was still on {:?} after its subscription was killed",
        measured.noticed_after
    );
    assert!(
        measured.worst_staleness < BOUND,
        "a read returned a value {:?} after a newer one was committed (bound {BOUND:?})",
        measured.worst_staleness
    );
}

/// The subscription goes silent: the proxy stalls B's subscriber connection (and any
/// re-subscription) for [`HOLD`]; Redis and B's other connections are fine. The listener
/// pings every 250 ms and gives the PONG 250 ms (`HEARTBEAT`, `PONG_DEADLINE` in
/// `backend/redis/pubsub.rs`), so the L1 stops within about 0.5 s: asserted under 2 s
/// (a loaded 2-core machine may run timers late), well below the [`HOLD`] an L1 that
/// ignored the silence would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscription_stops_the_l1_within_half_a_second() {
    const BOUND: Duration = Duration::from_secs(2);
    let server = RedisServer::plain();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = TapProxy::start("127.0.0.1:0", upstream).await;
    let measured = stale_reads_while_the_channel_fails(
        &server,
        &proxy,
        async || {
            let at = Instant::now();
            proxy.stall_subscribers();
            at
        },
        || proxy.release_subscribers(),
    )
    .await;
    println!(
        "stalled subscription: L1 off after {:?}; worst stale read {:?} (at {:?} after the \
         stall began); back {:?} after the stall ended",
        measured.noticed_after, measured.worst_staleness, measured.worst_at, measured.back_after
    );
    assert!(
        measured.noticed_after < BOUND,
        "the L1 was still on {:?} after its subscription went silent",
        measured.noticed_after
    );
    assert!(
        measured.worst_staleness < BOUND,
        "a read returned a value {:?} after a newer one was committed (bound {BOUND:?})",
        measured.worst_staleness
    );
}
