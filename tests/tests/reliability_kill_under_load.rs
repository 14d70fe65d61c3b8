//! Killed under load: 64 tasks, at least 10,000 calls, the server killed midway and
//! restarted: every call returns the correct value, none fails, nothing panics; caching
//! resumes after the restart.

mod reliability_support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, CacheConfig};
use cache_tests::{keyspace, RedisServer};
use reliability_support::{block_on, poll_until};
use serde::{Deserialize, Serialize};

const TASKS: usize = 64;
const CALLS: u64 = 12_000;
/// Distinct arguments per function: small enough that keys repeat (hits), large enough
/// that misses keep happening.
const KEYS: u64 = 150;
/// How long caching may take to resume once the load is over (the restart happened
/// earlier, under load).
const RESUME_WITHIN: Duration = Duration::from_secs(5);

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "analytics")]
async fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    tokio::task::yield_now().await;
    x * x
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Position {
    symbol: String,
    quantity: i64,
    history: Vec<u64>,
}

fn position_of(user_id: &str, symbol: &str, n: u64) -> Position {
    Position {
        symbol: format!("{user_id}/{symbol}"),
        quantity: n as i64 * 3 - 7,
        history: (0..n % 16).map(|i| i * n).collect(),
    }
}

static POSITION_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "positions", namespace = "trading")]
async fn position(user_id: &str, symbol: &str, n: u64) -> Result<Position, String> {
    POSITION_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_micros(200)).await;
    Ok(position_of(user_id, symbol, n))
}

/// The slowest call of the load, in microseconds.
static SLOWEST_US: AtomicU64 = AtomicU64::new(0);

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "analytics")]
async fn slow_cube(x: u64) -> u64 {
    SLOW_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    x * x * x
}

fn body_runs() -> usize {
    SQUARE_RUNS.load(SeqCst) + POSITION_RUNS.load(SeqCst)
}

/// One call, checked. Returns a description of what was wrong, if anything.
async fn checked_call(ticket: u64) -> Result<(), String> {
    let x = ticket % KEYS;
    if ticket % 2 == 0 {
        let got = square(x).await;
        if got != x * x {
            return Err(format!("square({x}) = {got}"));
        }
    } else {
        let user = format!("user-{}", x % 8);
        let symbol = format!("SYM{}", x % 19);
        let got = position(&user, &symbol, x).await;
        if got.as_ref() != Ok(&position_of(&user, &symbol, x)) {
            return Err(format!("position({user}, {symbol}, {x}) = {got:?}"));
        }
    }
    Ok(())
}

#[test]
fn redis_killed_and_restarted_under_load() {
    let mut server = RedisServer::plain();
    let config = CacheConfig::builder()
        .url(server.url())
        .connect_timeout(Duration::from_secs(1))
        .socket_timeout(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    let cache = cache_runtime::init(config).expect("init");

    // Single flight over Redis: 64 concurrent calls on a cold key run the body once, and
    // the next call is a hit.
    block_on(async {
        let calls: Vec<_> = (0..64).map(|_| tokio::spawn(slow_cube(3))).collect();
        for call in calls {
            assert_eq!(call.await.expect("no panic"), 27);
        }
        assert_eq!(slow_cube(3).await, 27);
        assert_eq!(SLOW_RUNS.load(SeqCst), 1, "one body run for 65 calls");
    });

    let tickets = Arc::new(AtomicU64::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));

    let (failures, server, timeline) = block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (tickets, restarted, done) = (
                Arc::clone(&tickets),
                Arc::clone(&restarted),
                Arc::clone(&done),
            );
            tasks.spawn(async move {
                let mut failures = Vec::new();
                loop {
                    let ticket = tickets.fetch_add(1, SeqCst);
                    if ticket >= CALLS {
                        return failures;
                    }
                    // The last sixth runs once Redis is back, to show caching resumed.
                    while ticket >= CALLS * 5 / 6 && !restarted.load(SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let call = Instant::now();
                    if let Err(e) = checked_call(ticket).await {
                        failures.push(e);
                    }
                    let us = u64::try_from(call.elapsed().as_micros()).unwrap_or(u64::MAX);
                    SLOWEST_US.fetch_max(us, SeqCst);
                    done.fetch_add(1, SeqCst);
                }
            });
        }

        // The controller: kill at a third of the calls, restart at two thirds, both
        // while the 64 tasks keep calling.
        let start = Instant::now();
        let mut timeline = Vec::new();
        let wait_for = async |n: u64| {
            while done.load(SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        wait_for(CALLS / 3).await;
        let runs_before_kill = body_runs();
        let mut server = tokio::task::spawn_blocking(move || {
            server.stop();
            server
        })
        .await
        .expect("stop");
        timeline.push(format!(
            "killed at {:?} after {} calls ({} body runs so far)",
            start.elapsed(),
            done.load(SeqCst),
            runs_before_kill
        ));
        wait_for(CALLS * 2 / 3).await;
        let server = tokio::task::spawn_blocking(move || {
            server.restart();
            server
        })
        .await
        .expect("restart");
        restarted.store(true, SeqCst);
        let (done_at_restart, runs_at_restart) = (done.load(SeqCst), body_runs());
        timeline.push(format!(
            "restarted at {:?} after {done_at_restart} calls",
            start.elapsed(),
        ));

        let mut failures = Vec::new();
        let mut panics = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(f) => failures.extend(f),
                Err(e) => {
                    panics += 1;
                    failures.push(format!("task panicked: {e}"));
                }
            }
        }
        timeline.push(format!(
            "{} calls done at {:?}, {} body runs in all, {panics} panics; since the restart: {} calls ran {} bodies",
            done.load(SeqCst),
            start.elapsed(),
            body_runs(),
            done.load(SeqCst) - done_at_restart,
            body_runs() - runs_at_restart,
        ));
        (failures, server, timeline)
    });
    for line in &timeline {
        println!("{line}");
    }
    let slowest = Duration::from_micros(SLOWEST_US.load(SeqCst));
    println!("slowest call of the load: {slowest:?} (socket and connect timeouts 1 s)");
    assert!(
        slowest < Duration::from_secs(5),
        "a call took {slowest:?} while Redis was killed and restarted"
    );
    assert_eq!(done.load(SeqCst), CALLS, "every call completed");
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls returned a wrong value or panicked, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Caching resumes: a pass over every key runs no body (each was stored by an earlier
    // pass). Polled, since the circuit breaker probes every 500 ms.
    block_on(async {
        let start = Instant::now();
        let mut passes = Vec::new();
        let resumed = poll_until(RESUME_WITHIN, Duration::from_millis(10), async || {
            let runs = body_runs();
            for ticket in 0..2 * KEYS {
                checked_call(ticket).await.expect("correct value");
            }
            passes.push(body_runs() - runs);
            passes.last() == Some(&0)
        })
        .await;
        println!(
            "after the load: passes over {} keys ran {passes:?} bodies; {:?} since the load ended",
            2 * KEYS,
            start.elapsed()
        );
        assert!(
            resumed.is_some(),
            "caching did not resume within {RESUME_WITHIN:?}: {:?}",
            cache.health().await
        );
        let health = cache.health().await;
        assert_eq!((health.status, health.circuit_open), ("healthy", false));
        println!("counters: {:?}", cache.counters());
    });
    let keys = keyspace(&server);
    assert!(
        keys.contains_key(&square_cache_key(&0).expect("global cache")),
        "stored in the restarted server"
    );
}
