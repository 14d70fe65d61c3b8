//! `CACHE_CODEC=json-plain` against the seed's own Python side: redis-py with
//! `json.dumps`/`json.loads` at the seed's key layout (`tests/python/seed_peer.py`), both
//! directions, byte for byte, on a real Redis.
//!
//! Needs Python 3 with the `redis` package: `./scripts/test.sh` installs it into a venv and
//! sets `CACHE_TESTS_PYTHON`; otherwise `python3` is used, and the test fails saying what to
//! install (it is never skipped).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cache_runtime::service::CacheService;
use cache_runtime::{cache_result, with_cache, Cache, CacheConfig, CodecKind};
use cache_tests::{keyspace, RedisServer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const PREFIX: &str = "tradistry";

fn python() -> String {
    std::env::var("CACHE_TESTS_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/seed_peer.py")
}

/// Runs the Python peer with `ops`; returns its results, one per op.
fn peer(server: &RedisServer, ops: Value) -> Vec<Value> {
    let out = Command::new(python())
        .arg(script())
        .arg(server.url())
        .arg(ops.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3 and `pip install redis`, or run ./scripts/test.sh, which does",
                python()
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python peer failed: {stderr}\n{}",
        if stderr.contains("No module named 'redis'") {
            "install redis-py: `pip install redis` (or run ./scripts/test.sh, which installs it into target/python)"
        } else {
            ""
        }
    );
    serde_json::from_slice(&out.stdout).expect("the peer prints one JSON list")
}

fn cache(server: &RedisServer) -> Cache {
    let config = CacheConfig::from_vars([
        ("REDIS_URL", server.url().as_str()),
        ("CACHE_CODEC", "json-plain"),
        ("REDIS_KEY_PREFIX", PREFIX),
    ])
    .expect("valid config");
    Cache::new(config).expect("cache")
}

fn raw(server: &RedisServer, key: &str) -> Vec<u8> {
    keyspace(server)
        .remove(key)
        .unwrap_or_else(|| panic!("{key} is not in Redis"))
}

// Rust types for the peer's samples, fields in the order Python's dicts have them.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Quote {
    price: f64,
    volume: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Profile {
    name: String,
    age: u32,
    tags: Vec<String>,
    admin: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Unicode {
    text: String,
    empty: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Item {
    k: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extra: Option<Vec<Value>>,
}

/// Reads the sample Python wrote at `custom:{name}` as a `T`, checks it against the text
/// Python wrote, writes it back from Rust at `custom:{name}_rs`, and checks that those
/// bytes are exactly what `json.dumps` wrote.
async fn roundtrip<T>(cache: &Cache, server: &RedisServer, samples: &Value, name: &str)
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = samples[name].as_str().expect("sample text");
    let expected: T = serde_json::from_str(text).expect("the sample decodes as T");
    let ns = cache.namespace("custom").unwrap();
    let got: Option<T> = ns.get(name).await.expect("get");
    assert_eq!(
        got.as_ref(),
        Some(&expected),
        "{name}: Rust reads Python's value"
    );

    let back = format!("{name}_rs");
    ns.set(&back, &expected, None).await.expect("set");
    let bytes = raw(server, &format!("{PREFIX}:custom:{back}"));
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        text,
        "{name}: Rust writes what json.dumps writes"
    );
    // The public encoder says the same.
    assert_eq!(
        CodecKind::JsonPlain.encode(&expected, 1 << 20).unwrap(),
        text.as_bytes()
    );
}

#[tokio::test]
async fn values_cross_both_ways_byte_for_byte() {
    let server = RedisServer::plain();
    let names = [
        "quote",
        "profile",
        "unicode",
        "numbers",
        "nested",
        "text",
        "null",
        "list_of_dicts",
    ];
    let mut ops = vec![json!(["samples"])];
    for name in names {
        ops.push(json!([
            "setex",
            format!("{PREFIX}:custom:{name}"),
            600,
            name
        ]));
    }
    let results = peer(&server, Value::Array(ops));
    let samples = &results[0];

    let cache = cache(&server);
    roundtrip::<Quote>(&cache, &server, samples, "quote").await;
    roundtrip::<Profile>(&cache, &server, samples, "profile").await;
    roundtrip::<Unicode>(&cache, &server, samples, "unicode").await;
    roundtrip::<Vec<serde_json::Number>>(&cache, &server, samples, "numbers").await;
    roundtrip::<Value>(&cache, &server, samples, "nested").await;
    roundtrip::<String>(&cache, &server, samples, "text").await;
    roundtrip::<Option<u32>>(&cache, &server, samples, "null").await;
    roundtrip::<Vec<Item>>(&cache, &server, samples, "list_of_dicts").await;

    // Python reads every value Rust wrote back as the object it started from.
    let checks: Vec<Value> = names
        .iter()
        .map(|n| json!(["equals_sample", format!("{PREFIX}:custom:{n}_rs"), n]))
        .collect();
    let ok = peer(&server, Value::Array(checks));
    assert!(ok.iter().all(|v| v == &json!(true)), "{ok:?}");

    // A Python value of another shape is a miss (counted), not a wrong value: the quote
    // read as a struct it does not fit, and its integer volume read as a float.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct FloatVolume {
        price: f64,
        volume: f64,
    }
    let ns = cache.namespace("custom").unwrap();
    assert_eq!(ns.get::<FloatVolume>("quote").await.unwrap(), None);
    assert!(cache.counters()["custom"].shape_mismatches >= 1);
    // Whatever else reads JSON still can.
    assert!(ns.get::<Value>("quote").await.unwrap().is_some());
}

