//! Soak: many calls across 256 tasks while Redis connections keep failing for real, and
//! 1% of Redis operations fail by injection on top, end with every returned value
//! correct and memory flat.
//!
//! Real faults reach the connection layer (the pool's reconnects, the request timer, the
//! circuit breaker, replies that arrive after their request gave up), unlike injected
//! ones, which are errors returned before anything is sent. The cache reaches Redis
//! through a proxy in this process, and a fault task cycles through:
//!
//! - `CLIENT KILL TYPE normal` from a side connection: the server closes every connection
//!   of the cache (requests in flight fail, the pool reconnects);
//! - the proxy drops every connection (both sides at once);
//! - the proxy stalls every connection for longer than the socket timeout (requests time
//!   out, the breaker opens and probes; the held replies arrive after the stall, to
//!   requests that gave up on them: if one ever answered a later request, a wrong value
//!   would show).
//!
//! Memory: VmRSS after a fault-free warm-up (every key stored once, every task and
//! connection set up) is the baseline; at the end it must be at most twice that, plus
//! [`RSS_SLACK_KIB`].
//!
//! Size: `SOAK_CALLS` calls under faults (default [`DEFAULT_CALLS`], so that this file runs
//! in well under a minute in a debug build on 2 shared cores), e.g.
//! `SOAK_CALLS=1000000 cargo test -p cache-tests --test reliability_soak -- --nocapture`.

mod reliability_support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, CacheConfig};
use cache_tests::{raw_async_client, RedisServer};
use reliability_support::tap::TapProxy;
use reliability_support::{block_on, rss_kib};
use serde::{Deserialize, Serialize};

/// Calls under faults by default (at least [`MIN_CYCLES`] fault cycles run in any case):
/// about 20 s in a debug build on 2 shared cores, 30 s for the whole file.
const DEFAULT_CALLS: u64 = 100_000;
/// Fault-free calls before the memory baseline: most keys of every function (3 functions
/// x [`KEYS`] arguments, spread by the ticket mix) are stored, and many read back.
const WARM_UP_CALLS: u64 = 20_000;
const TASKS: usize = 256;
/// Distinct arguments per function.
const KEYS: u64 = 4096;
/// Tickets a task takes at once.
const CHUNK: u64 = 64;
/// Short, so stalls make requests time out (and open the breaker) often.
const SOCKET_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a stall lasts: longer than the socket timeout.
const STALL: Duration = Duration::from_millis(700);
/// Normal operation between two faults (after the cache recovered from the last one).
const BETWEEN_FAULTS: Duration = Duration::from_secs(1);
/// Fault cycles (kill, drop, stall) at least, however few calls were asked for.
const MIN_CYCLES: u64 = 3;
/// Absolute slack on top of twice the warm RSS (allocator arenas, buffers of connections
/// reopened after the faults).
const RSS_SLACK_KIB: u64 = 4 * 1024;

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "soak")]
async fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x.wrapping_mul(x) ^ 0x5EED
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    user: String,
    n: u64,
    tags: Vec<String>,
}

fn profile_of(user: &str, n: u64) -> Profile {
    Profile {
        user: user.to_owned(),
        n,
        tags: (0..n % 5).map(|i| format!("tag-{i}-{n}")).collect(),
    }
}

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "profiles")]
async fn profile(user_id: &str, n: u64) -> Profile {
    PROFILE_RUNS.fetch_add(1, SeqCst);
    profile_of(user_id, n)
}

fn rows_of(x: u64) -> Result<Vec<u32>, String> {
    if x % 7 == 0 {
        Err(format!("row {x} unavailable"))
    } else {
        Ok((0..(x % 11) as u32).map(|i| i * x as u32).collect())
    }
}

static ROWS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "analytics")]
async fn rows(x: u64) -> Result<Vec<u32>, String> {
    ROWS_RUNS.fetch_add(1, SeqCst);
    rows_of(x)
}

/// One call, checked; the arguments spread over [`KEYS`] per function.
async fn checked_call(ticket: u64) -> Result<(), String> {
    // A cheap mix so consecutive tickets hit different keys.
    let mixed = ticket.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let x = mixed % KEYS;
    match mixed % 3 {
        0 => {
            let got = square(x).await;
            (got == x.wrapping_mul(x) ^ 0x5EED)
                .then_some(())
                .ok_or_else(|| format!("square({x}) = {got}"))
        }
        1 => {
            let user = format!("user-{}", x % 64);
            let got = profile(&user, x).await;
            (got == profile_of(&user, x))
                .then_some(())
                .ok_or_else(|| format!("profile({user}, {x}) = {got:?}"))
        }
        _ => {
            let got = rows(x).await;
            (got == rows_of(x))
                .then_some(())
                .ok_or_else(|| format!("rows({x}) = {got:?}"))
        }
    }
}

