//! Slow or hung Redis: a call takes at most the socket timeout plus its body; after
//! repeated failures a circuit breaker stops paying the timeout on every call and probes
//! until Redis is back.
//!
//! The cache talks to Redis through a TCP proxy in this process that can stall (hold every
//! byte, forward nothing, keep connections open), and `DEBUG SLEEP` makes the server
//! itself hang. The tests of this binary share the global cache (and so its circuit
//! breaker): they take turns through [`LOCK`], and each starts from a cache that hits.

mod reliability_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, CacheConfig};
use cache_tests::{raw_client, RedisServer};
use reliability_support::{block_on, median, poll_until, Proxy};

const SOCKET_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

static LOCK: Mutex<()> = Mutex::new(());
static PROXY: OnceLock<Proxy> = OnceLock::new();
/// A fresh argument for every call that must miss.
static NEXT_ARG: AtomicUsize = AtomicUsize::new(1);
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A function whose body takes `body_ms`.
#[cache_result(ttl = 600, namespace = "slow")]
async fn compute(x: u64, body_ms: u64) -> u64 {
    RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(body_ms)).await;
    x * 3 + body_ms
}

fn fresh() -> u64 {
    NEXT_ARG.fetch_add(1, SeqCst) as u64
}

/// One call on a fresh key (a miss, so it reads and stores): its duration, checked value.
async fn timed_miss(body_ms: u64) -> Duration {
    let x = fresh();
    let start = Instant::now();
    let got = compute(x, body_ms).await;
    let took = start.elapsed();
    assert_eq!(got, x * 3 + body_ms, "the cache changed a return value");
    took
}

/// Serialises the tests, points the proxy at `server` and makes sure the cache hits.
fn setup(server: &RedisServer) -> MutexGuard<'static, ()> {
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = PROXY.get_or_init(|| {
        let proxy = block_on(Proxy::start("127.0.0.1:0", upstream));
        let config = CacheConfig::builder()
            .url(format!("redis://{}", proxy.addr()))
            .socket_timeout(SOCKET_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("valid configuration");
        cache_runtime::init(config).expect("init");
        proxy
    });
    proxy.set_upstream(upstream);
    proxy.forward();
    block_on(wait_for_hits(Duration::from_secs(10)));
    guard
}

fn proxy() -> &'static Proxy {
    PROXY.get().expect("setup() ran")
}

/// Polls until a repeated call is served from the cache; how long that took.
async fn wait_for_hits(limit: Duration) -> Duration {
    let x = fresh();
    let took = poll_until(limit, Duration::from_millis(20), async || {
        let runs = RUNS.load(SeqCst);
        assert_eq!(compute(x, 0).await, x * 3);
        RUNS.load(SeqCst) == runs
    })
    .await;
    match took {
        Some(took) => took,
        None => panic!(
            "the cache does not hit within {limit:?}: {:?}",
            cache_runtime::global().expect("global").health().await
        ),
    }
}

/// "A call takes at most the socket timeout plus its body": one decorated call on a cold
/// key while Redis hangs, with a healthy circuit breaker (the first call to notice).
///
/// Today a miss pays the socket timeout twice: once for the GET, then again for the SET
/// after the body (`__private::run` awaits the store before returning the result).
#[test]
fn a_call_against_a_hung_redis_takes_at_most_the_socket_timeout_plus_its_body() {
    const BODY_MS: u64 = 100;
    let slack = Duration::from_millis(400);
    let bound = SOCKET_TIMEOUT + Duration::from_millis(BODY_MS) + slack;
    let server = RedisServer::plain();
    let _guard = setup(&server);

    // 1. The network path hangs (proxy stalls).
    proxy().stall();
    let stalled = block_on(timed_miss(BODY_MS));
    proxy().forward();
    let recovered = block_on(wait_for_hits(Duration::from_secs(10)));
    println!("proxy stalled: a cold call took {stalled:?} (bound {bound:?}); hits again after {recovered:?}");

    // 2. The server hangs (DEBUG SLEEP on another connection).
    let mut raw = raw_client(&server);
    let sleeper = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .exec(&mut raw)
            .expect("DEBUG SLEEP");
    });
    std::thread::sleep(Duration::from_millis(100));
    let sleeping = block_on(timed_miss(BODY_MS));
    sleeper.join().expect("sleeper");
    let recovered = block_on(wait_for_hits(Duration::from_secs(10)));
    println!("DEBUG SLEEP 2: a cold call took {sleeping:?} (bound {bound:?}); hits again after {recovered:?}");

    assert!(
        stalled <= bound && sleeping <= bound,
        "a call took {stalled:?} (stalled path) and {sleeping:?} (DEBUG SLEEP); \
         it should take at most the socket timeout {SOCKET_TIMEOUT:?} + its body {BODY_MS} ms \
         (+{slack:?} slack)"
    );
}

