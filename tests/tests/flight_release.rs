//! One body run per key (`cache-runtime/src/flight.rs`): what happens to the callers
//! waiting on a running call (the followers) when it does not end normally, and when Redis
//! hangs.
//!
//! - The leader's body panics, or the leader's future is dropped (its task aborted, or a
//!   `select!` that moves on): the flight's release path must wake every follower, which
//!   then runs its own body and returns its own correct value, promptly. A bug there would
//!   hang them forever.
//! - Redis hangs: the leader's read times out after the socket timeout, its body runs once,
//!   and the followers get its value (they do not each run the body).
//!
//! Followers are known to be waiting (not merely started) from the runtime's own debug
//! event "waiting for the call in flight", captured for the key: no sleeps.

mod reliability_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig};
use cache_tests::{keyspace, RedisServer};
use reliability_support::{poll_until, Capture, Proxy};
use tokio::sync::Notify;

/// Followers per flight.
const FOLLOWERS: usize = 8;
/// How long released followers may take to return: they only have to wake up and run a
/// body that returns at once (no I/O). Generous for a loaded 2-core machine; a follower
/// that is never released waits forever.
const RELEASE_BOUND: Duration = Duration::from_secs(2);

fn value_of(x: u64) -> u64 {
    x * 7 + 3
}

/// The state of the calls of one argument (each test uses its own arguments).
#[derive(Default)]
struct Gate {
    /// Body runs.
    runs: AtomicUsize,
    /// The first run is inside its body.
    started: Notify,
    /// Lets the first run go on.
    release: Notify,
}

fn gate(x: u64) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<u64, Arc<Gate>>>> = OnceLock::new();
    let mut gates = GATES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Arc::clone(gates.entry(x).or_default())
}

/// What the intentional panic says.
const ON_PURPOSE: &str = "the leader's body panics (on purpose)";

/// Keeps the intentional panic quiet (with RUST_BACKTRACE set, each would print a long
/// backtrace); every other panic is reported as usual.
fn quiet_intentional_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&ON_PURPOSE) {
                default(info);
            }
        }));
    });
}

/// The first run waits for its release, then panics; later runs return the value.
#[cache_result(namespace = "flight", ttl = 600)]
async fn leader_panics(x: u64) -> u64 {
    let g = gate(x);
    if g.runs.fetch_add(1, SeqCst) == 0 {
        g.started.notify_one();
        g.release.notified().await;
        std::panic::panic_any(ON_PURPOSE);
    }
    value_of(x)
}

/// The first run never finishes (its caller gives up on it); later runs return the value.
#[cache_result(namespace = "flight", ttl = 600)]
async fn leader_hangs(x: u64) -> u64 {
    let g = gate(x);
    if g.runs.fetch_add(1, SeqCst) == 0 {
        g.started.notify_one();
        std::future::pending::<()>().await;
    }
    value_of(x)
}

/// The first run waits for its release, then returns the value, as do later runs.
#[cache_result(namespace = "flight", ttl = 600)]
async fn gated(x: u64) -> u64 {
    let g = gate(x);
    if g.runs.fetch_add(1, SeqCst) == 0 {
        g.started.notify_one();
        g.release.notified().await;
    }
    value_of(x)
}

/// How the leader's call ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Its body panics.
    Panic,
    /// Its task is aborted.
    Abort,
    /// Its future is dropped by a `select!` that takes another branch.
    Dropped,
}

fn redis_cache(url: String) -> Cache {
    let config = CacheConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(1))
        .socket_timeout(SOCKET_TIMEOUT)
        .build()
        .expect("valid config");
    Cache::new(config).expect("cache")
}

const SOCKET_TIMEOUT: Duration = Duration::from_millis(500);

/// How many callers of `key` wait for the call in flight (the runtime's debug event).
fn waiting(capture: &Capture, key: &str) -> usize {
    let field = format!("key={key}");
    capture
        .lines()
        .iter()
        .filter(|l| l.contains("waiting for the call in flight") && l.contains(&field))
        .count()
}

async fn until_waiting(capture: &Capture, key: &str, n: usize) {
    let all = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(2),
        async || waiting(capture, key) >= n,
    )
    .await;
    assert!(
        all.is_some(),
        "only {} of {n} callers of {key} came to wait for the call in flight",
        waiting(capture, key)
    );
}

