//! `GET /metrics` after real traffic, and the `metrics` facade.
//!
//! - The route (`cache_runtime::http::metrics_routes_for`) is served by axum on a loopback
//!   port, decorated calls make hits, misses, stores, a stale value served by fail-safe,
//!   encode errors (a value over `CACHE_MAX_VALUE_BYTES`) and read errors (a cache whose
//!   Redis port is closed), then the scrape is parsed with `prometheus-parse` and every
//!   figure is compared with the traffic made and with `Cache::counters`.
//! - The facade: a `metrics-util` `DebuggingRecorder`, installed for this test's thread
//!   only (`metrics::with_local_recorder`), receives the same counts and as many latency
//!   observations as the route's histograms count.
//!
//! Nothing here depends on timing beyond waiting past a one-second TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig, NamespaceCounters};
use cache_tests::RedisServer;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A source that counts its runs and can be made to fail.
#[derive(Default)]
struct Source {
    runs: AtomicU64,
    fail: AtomicBool,
}

impl Source {
    fn read(&self) -> Result<u64, String> {
        self.runs.fetch_add(1, SeqCst);
        if self.fail.load(SeqCst) {
            Err("source down".to_owned())
        } else {
            Ok(42)
        }
    }
}

#[cache_result(ttl = 600, namespace = "quotes", skip(src))]
async fn quote(symbol: String, src: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    src.read()
}

#[cache_result(ttl = 1, namespace = "prices", fail_safe = "1h", skip(src))]
async fn price(symbol: String, src: Arc<Source>) -> Result<u64, String> {
    let _ = &symbol;
    src.read()
}

/// Bigger than the tests' `max_value_bytes`: never stored, an encode error each time.
#[cache_result(ttl = 600, namespace = "reports", skip(src))]
async fn report(n: u64, src: Arc<Source>) -> String {
    let _ = src.read();
    "x".repeat(4096 + n as usize)
}

const MAX_VALUE_BYTES: usize = 1024;

/// What one namespace should show after [`traffic`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Expected {
    hits: u64,
    misses: u64,
    stores: u64,
    errors: u64,
    stale_served: u64,
    reads: u64,
    writes: u64,
    bodies: u64,
}

/// The traffic, on `cache`; returns what every namespace should show. `tag` keeps keys
/// apart between runs.
async fn traffic(cache: &Cache, tag: &str) -> HashMap<&'static str, Expected> {
    let src = Arc::new(Source::default());
    with_cache(cache.clone(), async {
        // quotes: A misses then hits twice; B misses once.
        for _ in 0..3 {
            assert_eq!(quote(format!("{tag}-A"), src.clone()).await, Ok(42));
        }
        assert_eq!(quote(format!("{tag}-B"), src.clone()).await, Ok(42));

        // prices: a value, its TTL passes, the source fails: the stale value is served.
        assert_eq!(price(format!("{tag}-P"), src.clone()).await, Ok(42));
        tokio::time::sleep(Duration::from_millis(1_150)).await;
        src.fail.store(true, SeqCst);
        assert_eq!(price(format!("{tag}-P"), src.clone()).await, Ok(42));
        src.fail.store(false, SeqCst);

        // reports: two values too large to store.
        for n in 0..2 {
            assert_eq!(report(n, src.clone()).await.len(), 4096 + n as usize);
        }
    })
    .await;
    HashMap::from([
        (
            "quotes",
            Expected {
                hits: 2,
                misses: 2,
                stores: 2,
                reads: 4,
                writes: 2,
                bodies: 2,
                ..Expected::default()
            },
        ),
        (
            "prices",
            Expected {
                misses: 2,
                stores: 1,
                stale_served: 1,
                reads: 2,
                writes: 1,
                bodies: 2,
                ..Expected::default()
            },
        ),
        (
            "reports",
            Expected {
                misses: 2,
                errors: 2,
                reads: 2,
                bodies: 2,
                ..Expected::default()
            },
        ),
    ])
}

fn cache_on(url: Option<String>) -> Cache {
    let mut builder = CacheConfig::builder()
        .max_value_bytes(MAX_VALUE_BYTES)
        .socket_timeout(Duration::from_secs(2));
    if let Some(url) = url {
        builder = builder.url(url);
    }
    Cache::new(builder.build().expect("valid config")).expect("cache")
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Serves `router` on a loopback port; the server task ends with the test's runtime.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// One HTTP/1.1 GET (`Connection: close`): status line, headers, body.
async fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the response within 30 s")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus text scrape")
}