#[tokio::test]
async fn the_service_api_shares_the_seeds_keys() {
    let server = RedisServer::plain();
    let service = CacheService::new(cache(&server));
    let profile = Profile {
        name: "Ada Lovelace".into(),
        age: 36,
        tags: vec!["math".into(), "poetry".into()],
        admin: false,
    };
    let quote = Quote {
        price: 150.25,
        volume: 1_000_000,
    };
    service
        .cache_user_data("123", "profile", &profile, None)
        .await
        .unwrap();
    service
        .cache_ai_response("123", "abc123", "a reply", None)
        .await
        .unwrap();
    service
        .cache_trading_data(
            "123",
            "AAPL",
            "quote",
            &quote,
            Some(Duration::from_secs(900)),
        )
        .await
        .unwrap();

    // Python finds them at the seed's keys and reads them with json.loads.
    let results = peer(
        &server,
        json!([
            ["get", "tradistry:users:user:123:profile"],
            ["get", "tradistry:ai:user:123:prompt:abc123"],
            ["get", "tradistry:trading:user:123:AAPL:quote"],
            ["ttl", "tradistry:trading:user:123:AAPL:quote"],
            [
                "equals_sample",
                "tradistry:users:user:123:profile",
                "profile"
            ],
            [
                "equals_sample",
                "tradistry:trading:user:123:AAPL:quote",
                "quote"
            ],
            ["setex", "tradistry:users:user:456:profile", 3600, "profile"],
        ]),
    );
    assert_eq!(results[0]["loads"]["name"], "Ada Lovelace");
    assert_eq!(results[1]["loads"], "a reply");
    assert_eq!(results[2]["raw"], r#"{"price": 150.25, "volume": 1000000}"#);
    let ttl = results[3].as_i64().unwrap();
    assert!((890..=900).contains(&ttl), "{ttl}");
    assert_eq!(results[4], true);
    assert_eq!(results[5], true);

    // And Rust reads what Python's service wrote.
    let theirs: Option<Profile> = service.get_user_data("456", "profile").await.unwrap();
    assert_eq!(theirs, Some(profile));
}

#[tokio::test]
async fn counters_are_plain_redis_integers() {
    let server = RedisServer::plain();
    let cache = cache(&server);
    let stats = cache.namespace("stats").unwrap();

    // Rust sets an integer; Python's INCRBY takes it.
    stats.set("visits", &5i64, None).await.unwrap();
    // Python counts; Rust's increment continues, and get reads it.
    let results = peer(
        &server,
        json!([
            ["incrby", "tradistry:stats:visits", 2],
            ["incrby", "tradistry:stats:counter", 40],
        ]),
    );
    assert_eq!(results, [json!(7), json!(40)]);
    assert_eq!(stats.increment("visits", 1, None).await.unwrap(), 8);
    assert_eq!(stats.increment("counter", 2, None).await.unwrap(), 42);
    assert_eq!(stats.get::<u64>("counter").await.unwrap(), Some(42));

    // A counter Rust creates expires (the namespace's TTL, or the one given).
    stats
        .increment("fresh", 1, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let ttl = peer(&server, json!([["ttl", "tradistry:stats:fresh"]]));
    let ttl = ttl[0].as_i64().unwrap();
    assert!((110..=120).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn clearing_a_user_finds_what_python_wrote() {
    let server = RedisServer::plain();
    let service = CacheService::new(cache(&server));
    // Ours, indexed.
    service
        .cache_user_data("123", "settings", "dark", None)
        .await
        .unwrap();
    // Theirs, at the seed's layout, for user 123, a user whose id starts the same, and ids
    // with glob characters (which a pattern must not expand).
    let mut ops = Vec::new();
    for key in [
        "tradistry:users:user:123:profile",
        "tradistry:ai:user:123:prompt:abc",
        "tradistry:trading:user:123:AAPL:quote",
        "tradistry:users:user:1234:profile",
        "tradistry:users:user:12:profile",
        "tradistry:users:user:a*b:profile",
        "tradistry:users:user:aXb:profile",
        "tradistry:users:user:a[b]c:profile",
        "tradistry:ai:user:abc:prompt:x",
        "othersvc:users:user:123:profile",
    ] {
        ops.push(json!(["setex", key, 600, "profile"]));
    }
    peer(&server, Value::Array(ops));

    assert_eq!(service.clear_all_user_cache("123").await.unwrap(), 4);
    assert_eq!(service.clear_all_user_cache("a*b").await.unwrap(), 1);
    // One namespace only.
    assert_eq!(service.clear_user_cache("abc").await.unwrap(), 0);
    assert_eq!(service.clear_user_cache("a[b]c").await.unwrap(), 1);

    let left = peer(&server, json!([["keys", "*"]]));
    assert_eq!(
        left[0],
        json!([
            "othersvc:users:user:123:profile",
            "tradistry:ai:user:abc:prompt:x",
            "tradistry:users:user:1234:profile",
            "tradistry:users:user:12:profile",
            "tradistry:users:user:aXb:profile",
        ])
    );
}

#[cache_result(ttl = 600, namespace = "analytics")]
async fn portfolio_metrics(user_id: String, timeframe: String) -> Value {
    json!({"user": user_id, "timeframe": timeframe, "sharpe": 1.25})
}

#[tokio::test]
async fn python_reads_a_decorated_functions_value() {
    let server = RedisServer::plain();
    let cache = cache(&server);
    let v = with_cache(cache.clone(), portfolio_metrics("123".into(), "1y".into())).await;
    let results = peer(&server, json!([["keys", "tradistry:analytics:*"]]));
    let keys = results[0].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let got = peer(&server, json!([["get", keys[0]]]));
    assert_eq!(got[0]["loads"], v);
}