/// A leader on a cold key, [`FOLLOWERS`] followers waiting for it, then the leader's call
/// ends without a value (`ending`): every follower returns the right value, by running its
/// own body, within [`RELEASE_BOUND`].
async fn followers_outlive_their_leader(cache: Cache, x: u64, ending: Ending) {
    let capture = Capture::global();
    quiet_intentional_panics();
    let g = gate(x);
    let call = move || async move {
        match ending {
            Ending::Panic => leader_panics(x).await,
            Ending::Abort | Ending::Dropped => leader_hangs(x).await,
        }
    };
    let key = with_cache(cache.clone(), async {
        match ending {
            Ending::Panic => leader_panics_cache_key(&x),
            Ending::Abort | Ending::Dropped => leader_hangs_cache_key(&x),
        }
    })
    .await
    .expect("a key");

    let give_up = Arc::new(Notify::new());
    let leader = {
        let (cache, give_up) = (cache.clone(), Arc::clone(&give_up));
        tokio::spawn(async move {
            tokio::select! {
                v = with_cache(cache, call()) => Some(v),
                () = give_up.notified() => None,
            }
        })
    };
    g.started.notified().await;
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| tokio::spawn(with_cache(cache.clone(), call())))
        .collect();
    until_waiting(&capture, &key, FOLLOWERS).await;
    assert_eq!(
        g.runs.load(SeqCst),
        1,
        "followers wait, they do not run yet"
    );

    match ending {
        Ending::Panic => g.release.notify_one(),
        Ending::Abort => leader.abort(),
        Ending::Dropped => give_up.notify_one(),
    }
    let leader = leader.await;
    // The leader's task is over (its future dropped, panic message printed): from now on
    // nothing but a wake-up stands between the followers and their own body.
    let ended = Instant::now();
    match ending {
        Ending::Panic => assert!(leader.is_err_and(|e| e.is_panic())),
        Ending::Abort => assert!(leader.is_err_and(|e| e.is_cancelled())),
        Ending::Dropped => assert_eq!(leader.ok(), Some(None), "the leader's future was dropped"),
    }
    for (i, follower) in followers.into_iter().enumerate() {
        let Ok(joined) = tokio::time::timeout_at((ended + RELEASE_BOUND).into(), follower).await
        else {
            panic!(
                "{ending:?}: follower {i} still waiting {RELEASE_BOUND:?} after its leader ended"
            );
        };
        assert_eq!(
            joined.expect("no panic"),
            value_of(x),
            "{ending:?}: follower {i}"
        );
    }
    let took = ended.elapsed();
    println!(
        "{} {ending:?}: {FOLLOWERS} followers returned {took:?} after the leader's call ended",
        cache.backend_kind()
    );
    assert_eq!(
        g.runs.load(SeqCst),
        1 + FOLLOWERS,
        "each follower ran its own body"
    );
    // The key is not poisoned: the next call runs once and stores, the one after hits.
    let runs = g.runs.load(SeqCst);
    with_cache(cache.clone(), async {
        assert_eq!(call().await, value_of(x));
        assert_eq!(call().await, value_of(x));
    })
    .await;
    assert_eq!(g.runs.load(SeqCst), runs + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_panicking_leader_run_their_own_body() {
    followers_outlive_their_leader(Cache::in_memory(), 1001, Ending::Panic).await;
    let server = RedisServer::plain();
    followers_outlive_their_leader(redis_cache(server.url()), 1002, Ending::Panic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_aborted_leader_run_their_own_body() {
    followers_outlive_their_leader(Cache::in_memory(), 2001, Ending::Abort).await;
    let server = RedisServer::plain();
    followers_outlive_their_leader(redis_cache(server.url()), 2002, Ending::Abort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_dropped_leader_run_their_own_body() {
    followers_outlive_their_leader(Cache::in_memory(), 3001, Ending::Dropped).await;
    let server = RedisServer::plain();
    followers_outlive_their_leader(redis_cache(server.url()), 3002, Ending::Dropped).await;
}

/// Redis hangs (a proxy that holds every byte): on a cold key the leader's read times out
/// after the socket timeout and its body runs; the followers, whose reads fail too, wait
/// for it and get its value. One body run for all of them. The leader does not store
/// (its read just failed on a connection fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_the_leaders_value_while_redis_hangs() {
    let capture = Capture::global();
    let server = RedisServer::plain();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = Proxy::start("127.0.0.1:0", upstream).await;
    let cache = redis_cache(format!("redis://{}", proxy.addr()));
    cache.connect().await.expect("Redis is up");
    let x = 4001;
    let g = gate(x);
    let key = with_cache(cache.clone(), async { gated_cache_key(&x) })
        .await
        .expect("a key");

    proxy.stall();
    let leader_start = Instant::now();
    let leader = tokio::spawn(with_cache(cache.clone(), gated(x)));
    g.started.notified().await;
    let leader_read = leader_start.elapsed();
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let v = with_cache(cache, gated(x)).await;
                (v, start.elapsed())
            })
        })
        .collect();
    until_waiting(&capture, &key, FOLLOWERS).await;
    let released = Instant::now();
    g.release.notify_one();
    assert_eq!(leader.await.expect("no panic"), value_of(x));
    let mut slowest = Duration::ZERO;
    for (i, follower) in followers.into_iter().enumerate() {
        let Ok(joined) = tokio::time::timeout_at((released + RELEASE_BOUND).into(), follower).await
        else {
            panic!("follower {i} still waiting {RELEASE_BOUND:?} after the leader returned");
        };
        let (v, took) = joined.expect("no panic");
        assert_eq!(v, value_of(x), "follower {i}");
        slowest = slowest.max(took);
    }
    println!(
        "Redis hung: the leader's read gave up after {leader_read:?}; {FOLLOWERS} followers \
         got its value {:?} after it was released (slowest call {slowest:?}); {} body run(s)",
        released.elapsed(),
        g.runs.load(SeqCst)
    );
    assert!(
        leader_read >= SOCKET_TIMEOUT,
        "the body ran {leader_read:?} after the call: Redis did not hang?"
    );
    assert_eq!(
        g.runs.load(SeqCst),
        1,
        "the followers ran the body themselves"
    );

    proxy.forward();
    assert!(
        !keyspace(&server).contains_key(&key),
        "the leader stored although its read had just failed on a connection fault"
    );
}
