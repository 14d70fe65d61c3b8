//! The spans of cached calls, captured by a `tracing_subscriber` layer of this test's own:
//! `cache.call` per decorated call with OpenTelemetry's field names and its outcome, and
//! its `redis.request` children (one per Redis round trip); keys only in DEBUG events of
//! `cache_runtime::store`, never on a span; never a value or a password.
//!
//! Each test installs its subscriber for its own thread (`with_default` around a
//! current-thread runtime), so tests running at once do not see each other's spans.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_runtime::{cache_result, with_cache, Cache, CacheConfig};
use cache_tests::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Level;
use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const PASSWORD: &str = "spans-test-password";
const VALUE: &str = "the-cached-value-itself";

/// One captured span.
#[derive(Clone, Debug)]
struct Captured {
    id: u64,
    parent: Option<u64>,
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
}

/// One captured event: its fields and the span it happened in.
#[derive(Clone, Debug)]
struct Event {
    span: Option<u64>,
    fields: BTreeMap<String, String>,
}

/// Everything the layer saw: spans (with fields recorded later merged in) and events.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
    events: Arc<Mutex<Vec<Event>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.spans.lock().unwrap().push(Captured {
            id: id.into_u64(),
            parent,
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        // Ids are reused after a span closes: the latest span with this id.
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = ctx.event_span(event).map(|s| s.id().into_u64());
        self.events.lock().unwrap().push(Event { span, fields });
    }
}

impl Capture {
    /// Runs `fut` on a current-thread runtime with this layer (behind `filter`) as the
    /// thread's subscriber.
    fn run<F: std::future::Future>(&self, filter: Targets, fut: F) -> F::Output {
        let subscriber = tracing_subscriber::registry().with(self.clone().with_filter(filter));
        tracing::subscriber::with_default(subscriber, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(fut)
        })
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn spans(&self) -> Vec<Captured> {
        self.spans.lock().unwrap().clone()
    }

    fn calls(&self) -> Vec<Captured> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == "cache.call")
            .collect()
    }

    fn children(&self, parent: &Captured) -> Vec<Captured> {
        self.spans()
            .into_iter()
            .filter(|s| s.parent == Some(parent.id) && s.name == "redis.request")
            .collect()
    }

    /// Every string the layer saw, span and event fields alike.
    fn everything(&self) -> String {
        let spans = self.spans();
        let events = self.events();
        format!("{spans:?}\n{events:?}")
    }
}

#[derive(Default)]
struct Source {
    fail: AtomicBool,
}

#[cache_result(ttl = 1, namespace = "traced", fail_safe = "1h", skip(src))]
async fn lookup(id: String, src: Arc<Source>) -> Result<String, String> {
    let _ = &id;
    if src.fail.load(SeqCst) {
        return Err("source down".to_owned());
    }
    Ok(VALUE.to_owned())
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{} has no {name}: {:?}", span.name, span.fields))
}

fn cache_for(url: String) -> Cache {
    Cache::new(
        CacheConfig::builder()
            .url(url)
            .socket_timeout(Duration::from_secs(2))
            .build()
            .expect("config"),
    )
    .expect("cache")
}

#[test]
fn a_cached_call_and_its_redis_round_trips_are_spans_with_semantic_fields() {
    let server = RedisServer::with_password(PASSWORD);
    let capture = Capture::default();
    let port = server.port().to_string();
    capture.run(Targets::new().with_default(Level::DEBUG), async {
        let cache = cache_for(server.url());
        let src = Arc::new(Source::default());
        with_cache(cache, async {
            // A miss (GET, then the store), a hit, then past the TTL a failing body: stale.
            assert_eq!(lookup("k".into(), src.clone()).await.as_deref(), Ok(VALUE));
            assert_eq!(lookup("k".into(), src.clone()).await.as_deref(), Ok(VALUE));
            tokio::time::sleep(Duration::from_millis(1_150)).await;
            src.fail.store(true, SeqCst);
            assert_eq!(lookup("k".into(), src.clone()).await.as_deref(), Ok(VALUE));
        })
        .await;
    });

    let calls = capture.calls();
    assert_eq!(calls.len(), 3, "one cache.call per call: {calls:#?}");
    let outcomes: Vec<&str> = calls.iter().map(|c| field(c, "cache.outcome")).collect();
    assert_eq!(outcomes, ["miss", "hit", "stale"]);
    for call in &calls {
        assert_eq!(call.target, "cache_runtime::call");
        assert_eq!(field(call, "db.system.name"), "redis");
        assert_eq!(field(call, "db.operation.name"), "GET");
        assert_eq!(field(call, "server.address"), server.host());
        assert_eq!(field(call, "server.port"), port);
        assert_eq!(field(call, "cache.namespace"), "traced");
        assert!(
            field(call, "code.function.name").ends_with("lookup"),
            "{:?}",
            call.fields
        );
        assert!(
            call.fields.values().all(|v| !v.contains(":traced:")),
            "a key on the span: {:?}",
            call.fields
        );
    }

    // The miss: a GET, then the store's pipeline (SET and the invalidation announcement).
    let first = capture.children(&calls[0]);
    let ops: Vec<&str> = first
        .iter()
        .map(|s| field(s, "db.operation.name"))
        .collect();
    assert_eq!(ops.first(), Some(&"GET"), "{first:#?}");
    let store = first
        .iter()
        .find(|s| {
            s.fields
                .get("db.query.summary")
                .is_some_and(|q| q.starts_with("SET"))
        })
        .unwrap_or_else(|| panic!("no SET round trip under the miss: {first:#?}"));
    assert_eq!(field(store, "db.operation.name"), "BATCH");
    assert_eq!(field(store, "otel.name"), "BATCH");
    assert!(
        field(store, "db.operation.batch.size")
            .parse::<u32>()
            .unwrap()
            >= 2
    );
    for rt in &first {
        assert_eq!(rt.target, "cache_runtime::redis");
        assert_eq!(field(rt, "otel.kind"), "client");
        assert_eq!(field(rt, "db.system.name"), "redis");
        assert_eq!(field(rt, "server.address"), server.host());
        assert_eq!(field(rt, "server.port"), port);
        assert!(!rt.fields.contains_key("otel.status_code"), "{rt:?}");
    }
    // The hit: one GET.
    let second = capture.children(&calls[1]);
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(field(&second[0], "otel.name"), "GET");

    let everything = capture.everything();
    assert!(
        !everything.contains(PASSWORD),
        "the password leaked: {everything}"
    );
    assert!(!everything.contains(VALUE), "a value leaked: {everything}");
}