/// The value of the sample `metric` whose labels include `labels`.
fn sample(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

fn counter(scrape: &Scrape, metric: &str, ns: &str) -> u64 {
    let v = sample(scrape, metric, &[("namespace", ns)])
        .unwrap_or_else(|| panic!("{metric}{{namespace={ns:?}}} missing"));
    v as u64
}

/// A histogram's observations, checked for consistency: cumulative buckets never go down,
/// the `+Inf` bucket equals `_count`, and a sum is there.
fn histogram_count(scrape: &Scrape, metric: &str, ns: &str) -> u64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("namespace") == Some(ns))
        .unwrap_or_else(|| panic!("{metric}{{namespace={ns:?}}} missing"));
    let Value::Histogram(buckets) = &s.value else {
        panic!("{metric} is not a histogram: {:?}", s.value);
    };
    let mut buckets = buckets.clone();
    buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{metric}: cumulative buckets go down: {buckets:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{metric}: no +Inf bucket");
    let count = counter(scrape, &format!("{metric}_count"), ns);
    assert_eq!(last.count as u64, count, "{metric}: +Inf bucket vs _count");
    let sum = sample(scrape, &format!("{metric}_sum"), &[("namespace", ns)]).expect("_sum");
    assert!(
        sum >= 0.0 && (count > 0 || sum == 0.0),
        "{metric}_sum = {sum}"
    );
    count
}

