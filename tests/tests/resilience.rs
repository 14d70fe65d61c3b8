//! Resilience beyond fail-open, with the same bodies on every backend (the embedded store,
//! plain Redis, Redis with the L1, a Redis Cluster): fail-safe (the last good value when
//! the source fails: an error, a `None`, a panic), soft timeouts (the last good value when
//! the source hangs, the body finishing in the background), and refresh ahead (one
//! background refresh late in the TTL). The distributed lock across processes is in
//! `distributed_lock.rs`.
//!
//! Test names are `<body>::<backend>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster, RedisServer};

/// The source a cached function reads: a database or AI service that can fail, hang or
/// change its answer.
#[derive(Default)]
struct Source {
    value: AtomicU64,
    fail: AtomicBool,
    panic: AtomicBool,
    /// Each call takes this long (0: at once).
    delay_ms: AtomicU64,
    runs: AtomicU64,
    finished: AtomicU64,
}

impl Source {
    fn new(value: u64) -> Arc<Self> {
        let s = Self::default();
        s.value.store(value, SeqCst);
        Arc::new(s)
    }

    async fn read(&self) -> Result<u64, String> {
        self.runs.fetch_add(1, SeqCst);
        let delay = self.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.panic.load(SeqCst) {
            panic!("the source panicked");
        }
        let out = if self.fail.load(SeqCst) {
            Err("database unavailable".to_owned())
        } else {
            Ok(self.value.load(SeqCst))
        };
        self.finished.fetch_add(1, SeqCst);
        out
    }
}

// TTLs are whole seconds: one second, so a test waits a little over it for staleness.
#[cache_result(ttl = 1, namespace = "resil", fail_safe = "1h", skip(source))]
async fn price(symbol: String, source: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    source.read().await
}

#[cache_result(ttl = 1, namespace = "resil", fail_safe = "1h", skip(source))]
async fn maybe_price(symbol: String, source: Arc<Source>) -> Option<u64> {
    let _ = &symbol;
    source.read().await.ok()
}

#[cache_user_specific(ttl = 1, data_type = "report", fail_safe = "1h", skip(source))]
async fn report(user_id: String, source: Arc<Source>) -> Result<u64, String> {
    let _ = &user_id;
    source.read().await
}

#[cache_result(
    ttl = 1,
    namespace = "resil",
    fail_safe = "1h",
    soft_timeout = "200ms",
    skip(source)
)]
async fn slow_price(symbol: String, source: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    source.read().await
}

#[cache_result(ttl = 2, namespace = "resil", refresh_ahead = 0.5, skip(source))]
async fn fresh_price(symbol: String, source: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    source.read().await
}

#[cache_result(ttl = 1, namespace = "resil", skip(source))]
async fn no_fail_safe(symbol: String, source: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    source.read().await
}

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start(ClusterOptions::default()));

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Plain,
    PlainL1,
    Cluster,
}

struct Fixture {
    _server: Option<RedisServer>,
    cache: Cache,
}

impl Fixture {
    fn start(kind: Kind) -> Self {
        let server = matches!(kind, Kind::Plain | Kind::PlainL1).then(RedisServer::plain);
        let builder = CacheConfig::builder();
        let builder = match (kind, &server) {
            (Kind::Embedded, _) => builder,
            (Kind::Cluster, _) => builder.url(CLUSTER.url()),
            (_, Some(s)) => builder.url(s.url()).l1(matches!(kind, Kind::PlainL1)),
            (_, None) => unreachable!("a Redis kind has a server"),
        };
        let cache = Cache::new(
            builder
                .socket_timeout(Duration::from_secs(5))
                .build()
                .expect("valid config"),
        )
        .expect("cache");
        Self {
            _server: server,
            cache,
        }
    }
}

/// A unique key per test and backend (the cluster is shared by this binary's tests).
fn symbol(test: &str, kind: Kind) -> String {
    format!("{test}-{kind:?}-{}", std::process::id())
}

/// Past a one-second TTL.
async fn expire() {
    tokio::time::sleep(Duration::from_millis(1_150)).await;
}

fn counters(cache: &Cache, ns: &str) -> cache_runtime::NamespaceCounters {
    cache.counters().get(ns).copied().unwrap_or_default()
}

async fn fail_safe_serves_the_last_good_value(kind: Kind) {
    let f = Fixture::start(kind);
    let sym = symbol("fail_safe", kind);
    let src = Source::new(10);
    with_cache(f.cache.clone(), async {
        assert_eq!(price(sym.clone(), src.clone()).await, Ok(10));
        expire().await;

        // An error: the stale value, counted.
        src.fail.store(true, SeqCst);
        assert_eq!(price(sym.clone(), src.clone()).await, Ok(10));
        assert_eq!(counters(&f.cache, "resil").stale_served, 1);

        // A panic: the stale value too (the panic is logged, not propagated).
        src.fail.store(false, SeqCst);
        src.panic.store(true, SeqCst);
        assert_eq!(price(sym.clone(), src.clone()).await, Ok(10));
        assert_eq!(counters(&f.cache, "resil").stale_served, 2);

        // The source is back with a new value: never the stale one while the body succeeds.
        src.panic.store(false, SeqCst);
        src.value.store(11, SeqCst);
        assert_eq!(price(sym.clone(), src.clone()).await, Ok(11));
        // And it is fresh again: a hit, no body run.
        let runs = src.runs.load(SeqCst);
        assert_eq!(price(sym.clone(), src.clone()).await, Ok(11));
        assert_eq!(src.runs.load(SeqCst), runs, "a hit");
        assert_eq!(counters(&f.cache, "resil").stale_served, 2);

        // `None` (not cached) is a failure for an Option function.
        let opt = format!("{sym}-opt");
        assert_eq!(maybe_price(opt.clone(), src.clone()).await, Some(11));
        expire().await;
        src.fail.store(true, SeqCst);
        assert_eq!(maybe_price(opt.clone(), src.clone()).await, Some(11));
        assert_eq!(counters(&f.cache, "resil").stale_served, 3);

        // Per user, too.
        src.fail.store(false, SeqCst);
        assert_eq!(report(sym.clone(), src.clone()).await, Ok(11));
        expire().await;
        src.fail.store(true, SeqCst);
        assert_eq!(report(sym.clone(), src.clone()).await, Ok(11));
        assert!(counters(&f.cache, "users").stale_served >= 1);

        // Without fail_safe an expired entry is gone: the error comes through.
        src.fail.store(false, SeqCst);
        let plain = format!("{sym}-plain");
        assert_eq!(no_fail_safe(plain.clone(), src.clone()).await, Ok(11));
        expire().await;
        src.fail.store(true, SeqCst);
        assert_eq!(
            no_fail_safe(plain, src.clone()).await,
            Err("database unavailable".to_owned())
        );
    })
    .await;
}