fn calls() -> u64 {
    std::env::var("SOAK_CALLS")
        .ok()
        .map(|v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("SOAK_CALLS={v:?} is not a number"))
        })
        .unwrap_or(DEFAULT_CALLS)
}

/// What one batch of calls ended with.
struct Batch {
    elapsed: Duration,
    /// Wrong values (the first few).
    wrong: Vec<String>,
    wrong_count: u64,
    panics: usize,
    done: u64,
    /// VmRSS (KiB) when half the calls were done.
    rss_half: u64,
}

/// Shared by the callers and whoever decides when they stop.
#[derive(Default)]
struct Progress {
    /// Calls returned so far.
    done: AtomicU64,
    /// Callers go on past their total while this is set.
    more: AtomicBool,
}

/// At least `total` checked calls (more while `progress.more` is set) spread over
/// [`TASKS`] tasks, tickets starting at `first_ticket`.
async fn run_calls(first_ticket: u64, total: u64, progress: Arc<Progress>) -> Batch {
    let tickets = Arc::new(AtomicU64::new(0));
    let wrong_count = Arc::new(AtomicU64::new(0));
    let rss_half = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (tickets, progress, wrong_count, rss_half) = (
            Arc::clone(&tickets),
            Arc::clone(&progress),
            Arc::clone(&wrong_count),
            Arc::clone(&rss_half),
        );
        tasks.spawn(async move {
            let mut wrong = Vec::new();
            loop {
                let first = tickets.fetch_add(CHUNK, SeqCst);
                if first >= total && !progress.more.load(SeqCst) {
                    return wrong;
                }
                for ticket in first..first + CHUNK {
                    if let Err(e) = checked_call(first_ticket + ticket).await {
                        wrong_count.fetch_add(1, SeqCst);
                        if wrong.len() < 10 {
                            wrong.push(e);
                        }
                    }
                    // As a request handler would (it awaits its socket between calls).
                    // While the breaker is open, a call with these CPU-only bodies does
                    // no I/O: 256 loops of them, yielding only when their coop budget
                    // runs out (every 128 fail-fast calls, `consume_budget` in
                    // `guard.rs`), make one round of the 2 workers' run queues take about
                    // half a second, longer than the 300 ms socket timeout, so the probe
                    // that would close the breaker times out again and again. This soak
                    // is about connection faults, not about a saturated scheduler.
                    tokio::task::yield_now().await;
                }
                let before = progress.done.fetch_add(CHUNK, SeqCst);
                if before < total / 2 && before + CHUNK >= total / 2 {
                    rss_half.store(rss_kib().0, SeqCst);
                }
            }
        });
    }
    let mut wrong = Vec::new();
    let mut panics = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(w) => wrong.extend(w),
            Err(_) => panics += 1,
        }
    }
    wrong.truncate(10);
    Batch {
        elapsed: start.elapsed(),
        wrong,
        wrong_count: wrong_count.load(SeqCst),
        panics,
        done: progress.done.load(SeqCst),
        rss_half: rss_half.load(SeqCst),
    }
}

// ------------------------------------------------------------- what the cache logged

/// Counts the runtime's warnings (and the breaker's info events) by what they say,
/// without keeping them (memory must stay flat) and with debug events off (they would
/// cost a clock read per call).
#[derive(Default)]
struct Tally {
    /// A read or write failed because the request timer expired.
    timeouts: AtomicU64,
    /// A read or write failed because a connection was refused, reset or closed.
    unreachable: AtomicU64,
    /// An injected fault.
    injected: AtomicU64,
    /// The breaker opened.
    breaker_opened: AtomicU64,
    /// The breaker closed again.
    breaker_closed: AtomicU64,
    /// Anything else at warning level or above (the first few kept).
    other: AtomicU64,
    other_examples: Mutex<Vec<String>>,
}