/// While Redis hangs every call still returns the right value within the timeouts; after
/// the breaker opens calls stop paying the timeout; once Redis answers, caching resumes.
#[test]
fn breaker_stops_paying_the_timeout_and_probes_until_redis_is_back() {
    const BODY_MS: u64 = 5;
    // Generous: the read and the store may each pay the socket timeout (see the test
    // above), plus scheduling noise on a shared machine.
    let generous = 2 * SOCKET_TIMEOUT + Duration::from_millis(BODY_MS) + Duration::from_secs(1);
    let server = RedisServer::plain();
    let _guard = setup(&server);
    let cache = cache_runtime::global().expect("global");

    // Entries stored before the stall, each with its own value of one type: if a reply
    // held during the stall ever answered a later request, a wrong value would show.
    let stored: Vec<u64> = (0..200).map(|_| fresh()).collect();
    block_on(async {
        for &x in &stored {
            assert_eq!(compute(x, BODY_MS).await, x * 3 + BODY_MS);
        }
    });

    block_on(async {
        proxy().stall();
        // 20 concurrent calls on stored keys while the breaker is still closed: each pays
        // the timeout, then runs its body; their requests stay held in the proxy (and
        // their replies arrive after the stall, when nobody waits for them any more).
        let reads: Vec<_> = stored
            .iter()
            .take(20)
            .map(|&x| {
                tokio::spawn(async move {
                    let start = Instant::now();
                    (compute(x, BODY_MS).await, start.elapsed())
                })
            })
            .collect();
        let mut slow = Vec::new();
        for (read, &x) in reads.into_iter().zip(&stored) {
            let (got, took) = read.await.expect("no panic");
            assert_eq!(got, x * 3 + BODY_MS);
            slow.push(took);
        }
        let slowest = slow.iter().max().copied().unwrap_or_default();
        println!(
            "stalled, breaker closed: 20 concurrent calls took {:?} to {slowest:?}",
            slow.iter().min().copied().unwrap_or_default()
        );
        assert!(
            slowest < generous,
            "a call took {slowest:?} (bound {generous:?})"
        );

        // Breaker open: calls fail over to the body at once; one probe per 500 ms pays
        // the timeout.
        // Long enough (1.5 s) for a few probes.
        let mut fast = Vec::new();
        let open_phase = Instant::now();
        while fast.len() < 40 || open_phase.elapsed() < Duration::from_millis(1500) {
            fast.push(timed_miss(BODY_MS).await);
        }
        let open_phase = open_phase.elapsed();
        let calls = fast.len();
        let probes = fast.iter().filter(|d| **d >= SOCKET_TIMEOUT).count();
        let slowest = fast.iter().max().copied().unwrap_or_default();
        let med = median(&mut fast);
        println!(
            "stalled, breaker open: {calls} calls in {open_phase:?}, median {med:?}, slowest {slowest:?}, {probes} paid the timeout (probes)"
        );
        assert!(probes >= 1, "no probe in {open_phase:?}");
        assert!(
            med < Duration::from_millis(50),
            "median {med:?}: the breaker should spare calls the {SOCKET_TIMEOUT:?} timeout"
        );
        assert!(
            slowest < generous,
            "slowest {slowest:?} (bound {generous:?})"
        );
        let health = cache.health().await;
        println!(
            "health while stalled: {}",
            serde_json::to_string(&health).unwrap()
        );
        assert!(health.circuit_open, "{health:?}");
        assert_eq!(health.status, "unhealthy");

        // Redis answers again: a probe closes the breaker and caching resumes.
        proxy().forward();
        let resumed = wait_for_hits(Duration::from_secs(5)).await;
        println!("forwarding again: caching resumed after {resumed:?}");
        // Every stored entry reads back as its own value, concurrently.
        let runs = RUNS.load(SeqCst);
        let reads: Vec<_> = stored
            .iter()
            .map(|&x| tokio::spawn(compute(x, BODY_MS)))
            .collect();
        for (read, &x) in reads.into_iter().zip(&stored) {
            assert_eq!(read.await.expect("no panic"), x * 3 + BODY_MS, "entry {x}");
        }
        let ran = RUNS.load(SeqCst) - runs;
        println!(
            "after the stall: {} stored entries read back correctly, {ran} bodies ran",
            stored.len(),
        );
        assert_eq!(ran, 0, "entries stored before the stall are hits again");
        let health = cache.health().await;
        assert_eq!(
            (health.status, health.circuit_open),
            ("healthy", false),
            "{health:?}"
        );
    });
}
