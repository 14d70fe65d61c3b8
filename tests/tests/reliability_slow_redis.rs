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
/// While open, the breaker lets one probe through per interval (`PROBE_INTERVAL` in
/// cache-runtime/src/backend/redis/breaker.rs; README, "Failure behaviour").
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

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
/// The read pays the socket timeout once; the body runs; the store is skipped because the
/// read just failed on a connection fault (`engine/call.rs`), so the timeout is not paid a
/// second time. (A regression that stored anyway would take about twice the timeout and
/// fail the bound.)
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
/// the breaker opens calls stop paying the timeout, and only one probe per
/// [`PROBE_INTERVAL`] goes to Redis however many callers there are; health says the
/// circuit is open and why; once Redis answers, caching resumes.
#[test]
fn breaker_stops_paying_the_timeout_and_probes_until_redis_is_back() {
    const BODY_MS: u64 = 5;
    /// Concurrent callers while the breaker is open: without the one-probe-at-a-time rule,
    /// each of them would pay the timeout once per interval.
    const CALLERS: usize = 8;
    /// How long the open breaker is watched.
    const WINDOW: Duration = Duration::from_millis(2500);
    // A call pays the socket timeout at most once (the read; the store is skipped after a
    // connection fault), plus its body, plus 1 s of scheduling noise on a shared machine.
    let generous = SOCKET_TIMEOUT + Duration::from_millis(BODY_MS) + Duration::from_secs(1);
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
        // 20 connection faults in a row: more than the breaker's threshold (5).
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

        // Breaker open: calls fail over to the body at once; one probe at a time, at most
        // one per PROBE_INTERVAL, pays the timeout. A call that took the socket timeout or
        // more is a probe (nothing else in a fast-failing call waits that long).
        let open_phase = Instant::now();
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    while open_phase.elapsed() < WINDOW {
                        let start = Instant::now();
                        took.push((start, timed_miss(BODY_MS).await));
                    }
                    took
                })
            })
            .collect();
        let mut timed = Vec::new();
        for caller in callers {
            timed.extend(caller.await.expect("no panic"));
        }
        let window = open_phase.elapsed();
        let calls = timed.len();
        // A probe's read fails at the socket timeout, and the breaker then stays open for
        // PROBE_INTERVAL: the next probe cannot start sooner than that after the previous
        // one started plus the timeout. (A timer never fires early, so a late one only
        // makes the measured pause longer; see the margin below for the other side.)
        let mut probes: Vec<Instant> = timed
            .iter()
            .filter(|(_, took)| *took >= SOCKET_TIMEOUT)
            .map(|(start, _)| *start)
            .collect();
        probes.sort();
        let gaps: Vec<Duration> = probes
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0] + SOCKET_TIMEOUT))
            .collect();
        let min_gap = gaps.iter().min().copied();
        let probes = probes.len();
        let mut fast: Vec<Duration> = timed.iter().map(|(_, took)| *took).collect();
        let slowest = fast.iter().max().copied().unwrap_or_default();
        let med = median(&mut fast);
        // One probe per interval at most, plus one at each edge of the window (a probe in
        // flight when it starts, one let through as it ends).
        let max_probes = (window.as_secs_f64() / PROBE_INTERVAL.as_secs_f64()).floor() as usize + 2;
        println!(
            "stalled, breaker open: {CALLERS} callers, {calls} calls in {window:?}, median {med:?}, \
             slowest {slowest:?}, {probes} paid the timeout (probes; bound {max_probes}), \
             shortest pause between a failed probe and the next {min_gap:?}"
        );
        assert!(
            probes >= 1,
            "no probe in {window:?}: the breaker never retries"
        );
        assert!(
            probes <= max_probes,
            "{probes} calls paid the timeout in {window:?}: more than one probe per \
             {PROBE_INTERVAL:?} (bound {max_probes})"
        );
        // 150 ms of margin: the breaker's clock counts whole milliseconds, and on a loaded
        // machine a caller's thread may be descheduled between its timestamp and the
        // breaker's check (which makes the measured pause look shorter).
        assert!(
            min_gap.is_none_or(|gap| gap + Duration::from_millis(150) >= PROBE_INTERVAL),
            "a probe followed a failed one after {min_gap:?}, within the {PROBE_INTERVAL:?} \
             the breaker must stay open"
        );
        assert!(
            med < Duration::from_millis(50),
            "median {med:?}: the breaker should spare calls the {SOCKET_TIMEOUT:?} timeout"
        );
        assert!(
            slowest < generous,
            "slowest {slowest:?} (bound {generous:?})"
        );

        // Health: the circuit is open, and the error names the fault behind it (the
        // breaker's own "bypassed" error says nothing about the cause). A health check may
        // itself be the probe (then its error is the timeout itself); right after that
        // the breaker is open again, so a few checks suffice.
        let timeout_text = format!("Redis did not answer within {SOCKET_TIMEOUT:?}");
        let mut checks = Vec::new();
        let reported = poll_until(Duration::from_secs(5), Duration::ZERO, async || {
            let health = cache.health().await;
            let ok = health.circuit_open
                && health.status == "unhealthy"
                && health.error.as_deref().is_some_and(|e| {
                    e.starts_with("the cache is temporarily bypassed")
                        && e.contains(&format!("; last error: {timeout_text}"))
                });
            checks.push(health);
            ok
        })
        .await;
        let last = checks.last().expect("one health check");
        println!(
            "health while stalled ({} checks): {}",
            checks.len(),
            serde_json::to_string(last).unwrap()
        );
        assert!(
            reported.is_some(),
            "health never said the circuit is open because of the timeout: {checks:#?}"
        );

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
            (health.status, health.circuit_open, health.error.as_deref()),
            ("healthy", false, None),
            "{health:?}"
        );
    });
}
