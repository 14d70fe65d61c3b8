//! Soak: many calls across 256 tasks with 1% of Redis operations failing (injected) end
//! with every returned value correct and memory flat (peak RSS reported).
//!
//! Size: `SOAK_CALLS` (default [`DEFAULT_CALLS`], which keeps `cargo test --workspace` in a
//! debug build short). The figure, 1,000,000 calls (about a minute in a debug
//! build on 2 shared cores):
//! `SOAK_CALLS=1000000 cargo test -p cache-tests --test reliability_soak -- --nocapture`.

mod reliability_support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, CacheConfig};
use cache_tests::RedisServer;
use reliability_support::{block_on, rss_kib};
use serde::{Deserialize, Serialize};

/// 1,000,000 (the figure) took 54 to 64 s in a debug build on the 2 shared cores
/// of the development machine, too long for every `cargo test`; 200,000 take about 10 s.
const DEFAULT_CALLS: u64 = 200_000;
const TASKS: usize = 256;
/// Distinct arguments per function.
const KEYS: u64 = 4096;
/// Tickets a task takes at once.
const CHUNK: u64 = 64;
/// Allowed RSS growth from the 50% mark to the end.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

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

/// (percent of the calls, elapsed, VmRSS KiB, VmHWM KiB), at 10%, 50% and 100%.
type Mark = (u64, Duration, u64, u64);

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

#[test]
fn soak_with_one_percent_injected_faults() {
    let total = calls();
    let server = RedisServer::plain();
    let config = CacheConfig::builder()
        .url(server.url())
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration");
    let cache = cache_runtime::init(config).expect("init");
    cache_runtime::__private::testing::set_fault_rate(0.01);

    let tickets = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let marks: Arc<Mutex<Vec<Mark>>> = Arc::default();
    let start = Instant::now();
    let (wrong, panics) = block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let (tickets, done, marks) =
                (Arc::clone(&tickets), Arc::clone(&done), Arc::clone(&marks));
            tasks.spawn(async move {
                let mut wrong = Vec::new();
                loop {
                    let first = tickets.fetch_add(CHUNK, SeqCst);
                    if first >= total {
                        return wrong;
                    }
                    let last = (first + CHUNK).min(total);
                    for ticket in first..last {
                        if let Err(e) = checked_call(ticket).await {
                            if wrong.len() < 10 {
                                wrong.push(e);
                            }
                        }
                    }
                    let before = done.fetch_add(last - first, SeqCst);
                    let after = before + (last - first);
                    for pct in [10, 50] {
                        let mark = total * pct / 100;
                        if before < mark && after >= mark {
                            let (rss, hwm) = rss_kib();
                            marks.lock().unwrap_or_else(PoisonError::into_inner).push((
                                pct,
                                start.elapsed(),
                                rss,
                                hwm,
                            ));
                        }
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
        (wrong, panics)
    });
    let elapsed = start.elapsed();
    let (rss, hwm) = rss_kib();
    cache_runtime::__private::testing::set_fault_rate(0.0);
    let mut marks = marks.lock().unwrap_or_else(PoisonError::into_inner).clone();
    marks.push((100, elapsed, rss, hwm));
    marks.sort_by_key(|m| m.0);

    let counters = cache.counters();
    let (reads, errors): (u64, u64) = counters
        .values()
        .fold((0, 0), |(r, e), c| (r + c.hits + c.misses, e + c.errors));
    let bodies = SQUARE_RUNS.load(SeqCst) + PROFILE_RUNS.load(SeqCst) + ROWS_RUNS.load(SeqCst);
    println!(
        "soak: {total} calls, {TASKS} tasks, 1% injected faults: {elapsed:?} ({:.0} calls/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "soak: {bodies} body runs, {reads} reads, {errors} cache errors ({:.2}% of reads)",
        errors as f64 * 100.0 / reads.max(1) as f64
    );
    for (pct, at, rss, hwm) in &marks {
        println!(
            "soak: at {pct:>3}% ({at:?}): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            *rss as f64 / 1024.0,
            *hwm as f64 / 1024.0
        );
    }
    println!("soak: counters {counters:?}");

    assert_eq!(panics, 0, "tasks panicked");
    assert_eq!(done.load(SeqCst), total, "every call returned");
    assert!(wrong.is_empty(), "wrong values, e.g. {wrong:?}");
    assert!(errors > 0, "fault injection had no effect");
    let rss_at = |pct: u64| marks.iter().find(|m| m.0 == pct).map(|m| m.2);
    let (Some(half), Some(end)) = (rss_at(50), rss_at(100)) else {
        panic!("missing RSS marks: {marks:?}");
    };
    assert!(
        end.saturating_sub(half) < MAX_GROWTH_KIB,
        "RSS grew by {} KiB between 50% and 100% of the calls (bound {MAX_GROWTH_KIB} KiB): {marks:?}",
        end.saturating_sub(half)
    );
}