async fn a_failing_body_with_no_stale_value_fails(kind: Kind) {
    let f = Fixture::start(kind);
    let sym = symbol("no_stale", kind);
    let src = Source::new(1);
    src.fail.store(true, SeqCst);
    with_cache(f.cache.clone(), async {
        assert_eq!(
            price(sym.clone(), src.clone()).await,
            Err("database unavailable".to_owned())
        );
        assert_eq!(counters(&f.cache, "resil").stale_served, 0);
    })
    .await;
}

async fn soft_timeout_answers_a_hanging_source_with_the_stale_value(kind: Kind) {
    let f = Fixture::start(kind);
    let sym = symbol("soft", kind);
    let src = Source::new(20);
    with_cache(f.cache.clone(), async {
        // No stale value yet: the caller waits for the body, however slow.
        src.delay_ms.store(400, SeqCst);
        let start = Instant::now();
        assert_eq!(slow_price(sym.clone(), src.clone()).await, Ok(20));
        assert!(start.elapsed() >= Duration::from_millis(400));
        src.delay_ms.store(0, SeqCst);
        expire().await;

        // The source hangs (3 s) with a new value: the stale value at the soft timeout.
        src.value.store(21, SeqCst);
        src.delay_ms.store(3_000, SeqCst);
        let finished = src.finished.load(SeqCst);
        let start = Instant::now();
        assert_eq!(slow_price(sym.clone(), src.clone()).await, Ok(20));
        let waited = start.elapsed();
        eprintln!("{kind:?}: stale value after {waited:?} (soft timeout 200 ms, body 3 s)");
        assert_eq!(
            src.finished.load(SeqCst),
            finished,
            "returned before the body finished"
        );
        assert_eq!(counters(&f.cache, "resil").stale_served, 1);
        // More callers meanwhile get the stale value too, without another body run.
        let runs = src.runs.load(SeqCst);
        assert_eq!(slow_price(sym.clone(), src.clone()).await, Ok(20));
        assert_eq!(
            src.runs.load(SeqCst),
            runs,
            "the background body is the only run"
        );

        // The body finishes in the background and stores its value.
        let deadline = Instant::now() + Duration::from_secs(10);
        while src.finished.load(SeqCst) == finished && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(src.finished.load(SeqCst) > finished, "the body finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let runs = src.runs.load(SeqCst);
        assert_eq!(slow_price(sym.clone(), src.clone()).await, Ok(21));
        assert_eq!(
            src.runs.load(SeqCst),
            runs,
            "a hit on the background result"
        );
        assert!(counters(&f.cache, "resil").refreshes >= 1);
    })
    .await;
}

async fn refresh_ahead_renews_once_late_in_the_ttl(kind: Kind) {
    let f = Fixture::start(kind);
    let sym = symbol("ahead", kind);
    let src = Source::new(30);
    with_cache(f.cache.clone(), async {
        assert_eq!(fresh_price(sym.clone(), src.clone()).await, Ok(30));
        assert_eq!(src.runs.load(SeqCst), 1);
        // Early in the TTL: plain hits.
        assert_eq!(fresh_price(sym.clone(), src.clone()).await, Ok(30));
        assert_eq!(src.runs.load(SeqCst), 1);

        // Past half of the 2 s TTL: hits return the current value at once and one of them
        // starts a refresh.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        src.value.store(31, SeqCst);
        src.delay_ms.store(300, SeqCst);
        let calls: Vec<_> = (0..20)
            .map(|_| fresh_price(sym.clone(), src.clone()))
            .collect();
        let start = Instant::now();
        for out in futures_join(calls).await {
            assert_eq!(out, Ok(30), "the current value, at once");
        }
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "no caller waited for the refresh"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(src.runs.load(SeqCst), 2, "one refresh for 20 late hits");
        // The refreshed entry is fresh for a whole TTL again (the old one expired by now).
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(fresh_price(sym.clone(), src.clone()).await, Ok(31));
        assert_eq!(src.runs.load(SeqCst), 2);
        assert_eq!(counters(&f.cache, "resil").refreshes, 1);
    })
    .await;
}

/// Awaits every future, concurrently, on this task.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$body(Kind::Embedded).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn plain() {
                    super::$body(Kind::Plain).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn plain_l1() {
                    super::$body(Kind::PlainL1).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$body(Kind::Cluster).await;
                }
            }
        )*
    };
}

on_every_backend!(
    fail_safe_serves_the_last_good_value,
    a_failing_body_with_no_stale_value_fails,
    soft_timeout_answers_a_hanging_source_with_the_stale_value,
    refresh_ahead_renews_once_late_in_the_ttl,
);