struct Counting(Arc<Tally>);

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Counting {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::WARN
            || (*meta.level() <= tracing::Level::INFO
                && meta.target() == "cache_runtime::connection")
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        let t = &self.0;
        let counter = if text.0.contains("Redis keeps failing") {
            &t.breaker_opened
        } else if text.0.contains("Redis answers again") {
            &t.breaker_closed
        } else if *event.metadata().level() > tracing::Level::WARN {
            return;
        } else if text.0.contains("injected fault") {
            &t.injected
        } else if text.0.contains("did not answer within") {
            &t.timeouts
        } else if text.0.contains("cannot reach Redis") {
            &t.unreachable
        } else {
            let mut examples = t
                .other_examples
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if examples.len() < 5 {
                examples.push(text.0);
            }
            &t.other
        };
        counter.fetch_add(1, SeqCst);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ------------------------------------------------------------------------- faults

#[derive(Default, Debug)]
struct Faults {
    /// Complete cycles (kill, drop, stall).
    cycles: u64,
    /// `CLIENT KILL TYPE normal` runs, and connections they closed.
    kills: u64,
    killed: u64,
    /// Proxy drops, and connections they closed.
    drops: u64,
    dropped: u64,
    /// Proxy stalls.
    stalls: u64,
    /// The longest the cache took to close its breaker again after a fault.
    slowest_recovery: Duration,
}

/// After a fault: waits until the breaker is closed again (as many "closed" events as
/// "opened" ones), then lets the cache work normally for [`BETWEEN_FAULTS`], so every fault
/// hits a cache that talks to Redis (not one that bypasses it).
async fn recover(tally: &Tally, faults: &mut Faults) {
    let start = Instant::now();
    let closed = reliability_support::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        async || tally.breaker_opened.load(SeqCst) == tally.breaker_closed.load(SeqCst),
    )
    .await;
    assert!(
        closed.is_some(),
        "the breaker stayed open 10 s after a fault: opened {} closed {} timeouts {} unreachable {} injected {} other {} {:?}",
        tally.breaker_opened.load(SeqCst),
        tally.breaker_closed.load(SeqCst),
        tally.timeouts.load(SeqCst),
        tally.unreachable.load(SeqCst),
        tally.injected.load(SeqCst),
        tally.other.load(SeqCst),
        tally.other_examples.lock().unwrap_or_else(PoisonError::into_inner)
    );
    faults.slowest_recovery = faults.slowest_recovery.max(start.elapsed());
    tokio::time::sleep(BETWEEN_FAULTS).await;
}

/// Cycles kill, drop, stall until `total` calls are done and at least [`MIN_CYCLES`]
/// cycles ran, then tells the callers to stop.
async fn inject_faults(
    server: &RedisServer,
    proxy: &TapProxy,
    tally: &Tally,
    total: u64,
    progress: &Progress,
) -> Faults {
    let mut side = raw_async_client(server).await;
    let mut faults = Faults::default();
    tokio::time::sleep(BETWEEN_FAULTS).await;
    while faults.cycles < MIN_CYCLES || progress.done.load(SeqCst) < total {
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut side)
            .await
            .expect("CLIENT KILL from the side connection");
        faults.kills += 1;
        faults.killed += killed;
        recover(tally, &mut faults).await;

        faults.dropped += proxy.drop_all() as u64;
        faults.drops += 1;
        recover(tally, &mut faults).await;

        proxy.stall_all();
        faults.stalls += 1;
        tokio::time::sleep(STALL).await;
        proxy.forward_all();
        recover(tally, &mut faults).await;
        faults.cycles += 1;
    }
    progress.more.store(false, SeqCst);
    faults
}

