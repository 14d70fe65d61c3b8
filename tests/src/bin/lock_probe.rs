//! One process of the distributed-lock test (`tests/tests/distributed_lock.rs`): `CALLERS`
//! concurrent calls of one cold decorated function against the Redis in `REDIS_URL`,
//! started at a given Unix time so that several processes start together. The body counts
//! its runs in Redis (`{prefix}:lockstats:runs`), so the test can count them across
//! processes.
//!
//! Usage: `lock_probe CALLERS START_AT_UNIX_MS BODY_MS normal|hang`. `hang`: the body prints
//! `HOLDING` and never finishes (the test kills the process while it holds the lock).
//! Prints one JSON line: `{"values": [...], "elapsed_ms": N, "lock_waits": N}`.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_runtime::cache_result;

static BODY_MS: AtomicU64 = AtomicU64::new(0);
static HANG: AtomicBool = AtomicBool::new(false);

#[cache_result(
    ttl = 60,
    namespace = "lock",
    distributed_lock = "2s",
    name = "lock_probe::cold"
)]
async fn cold(key: String) -> u64 {
    let _ = &key;
    if let Some(cache) = cache_runtime::global() {
        if let Ok(ns) = cache.namespace("lockstats") {
            let _ = ns.increment("runs", 1, None).await;
        }
    }
    if HANG.load(Ordering::SeqCst) {
        println!("HOLDING");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    tokio::time::sleep(Duration::from_millis(BODY_MS.load(Ordering::SeqCst))).await;
    42
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(callers), Some(start_at), Some(body_ms), Some(mode)) = (
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
        args.get(3).and_then(|a| a.parse::<u64>().ok()),
        args.get(4),
    ) else {
        eprintln!("usage: lock_probe CALLERS START_AT_UNIX_MS BODY_MS normal|hang");
        return std::process::ExitCode::FAILURE;
    };
    BODY_MS.store(body_ms, Ordering::SeqCst);
    HANG.store(mode == "hang", Ordering::SeqCst);
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let Some(cache) = cache_runtime::global() else {
            eprintln!("lock_probe: no cache (check REDIS_URL)");
            return std::process::ExitCode::FAILURE;
        };
        if let Err(e) = cache.connect().await {
            eprintln!("lock_probe: {e}");
            return std::process::ExitCode::FAILURE;
        }
        let wait = start_at.saturating_sub(unix_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| tokio::spawn(cold("the-cold-key".to_owned())))
            .collect();
        let mut values = Vec::new();
        for t in tasks {
            match t.await {
                Ok(v) => values.push(v),
                Err(e) => {
                    eprintln!("lock_probe: a caller failed: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        let lock_waits = cache.counters().get("lock").map_or(0, |c| c.lock_waits);
        println!(
            "{{\"values\": {values:?}, \"elapsed_ms\": {}, \"lock_waits\": {lock_waits}}}",
            start.elapsed().as_millis()
        );
        std::process::ExitCode::SUCCESS
    })
}