#[test]
fn keys_only_in_debug_events_of_the_store_target() {
    let server = RedisServer::plain();
    let spans_only = Targets::new()
        .with_target("cache_runtime::call", Level::TRACE)
        .with_target("cache_runtime::redis", Level::TRACE);
    let everything = Targets::new().with_default(Level::TRACE);
    for (filter, keys_expected) in [(spans_only, false), (everything, true)] {
        let capture = Capture::default();
        capture.run(filter, async {
            let cache = cache_for(server.url());
            let src = Arc::new(Source::default());
            with_cache(cache, async {
                assert_eq!(lookup("x".into(), src.clone()).await.as_deref(), Ok(VALUE));
                assert_eq!(lookup("x".into(), src.clone()).await.as_deref(), Ok(VALUE));
            })
            .await;
        });
        let calls = capture.calls();
        assert_eq!(calls.len(), 2, "{calls:#?}");
        for call in &calls {
            assert!(
                call.fields.values().all(|v| !v.contains(":traced:")),
                "{call:?}"
            );
            for rt in capture.children(call) {
                assert!(
                    rt.fields.values().all(|v| !v.contains(":traced:")),
                    "{rt:?}"
                );
            }
        }
        let keyed: Vec<Event> = capture
            .events()
            .into_iter()
            .filter(|e| e.fields.get("key").is_some_and(|k| k.contains(":traced:")))
            .collect();
        if keys_expected {
            // The hit's DEBUG event, inside the call's span (an OpenTelemetry layer makes
            // it a span event).
            assert!(
                keyed.iter().any(|e| e.span == Some(calls[1].id)),
                "no keyed event in the hit's span: {keyed:#?}"
            );
        } else {
            assert!(
                keyed.is_empty(),
                "a key with only the span targets on: {keyed:#?}"
            );
        }
        assert!(!capture.everything().contains(VALUE), "a value leaked");
    }
}

#[test]
fn a_failed_read_is_an_error_outcome_and_a_failed_round_trip() {
    let mut server = RedisServer::plain();
    let capture = Capture::default();
    capture.run(Targets::new().with_default(Level::DEBUG), async {
        let cache = cache_for(server.url());
        let src = Arc::new(Source::default());
        with_cache(cache.clone(), async {
            assert_eq!(lookup("x".into(), src.clone()).await.as_deref(), Ok(VALUE));
        })
        .await;
        // Redis goes away: the read fails, the call's outcome is an error.
        server.stop();
        with_cache(cache, async {
            assert_eq!(lookup("y".into(), src.clone()).await.as_deref(), Ok(VALUE));
        })
        .await;
    });
    let calls = capture.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(field(&calls[0], "cache.outcome"), "miss");

    assert_eq!(field(&calls[1], "cache.outcome"), "error");
    let failed = capture.children(&calls[1]);
    let get = failed
        .iter()
        .find(|s| field(s, "db.operation.name") == "GET")
        .unwrap_or_else(|| panic!("no GET under the failed call: {failed:#?}"));
    assert_eq!(field(get, "otel.status_code"), "ERROR");
    assert!(!field(get, "error.type").is_empty());
}

#[test]
fn the_embedded_store_has_a_call_span_and_no_round_trips() {
    let capture = Capture::default();
    capture.run(Targets::new().with_default(Level::DEBUG), async {
        let src = Arc::new(Source::default());
        with_cache(Cache::in_memory(), async {
            assert_eq!(lookup("e".into(), src.clone()).await.as_deref(), Ok(VALUE));
            assert_eq!(lookup("e".into(), src.clone()).await.as_deref(), Ok(VALUE));
        })
        .await;
    });
    let calls = capture.calls();
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(field(call, "db.system.name"), "embedded");
        assert!(!call.fields.contains_key("server.address"));
        assert!(capture.children(call).is_empty());
    }
    assert_eq!(field(&calls[1], "cache.outcome"), "hit");
}

#[test]
fn nothing_is_recorded_at_info() {
    let capture = Capture::default();
    capture.run(Targets::new().with_default(Level::INFO), async {
        let src = Arc::new(Source::default());
        with_cache(Cache::in_memory(), async {
            assert_eq!(lookup("i".into(), src.clone()).await.as_deref(), Ok(VALUE));
        })
        .await;
    });
    assert!(capture.calls().is_empty(), "a DEBUG span at INFO");
}