fn check_namespace(scrape: &Scrape, ns: &str, want: Expected, counted: NamespaceCounters) {
    let hits_store = sample(
        scrape,
        "cache_hits_total",
        &[("namespace", ns), ("tier", "store")],
    );
    let hits_l1 = sample(
        scrape,
        "cache_hits_total",
        &[("namespace", ns), ("tier", "l1")],
    );
    let got = Expected {
        hits: (hits_store.expect("store hits") + hits_l1.expect("l1 hits")) as u64,
        misses: counter(scrape, "cache_misses_total", ns),
        stores: counter(scrape, "cache_stores_total", ns),
        errors: counter(scrape, "cache_errors_total", ns),
        stale_served: counter(scrape, "cache_stale_served_total", ns),
        reads: histogram_count(scrape, "cache_read_duration_seconds", ns),
        writes: histogram_count(scrape, "cache_write_duration_seconds", ns),
        bodies: histogram_count(scrape, "cache_body_duration_seconds", ns),
    };
    assert_eq!(got, want, "namespace {ns}: the scrape vs the traffic");
    assert_eq!(hits_l1, Some(0.0), "no L1 configured");
    // And the scrape says what the runtime's own counters say.
    assert_eq!(
        (
            got.hits,
            got.misses,
            got.stores,
            got.errors,
            got.stale_served
        ),
        (
            counted.hits,
            counted.misses,
            counted.stores,
            counted.errors,
            counted.stale_served
        ),
        "namespace {ns}: the scrape vs Cache::counters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_route_reports_the_traffic_made_on_redis() {
    let server = RedisServer::with_password("metrics-test-password");
    let cache = cache_on(Some(server.url()));
    let dead = cache_on(Some(format!("redis://127.0.0.1:{}", closed_port())));
    let router = axum::Router::new()
        .merge(cache_runtime::http::metrics_routes_for(cache.clone()))
        .nest(
            "/dead",
            cache_runtime::http::metrics_routes_for(dead.clone()),
        );
    let addr = serve(router).await;

    let expected = traffic(&cache, "redis").await;
    // Every read on the dead cache fails (refused, then the breaker): counted as errors,
    // the body runs, nothing is written.
    let src = Arc::new(Source::default());
    with_cache(dead.clone(), async {
        for _ in 0..3 {
            assert_eq!(quote("dead".to_owned(), src.clone()).await, Ok(42));
        }
    })
    .await;

    let (status, headers, body) = get(&addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}\n{body}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(
        !body.contains("metrics-test-password"),
        "the password leaked:\n{body}"
    );
    let scrape = parse(&body);
    let counted = cache.counters();
    for (ns, want) in &expected {
        check_namespace(&scrape, ns, *want, counted[*ns]);
    }
    // Documented once per metric.
    for name in [
        "cache_hits_total",
        "cache_misses_total",
        "cache_stores_total",
        "cache_errors_total",
        "cache_stale_served_total",
        "cache_read_duration_seconds",
        "cache_write_duration_seconds",
        "cache_body_duration_seconds",
        "cache_circuit_open",
        "cache_pool_connections",
    ] {
        assert!(scrape.docs.contains_key(name), "no # HELP for {name}");
        assert_eq!(
            body.lines()
                .filter(|l| l.starts_with(&format!("# TYPE {name} ")))
                .count(),
            1,
            "one # TYPE line for {name}"
        );
    }
    // Gauges: Redis is up, at least one connection is open.
    assert_eq!(sample(&scrape, "cache_circuit_open", &[]), Some(0.0));
    let open = sample(&scrape, "cache_pool_connections", &[]).expect("pool gauge");
    let max = sample(&scrape, "cache_pool_max_connections", &[]).expect("pool max gauge");
    assert!(open >= 1.0 && open <= max, "{open} of {max} connections");
    // Labels are namespaces (and the hit tier), never keys.
    assert!(!body.contains("redis-A"), "a key in the scrape:\n{body}");

    // The dead cache: three read errors, three body runs, no store.
    let (status, _, body) = get(&addr, "/dead/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let scrape = parse(&body);
    let want = Expected {
        errors: 3,
        reads: 3,
        bodies: 3,
        ..Expected::default()
    };
    check_namespace(&scrape, "quotes", want, dead.counters()["quotes"]);
    let circuit = sample(&scrape, "cache_circuit_open", &[]).expect("circuit gauge");
    assert!(circuit == 0.0 || circuit == 1.0, "{circuit}");
}

#[tokio::test]
async fn metrics_route_on_the_embedded_store() {
    let cache = cache_on(None);
    let addr = serve(cache_runtime::http::metrics_routes_for(cache.clone())).await;
    let expected = traffic(&cache, "embedded").await;
    let (status, _, body) = get(&addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    let scrape = parse(&body);
    let counted = cache.counters();
    for (ns, want) in &expected {
        check_namespace(&scrape, ns, *want, counted[*ns]);
    }
    assert_eq!(sample(&scrape, "cache_circuit_open", &[]), Some(0.0));
    // No pool for the embedded store: no pool gauge rather than a made-up zero.
    assert_eq!(sample(&scrape, "cache_pool_connections", &[]), None);
}

#[test]
fn the_metrics_facade_receives_the_same_counts() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are registered when a namespace is first used: inside the closure, with the
    // recorder of this thread (a current-thread runtime keeps every task on it).
    let (cache, expected, rendered) = metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let cache = cache_on(None);
            let expected = traffic(&cache, "facade").await;
            cache_runtime::metrics::publish_gauges(&cache);
            let rendered = cache_runtime::metrics::render(&cache);
            (cache, expected, rendered)
        })
    });

    // (metric, namespace, tier) -> value; histograms: observations.
    let mut counters: HashMap<(String, String, String), u64> = HashMap::new();
    let mut observations: HashMap<(String, String), usize> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
    for (key, _unit, _description, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        assert!(
            key.labels()
                .all(|l| matches!(l.key(), "namespace" | "tier")),
            "unexpected label on {key:?}"
        );
        let name = key.name().to_owned();
        match value {
            DebugValue::Counter(n) => {
                counters.insert((name, label("namespace"), label("tier")), n);
            }
            DebugValue::Histogram(values) => {
                assert!(
                    values.iter().all(|v| v.into_inner() >= 0.0),
                    "{name}: a negative duration"
                );
                observations.insert((name, label("namespace")), values.len());
            }
            DebugValue::Gauge(v) => {
                gauges.insert(name, v.into_inner());
            }
        }
    }
    let scrape = parse(&rendered);
    let counted = cache.counters();
    for (ns, want) in &expected {
        let c = |metric: &str, tier: &str| {
            counters
                .get(&(metric.to_owned(), (*ns).to_owned(), tier.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        let h = |metric: &str| {
            observations
                .get(&(metric.to_owned(), (*ns).to_owned()))
                .copied()
                .unwrap_or(0) as u64
        };
        let got = Expected {
            hits: c("cache_hits_total", "store") + c("cache_hits_total", "l1"),
            misses: c("cache_misses_total", ""),
            stores: c("cache_stores_total", ""),
            errors: c("cache_errors_total", ""),
            stale_served: c("cache_stale_served_total", ""),
            reads: h("cache_read_duration_seconds"),
            writes: h("cache_write_duration_seconds"),
            bodies: h("cache_body_duration_seconds"),
        };
        assert_eq!(got, *want, "namespace {ns}: the facade vs the traffic");
        // The same as the route and the runtime's counters.
        check_namespace(&scrape, ns, got, counted[*ns]);
    }
    assert_eq!(gauges.get("cache_circuit_open"), Some(&0.0), "{gauges:?}");
}
