//! Unreachable at start: the application starts; decorated functions return correct
//! values; health says unhealthy; when Redis comes up, caching resumes within 2 s without
//! a restart.
//!
//! One scenario per binary: decorated functions use the process-global cache.

mod reliability_support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, CacheConfig};
use cache_tests::{keyspace, RedisServer};
use reliability_support::{block_on, poll_until};
use serde::{Deserialize, Serialize};

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "analytics")]
async fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x * x
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    user: String,
    kind: String,
    lines: Vec<u32>,
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "reports")]
async fn report(user_id: &str, kind: &str) -> Report {
    REPORT_RUNS.fetch_add(1, SeqCst);
    Report {
        user: user_id.to_owned(),
        kind: kind.to_owned(),
        lines: (0..kind.len() as u32).collect(),
    }
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "analytics")]
async fn slow_cube(x: u64) -> u64 {
    SLOW_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    x * x * x
}

fn expected_report(user: &str, kind: &str) -> Report {
    Report {
        user: user.to_owned(),
        kind: kind.to_owned(),
        lines: (0..kind.len() as u32).collect(),
    }
}

/// The bound for caching to resume after Redis comes up.
const RESUME_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn unreachable_at_start_then_caching_resumes_without_a_restart() {
    let mut server = RedisServer::plain();
    server.stop();
    let config = CacheConfig::builder()
        .url(server.url())
        .connect_timeout(Duration::from_secs(1))
        .socket_timeout(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    // The application starts although nothing listens on the port.
    let cache = cache_runtime::init(config).expect("init succeeds while Redis is down");

    block_on(async {
        let mut slowest = Duration::ZERO;
        for round in 0..20u64 {
            let x = round % 3;
            let runs = SQUARE_RUNS.load(SeqCst);
            let start = Instant::now();
            assert_eq!(square(x).await, x * x);
            slowest = slowest.max(start.elapsed());
            assert_eq!(
                SQUARE_RUNS.load(SeqCst),
                runs + 1,
                "with Redis down every call runs its body"
            );
            let runs = REPORT_RUNS.load(SeqCst);
            assert_eq!(
                report("u1", "weekly").await,
                expected_report("u1", "weekly")
            );
            assert_eq!(REPORT_RUNS.load(SeqCst), runs + 1);
        }
        println!("Redis down: 40 decorated calls, slowest {slowest:?}");
        assert!(
            slowest < Duration::from_secs(3),
            "a call with Redis down took {slowest:?}"
        );

        // Single flight holds without Redis: 64 concurrent calls on one key, one body.
        let calls: Vec<_> = (0..64).map(|_| tokio::spawn(slow_cube(5))).collect();
        for call in calls {
            assert_eq!(call.await.expect("no panic"), 125);
        }
        assert_eq!(
            SLOW_RUNS.load(SeqCst),
            1,
            "concurrent calls on one key share one body run, Redis or not"
        );

        let health = cache.health().await;
        println!(
            "health while down: {}",
            serde_json::to_string(&health).unwrap()
        );
        assert_eq!(
            (health.status, health.connected),
            ("unhealthy", false),
            "{health:?}"
        );
        assert!(health.error.is_some(), "{health:?}");
    });

    // Redis comes up on the same port; the process is not restarted.
    let restart = Instant::now();
    server.restart();
    println!("redis-server restarted in {:?}", restart.elapsed());

    block_on(async {
        // A call is served from the cache when its body does not run.
        let took = poll_until(RESUME_WITHIN, Duration::from_millis(20), async || {
            let runs = SQUARE_RUNS.load(SeqCst);
            assert_eq!(square(7).await, 49);
            SQUARE_RUNS.load(SeqCst) == runs
        })
        .await;
        let Some(took) = took else {
            panic!(
                "caching did not resume within {RESUME_WITHIN:?} of Redis coming up; health: {:?}",
                cache.health().await
            );
        };
        println!("caching resumed {took:?} after Redis came up (bound {RESUME_WITHIN:?})");

        // User-specific functions too: a miss that stores, then a hit.
        let runs = REPORT_RUNS.load(SeqCst);
        assert_eq!(
            report("u1", "weekly").await,
            expected_report("u1", "weekly")
        );
        assert_eq!(
            report("u1", "weekly").await,
            expected_report("u1", "weekly")
        );
        assert_eq!(
            REPORT_RUNS.load(SeqCst),
            runs + 1,
            "the second call is a hit"
        );

        let health = cache.health().await;
        assert_eq!(
            (health.status, health.connected, health.circuit_open),
            ("healthy", true, false),
            "{health:?}"
        );
    });

    let keys = keyspace(&server);
    let key = square_cache_key(&7).expect("global cache is set");
    assert!(keys.contains_key(&key), "{key} not in {:?}", keys.keys());
    let key = report_cache_key("u1", "weekly").expect("global cache is set");
    assert!(keys.contains_key(&key), "{key} not in {:?}", keys.keys());
}