#[test]
fn soak_with_connection_faults_and_injected_errors() {
    let total = calls();
    let tally = Arc::new(Tally::default());
    tracing::subscriber::set_global_default(Counting(Arc::clone(&tally)))
        .expect("no other subscriber in this binary");
    let server = RedisServer::plain();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = block_on(TapProxy::start("127.0.0.1:0", upstream));
    let config = CacheConfig::builder()
        .url(format!("redis://{}", proxy.addr()))
        .connect_timeout(Duration::from_secs(1))
        .socket_timeout(SOCKET_TIMEOUT)
        .build()
        .expect("valid configuration");
    let cache = cache_runtime::init(config).expect("init");

    // Warm-up, no faults: the baseline.
    let warm = block_on(run_calls(0, WARM_UP_CALLS, Arc::default()));
    assert_eq!(
        (warm.panics, warm.wrong_count),
        (0, 0),
        "warm-up: {:?}",
        warm.wrong
    );
    assert!(warm.done >= WARM_UP_CALLS);
    let bodies_warm = SQUARE_RUNS.load(SeqCst) + PROFILE_RUNS.load(SeqCst) + ROWS_RUNS.load(SeqCst);
    let (warm_rss, _) = rss_kib();
    let connections_warm = proxy.accepted();
    println!(
        "soak: warm-up {WARM_UP_CALLS} calls in {:?}, {bodies_warm} body runs, {connections_warm} \
         connections; VmRSS {:.1} MiB",
        warm.elapsed,
        warm_rss as f64 / 1024.0
    );

    // Under faults.
    cache_runtime::__private::testing::set_fault_rate(0.01);
    let progress = Arc::new(Progress {
        more: AtomicBool::new(true),
        ..Progress::default()
    });
    let (batch, faults) = block_on(async {
        tokio::join!(
            run_calls(warm.done, total, Arc::clone(&progress)),
            inject_faults(&server, &proxy, &tally, total, &progress)
        )
    });
    cache_runtime::__private::testing::set_fault_rate(0.0);
    let (end_rss, hwm) = rss_kib();

    let counters = cache.counters();
    let (reads, errors): (u64, u64) = counters
        .values()
        .fold((0, 0), |(r, e), c| (r + c.hits + c.misses, e + c.errors));
    let bodies = SQUARE_RUNS.load(SeqCst) + PROFILE_RUNS.load(SeqCst) + ROWS_RUNS.load(SeqCst);
    let get = |c: &AtomicU64| c.load(SeqCst);
    println!(
        "soak: {} calls, {TASKS} tasks, connection faults + 1% injected: {:?} ({:.0} calls/s)",
        batch.done,
        batch.elapsed,
        batch.done as f64 / batch.elapsed.as_secs_f64()
    );
    println!(
        "soak: faults {faults:?}; {} connections opened since the warm-up",
        proxy.accepted() - connections_warm
    );
    println!(
        "soak: logged {} timeouts, {} unreachable, {} injected, breaker opened {} / closed {} \
         times, {} other {:?}",
        get(&tally.timeouts),
        get(&tally.unreachable),
        get(&tally.injected),
        get(&tally.breaker_opened),
        get(&tally.breaker_closed),
        get(&tally.other),
        tally
            .other_examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    );
    println!(
        "soak: {} body runs under faults, {reads} reads, {errors} cache errors ({:.2}% of reads)",
        bodies - bodies_warm,
        errors as f64 * 100.0 / reads.max(1) as f64
    );
    let rss_bound = 2 * warm_rss + RSS_SLACK_KIB;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "soak: VmRSS warm {:.1} MiB, at 50% {:.1} MiB, end {:.1} MiB (bound {:.1} MiB), \
         peak {:.1} MiB",
        mib(warm_rss),
        mib(batch.rss_half),
        mib(end_rss),
        mib(rss_bound),
        mib(hwm)
    );

    assert_eq!(batch.panics, 0, "tasks panicked");
    assert!(
        batch.done >= total,
        "{} calls of {total} returned",
        batch.done
    );
    assert_eq!(batch.wrong_count, 0, "wrong values, e.g. {:?}", batch.wrong);
    // The faults happened, and reached the connection layer.
    assert!(faults.killed > 0, "CLIENT KILL closed nothing: {faults:?}");
    assert!(faults.dropped > 0, "the proxy dropped nothing: {faults:?}");
    assert!(faults.stalls > 0, "{faults:?}");
    assert!(
        proxy.accepted() > connections_warm,
        "the cache never reconnected after its connections were closed"
    );
    assert!(
        get(&tally.timeouts) > 0,
        "no request timed out during the stalls"
    );
    assert!(
        get(&tally.unreachable) > 0,
        "no request failed on a closed connection"
    );
    assert!(get(&tally.breaker_opened) > 0, "the breaker never opened");
    assert!(
        get(&tally.breaker_closed) > 0,
        "the breaker never closed again"
    );
    assert!(get(&tally.injected) > 0, "fault injection had no effect");
    assert!(errors > 0, "no cache errors counted");
    assert!(
        end_rss <= rss_bound,
        "VmRSS grew from {warm_rss} KiB after the warm-up to {end_rss} KiB (bound {rss_bound} KiB)"
    );

    // Redis is fine again: the cache recovers and serves what it stored.
    block_on(async {
        let healthy = reliability_support::poll_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || cache.health().await.status == "healthy",
        )
        .await;
        assert!(healthy.is_some(), "{:?}", cache.health().await);
    });
}
