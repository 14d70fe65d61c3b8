//! Hostile input: user ids, symbols and data types containing `:` `*` `?` `[` `]` `\`
//! `{` `}`, spaces, newlines, NUL, non-ASCII, the empty string and 10 KB strings never make
//! a store, get or clear read, overwrite or delete another user's or namespace's keys
//! (asserted on the whole keyspace, set members included, before and after). Corrupt
//! values at our keys are misses, overwritten by the next store, never a panic or a wrong
//! value. A value over the size limit is not stored and the call still returns its result.
//! A property test checks isolation and round trips over random ids and values.
//!
//! The tests share the global cache, which reaches Redis through a proxy in this process;
//! each test points the proxy at its own fresh server and they take turns ([`LOCK`]), so
//! every keyspace assertion sees only its own test's keys.

mod reliability_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use cache_runtime::key::escape_segment;
use cache_runtime::service::{prompt_hash, CacheService};
use cache_runtime::{cache_result, cache_user_specific, Cache, CacheConfig, CodecKind};
use cache_tests::{raw_client, RedisServer};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use reliability_support::{block_on, poll_until, Proxy};
use serde::{Deserialize, Serialize};

const MAX_VALUE_BYTES: usize = 64 * 1024;
const PREFIX: &str = "tradistry";

static LOCK: Mutex<()> = Mutex::new(());
static PROXY: OnceLock<Proxy> = OnceLock::new();

// ------------------------------------------------------------ decorated functions

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    user: String,
    kind: String,
    lines: Vec<u32>,
}

fn report_of(user: &str, kind: &str) -> Report {
    Report {
        user: user.to_owned(),
        kind: kind.to_owned(),
        lines: vec![user.len() as u32, kind.len() as u32],
    }
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "reports")]
async fn report(user_id: &str, kind: &str) -> Report {
    REPORT_RUNS.fetch_add(1, SeqCst);
    report_of(user_id, kind)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Quote {
    symbol: String,
    price: u64,
}

fn quote_of(symbol: &str) -> Quote {
    Quote {
        symbol: symbol.to_owned(),
        price: symbol.len() as u64 * 100 + 7,
    }
}

static QUOTE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "trading")]
async fn quote(symbol: &str) -> Quote {
    QUOTE_RUNS.fetch_add(1, SeqCst);
    quote_of(symbol)
}

static ECHO_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "blobs", namespace = "ai")]
async fn echo(user_id: &str, payload: Vec<u8>) -> (String, Vec<u8>) {
    ECHO_RUNS.fetch_add(1, SeqCst);
    (user_id.to_owned(), payload)
}

static BIG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 600, namespace = "big")]
async fn big(n: usize) -> Vec<u8> {
    BIG_RUNS.fetch_add(1, SeqCst);
    (0..n).map(|i| (i % 251) as u8).collect()
}

static USER_BIG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 600, data_type = "big")]
async fn user_big(user_id: &str, n: usize) -> Vec<u8> {
    USER_BIG_RUNS.fetch_add(1, SeqCst);
    let mut v = user_id.as_bytes().to_vec();
    v.resize(n, 0xAB);
    v
}

// ------------------------------------------------------------------------ set-up

/// Serialises the tests, points the proxy (and so the global cache) at `server` and waits
/// until the cache hits there.
fn setup(server: &RedisServer) -> MutexGuard<'static, ()> {
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = PROXY.get_or_init(|| {
        let proxy = block_on(Proxy::start("127.0.0.1:0", upstream));
        let config = CacheConfig::builder()
            .url(format!("redis://{}", proxy.addr()))
            .socket_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .max_value_bytes(MAX_VALUE_BYTES)
            .build()
            .expect("valid configuration");
        cache_runtime::init(config).expect("init");
        proxy
    });
    proxy.set_upstream(upstream);
    block_on(async {
        let probe = format!("probe-{}", server.port());
        let ok = poll_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || {
                let runs = QUOTE_RUNS.load(SeqCst);
                assert_eq!(quote(&probe).await, quote_of(&probe));
                QUOTE_RUNS.load(SeqCst) == runs
            },
        )
        .await;
        assert!(ok.is_some(), "the cache does not reach the test's server");
    });
    guard
}

fn cache() -> &'static Cache {
    cache_runtime::global().expect("global cache")
}

/// Every key with a full rendering of its value: strings as bytes, sets, hashes and lists
/// with their members (sorted where unordered). Keys as raw bytes.
type Snapshot = BTreeMap<Vec<u8>, Vec<u8>>;

fn snapshot(server: &RedisServer) -> Snapshot {
    let mut con = raw_client(server);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut out = Snapshot::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).expect("TYPE");
        let join = |tag: &str, mut items: Vec<Vec<u8>>, sort: bool| {
            if sort {
                items.sort();
            }
            let mut v = tag.as_bytes().to_vec();
            for item in items {
                v.extend_from_slice(&(item.len() as u64).to_le_bytes());
                v.extend(item);
            }
            v
        };
        let value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query::<Option<Vec<u8>>>(&mut con)
                .expect("GET"),
            "set" => Some(join(
                "set:",
                redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query(&mut con)
                    .expect("SMEMBERS"),
                true,
            )),
            // User indexes: members only (scores are expiry times, which move).
            "zset" => Some(join(
                "zset:",
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut con)
                    .expect("ZRANGE"),
                true,
            )),
            "hash" => Some(join(
                "hash:",
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query(&mut con)
                    .expect("HGETALL"),
                false,
            )),
            "list" => Some(join(
                "list:",
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut con)
                    .expect("LRANGE"),
                false,
            )),
            "none" => None,
            other => Some(other.as_bytes().to_vec()),
        };
        if let Some(value) = value {
            out.insert(key, value);
        }
    }
    out
}

#[derive(Debug, Default)]
struct Diff {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    changed: BTreeSet<String>,
}

fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let show = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let mut d = Diff::default();
    for (k, v) in after {
        match before.get(k) {
            None => {
                d.added.insert(show(k));
            }
            Some(old) if old != v => {
                d.changed.insert(show(k));
            }
            Some(_) => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            d.removed.insert(show(k));
        }
    }
    d
}

/// Members of a user index (a sorted set scored by expiry).
fn set_members(server: &RedisServer, key: &str) -> BTreeSet<String> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(&mut raw_client(server))
        .expect("ZRANGE")
}

fn raw_set(server: &RedisServer, key: &str, value: &[u8]) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .exec(&mut raw_client(server))
        .expect("SET");
}

/// The hostile strings of the issue, alone and in combination.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        ":",
        "*",
        "?",
        "[",
        "]",
        "\\",
        "{",
        "}",
        " ",
        "\n",
        "\0",
        "",
        "a*",
        "a:b",
        "a?",
        "[a]",
        "a b",
        "a\\",
        "{a}",
        "user:a",
        "a\nb",
        "a\0b",
        "%2A",
        "a%3Ab",
        "é",
        "日本語",
        "🦀",
        "*:*",
        "__index",
        "{user:a}",
        "a",
        "ab",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    v.push("k".repeat(10 * 1024));
    v.push(":*?[]\\{} \n\0é".repeat(10 * 1024 / 14));
    v
}

fn short(s: &str) -> String {
    if s.len() > 40 {
        let head: String = s.chars().take(20).collect();
        format!("{head:?}…({} bytes)", s.len())
    } else {
        format!("{s:?}")
    }
}

// ------------------------------------------------------------------------- tests

#[test]
fn hostile_ids_symbols_and_data_types_never_touch_other_keys() {
    let server = RedisServer::plain();
    let _guard = setup(&server);
    let ids = hostile();
    let n = ids.len();
    let keys = cache().keys();
    let service = CacheService::new(cache().clone());

    block_on(async {
        // Namespaces are validated, never escaped: a hostile one is refused.
        for bad in ["a*", "a:b", "", "A", "a b", "日本"] {
            assert!(
                cache().namespace(bad).is_err(),
                "namespace {bad:?} accepted"
            );
        }
        // Another user's data and keys that a glob or a forged segment would reach.
        service
            .cache_user_data("victim", "profile", "victim profile", None)
            .await
            .unwrap();
        assert_eq!(
            report("victim", "weekly").await,
            report_of("victim", "weekly")
        );
        for k in [
            "tradistry:users:user:a",
            "tradistry:users:user:*",
            "tradistry:users:user:",
            "tradistry:users:user:a:b",
            "tradistry:users:{user:a}",
            "tradistry:users:{user:*}",
            "tradistry:users:{user:}",
            "tradistry:users:{user:a}:b",
            "tradistry:users:{user:a}b:c",
            "tradistry:trading:*",
            "tradistry:__index:{user:a}x",
            "other",
        ] {
            raw_set(&server, k, b"foreign");
        }
    });
    let foreign = snapshot(&server);

    // Stores: each id's keys are new and its own; nothing else changes.
    let mut owned: Vec<BTreeSet<String>> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let data_type = &ids[(i + 1) % n];
        let symbol = &ids[(i + 2) % n];
        let kind = &ids[(i + 3) % n];
        let before = snapshot(&server);
        block_on(async {
            let value = format!("value of {id}/{data_type}");
            service
                .cache_user_data(id, data_type, &value, None)
                .await
                .unwrap();
            service
                .cache_trading_data(id, symbol, data_type, &value, None)
                .await
                .unwrap();
            service
                .cache_ai_response(id, &prompt_hash(id), &value, None)
                .await
                .unwrap();
            assert_eq!(report(id, kind).await, report_of(id, kind));
            assert_eq!(quote(symbol).await, quote_of(symbol));
        });
        let after = snapshot(&server);
        let d = diff(&before, &after);
        let index = keys.user_index(id);
        let user_part = format!(":{{user:{}}}:", escape_segment(id));
        let quote_key = quote_cache_key(symbol).unwrap();
        assert!(
            d.removed.is_empty(),
            "id {}: removed {:?}",
            short(id),
            d.removed
        );
        assert!(
            d.changed.iter().all(|k| *k == index || *k == quote_key),
            "id {}: changed {:?}",
            short(id),
            d.changed
        );
        let mine: BTreeSet<String> = d
            .added
            .iter()
            .filter(|k| **k != quote_key)
            .cloned()
            .collect();
        for k in &mine {
            assert!(
                *k == index || (k.starts_with(PREFIX) && k.contains(&user_part)),
                "id {}: created {}",
                short(id),
                short(k)
            );
        }
        // Three service entries, one decorated entry and the user's index (unless an
        // earlier id's stores made it already: ids are distinct, so never).
        assert_eq!(mine.len(), 5, "id {}: created {:?}", short(id), mine);
        let expected: BTreeSet<String> = [
            keys.user_scoped("users", id, &[data_type]),
            keys.user_scoped("trading", id, &[symbol, data_type]),
            keys.user_scoped("ai", id, &["prompt", &prompt_hash(id)]),
            report_cache_key(id, kind).unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            set_members(&server, &index),
            expected,
            "index of {}",
            short(id)
        );
        for other in &owned {
            assert!(other.is_disjoint(&mine), "id {} shares keys", short(id));
        }
        owned.push(mine);

        // Gets read, never write.
        let before = snapshot(&server);
        block_on(async {
            let value = format!("value of {id}/{data_type}");
            assert_eq!(
                service
                    .get_user_data::<String>(id, data_type)
                    .await
                    .unwrap(),
                Some(value.clone())
            );
            assert_eq!(
                service
                    .get_trading_data::<String>(id, symbol, data_type)
                    .await
                    .unwrap(),
                Some(value.clone())
            );
            assert_eq!(
                service
                    .get_ai_response::<String>(id, &prompt_hash(id))
                    .await
                    .unwrap(),
                Some(value)
            );
            let runs = REPORT_RUNS.load(SeqCst);
            assert_eq!(report(id, kind).await, report_of(id, kind));
            assert_eq!(REPORT_RUNS.load(SeqCst), runs, "a hit");
        });
        assert_eq!(snapshot(&server), before, "a get changed the keyspace");
    }
    println!("{n} hostile ids: {} keys in all", snapshot(&server).len());

    // Clears: each removes exactly that id's keys (index included), nothing else.
    for (i, id) in ids.iter().enumerate() {
        let before = snapshot(&server);
        let cleared = block_on(service.clear_all_user_cache(id)).unwrap();
        let after = snapshot(&server);
        let d = diff(&before, &after);
        assert_eq!(cleared, 4, "id {}", short(id));
        assert!(
            d.added.is_empty() && d.changed.is_empty(),
            "id {}: {d:?}",
            short(id)
        );
        assert_eq!(d.removed, owned[i], "id {}", short(id));
        // Later ids' entries are all still served.
        block_on(async {
            for (j, other) in ids.iter().enumerate().skip(i + 1).step_by(3) {
                let data_type = &ids[(j + 1) % n];
                assert_eq!(
                    service
                        .get_user_data::<String>(other, data_type)
                        .await
                        .unwrap(),
                    Some(format!("value of {other}/{data_type}")),
                    "after clearing {}, {}",
                    short(id),
                    short(other)
                );
            }
        });
    }
    // Left: the foreign keys, the victim's entries and the (user-less) quotes.
    let left = snapshot(&server);
    let d = diff(&foreign, &left);
    assert!(d.removed.is_empty() && d.changed.is_empty(), "{d:?}");
    let quote_prefix = format!("{PREFIX}:trading:");
    assert!(
        d.added
            .iter()
            .all(|k| k.starts_with(&quote_prefix) && !k.contains(":{user:")),
        "{:?}",
        d.added
    );
    block_on(async {
        assert_eq!(
            service
                .get_user_data::<String>("victim", "profile")
                .await
                .unwrap()
                .as_deref(),
            Some("victim profile")
        );
    });
}

/// Values written at our keys by someone else.
fn corruptions(valid: &[u8], wrong_value_json: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut noise = Vec::with_capacity(300);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let mut trailing = valid.to_vec();
    trailing.push(0);
    vec![
        ("random bytes", noise),
        ("empty string", Vec::new()),
        (
            "the other codec (JSON), another value",
            wrong_value_json.to_vec(),
        ),
        (
            "another type (bincode u64)",
            CodecKind::Bincode.encode(&42u64, 1024).unwrap(),
        ),
        (
            "another type (bincode string)",
            CodecKind::Bincode.encode("mallory", 1024).unwrap(),
        ),
        ("truncated envelope", valid[..valid.len() - 3].to_vec()),
        ("trailing byte", trailing),
        (
            "huge length claim",
            [
                &valid[..10],
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, b'x'][..],
            ]
            .concat(),
        ),
        (
            "unknown envelope version",
            [&[0xC3u8][..], &valid[1..]].concat(),
        ),
        (
            "the envelope of another shape",
            [&valid[..2], &[0u8; 8][..], &valid[10..]].concat(),
        ),
        ("plain text", b"{\"user\":\"mallory\"}".to_vec()),
    ]
}

/// Writes a corrupt value at a key.
type Corrupt = Box<dyn Fn(&mut redis::Connection)>;

#[test]
fn corrupt_values_are_misses_overwritten_by_the_next_store() {
    let server = RedisServer::plain();
    let _guard = setup(&server);
    let (user, kind) = ("u:1*", "weekly [x]");
    let key = report_cache_key(user, kind).unwrap();
    let index = cache().keys().user_index(user);
    let mallory = Report {
        user: "mallory".into(),
        kind: kind.into(),
        lines: vec![6, 6, 6],
    };
    let valid = CodecKind::Bincode
        .encode(&report_of(user, kind), MAX_VALUE_BYTES)
        .unwrap();
    let json = CodecKind::Json.encode(&mallory, MAX_VALUE_BYTES).unwrap();
    block_on(async {
        assert_eq!(
            report("bystander", kind).await,
            report_of("bystander", kind)
        );
        assert_eq!(report(user, kind).await, report_of(user, kind));
    });

    let mut cases: Vec<(&str, Corrupt)> = Vec::new();
    for (name, bytes) in corruptions(&valid, &json) {
        let key = key.clone();
        cases.push((
            name,
            Box::new(move |con| {
                redis::cmd("SET").arg(&key).arg(&bytes).exec(con).unwrap();
            }),
        ));
    }
    for (name, cmd) in [
        ("a Redis hash", "HSET"),
        ("a Redis list", "RPUSH"),
        ("a Redis set", "SADD"),
    ] {
        let key = key.clone();
        cases.push((
            name,
            Box::new(move |con| {
                redis::cmd("DEL").arg(&key).exec(con).unwrap();
                let mut c = redis::cmd(cmd);
                c.arg(&key);
                if cmd == "HSET" {
                    c.arg("user");
                }
                c.arg("mallory").exec(con).unwrap();
            }),
        ));
    }

    let mut con = raw_client(&server);
    for (name, corrupt) in &cases {
        corrupt(&mut con);
        let before = snapshot(&server);
        let runs = REPORT_RUNS.load(SeqCst);
        let got = block_on(report(user, kind));
        assert_eq!(got, report_of(user, kind), "{name}: a wrong value");
        assert_eq!(REPORT_RUNS.load(SeqCst), runs + 1, "{name}: not a miss");
        let after = snapshot(&server);
        let d = diff(&before, &after);
        assert!(d.added.is_empty() && d.removed.is_empty(), "{name}: {d:?}");
        assert!(
            d.changed.iter().all(|k| *k == key || *k == index),
            "{name}: changed {:?}",
            d.changed
        );
        assert_eq!(
            after[key.as_bytes()],
            valid,
            "{name}: the next store overwrites the corrupt value"
        );
        let got = block_on(report(user, kind));
        assert_eq!(got, report_of(user, kind));
        assert_eq!(REPORT_RUNS.load(SeqCst), runs + 1, "{name}: now a hit");
    }

    // The same through the service API and a cache_result function.
    let service = CacheService::new(cache().clone());
    let quote_key = quote_cache_key("AAPL").unwrap();
    let profile_key = cache().keys().user_scoped("users", user, &["profile"]);
    let valid_quote = CodecKind::Bincode.encode(&quote_of("AAPL"), 1024).unwrap();
    let json_quote = CodecKind::Json.encode(&quote_of("MSFT"), 1024).unwrap();
    for (name, bytes) in corruptions(&valid_quote, &json_quote) {
        raw_set(&server, &quote_key, &bytes);
        raw_set(&server, &profile_key, &bytes);
        block_on(async {
            let runs = QUOTE_RUNS.load(SeqCst);
            assert_eq!(quote("AAPL").await, quote_of("AAPL"), "{name}");
            assert_eq!(quote("AAPL").await, quote_of("AAPL"), "{name}");
            assert_eq!(QUOTE_RUNS.load(SeqCst), runs + 1, "{name}: miss, then hit");
            assert_eq!(
                service
                    .get_user_data::<Quote>(user, "profile")
                    .await
                    .unwrap(),
                None,
                "{name}"
            );
            service
                .cache_user_data(user, "profile", &quote_of("IBM"), None)
                .await
                .unwrap();
            assert_eq!(
                service
                    .get_user_data::<Quote>(user, "profile")
                    .await
                    .unwrap(),
                Some(quote_of("IBM")),
                "{name}"
            );
        });
    }
    let counters = cache().counters();
    println!("counters after {} corruptions: {counters:?}", cases.len());
}

#[test]
fn a_value_over_the_size_limit_is_not_stored_and_the_call_returns() {
    let server = RedisServer::plain();
    let _guard = setup(&server);
    let over = MAX_VALUE_BYTES + 1;
    let under = MAX_VALUE_BYTES / 2;
    let expected = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();

    let before = snapshot(&server);
    block_on(async {
        for _ in 0..2 {
            assert_eq!(big(over).await, expected(over));
            let v = user_big("u:big*", over).await;
            assert_eq!((v.len(), &v[..8]), (over, &b"u:big*\xAB\xAB"[..]));
        }
    });
    assert_eq!(BIG_RUNS.load(SeqCst), 2, "never stored, so never a hit");
    assert_eq!(USER_BIG_RUNS.load(SeqCst), 2);
    assert_eq!(snapshot(&server), before, "nothing stored, no index entry");

    block_on(async {
        assert_eq!(big(under).await, expected(under));
        assert_eq!(big(under).await, expected(under));
    });
    assert_eq!(
        BIG_RUNS.load(SeqCst),
        3,
        "a value under the limit is stored"
    );
    let d = diff(&before, &snapshot(&server));
    assert_eq!(
        d.added,
        BTreeSet::from([big_cache_key(&under).unwrap()]),
        "{d:?}"
    );
}

/// Characters that matter to keys, globs and the encoding, and any other character.
fn id_strategy() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        ':', '*', '?', '[', ']', '\\', '{', '}', ' ', '\n', '\0', '%', 'é', '日', '🦀', 'a', 'b',
        '_', '-', '.', '@', '/',
    ]);
    let ch = prop_oneof![3 => special, 1 => any::<char>()];
    prop::collection::vec(ch, 0..24).prop_map(String::from_iter)
}

#[test]
fn property_random_ids_and_values_are_isolated_and_round_trip() {
    let server = RedisServer::plain();
    let _guard = setup(&server);
    let service = CacheService::new(cache().clone());
    block_on(async {
        service
            .cache_user_data("victim", "profile", "victim profile", None)
            .await
            .unwrap();
    });
    raw_set(&server, "tradistry:users:user:*", b"foreign");
    raw_set(&server, "tradistry:users:{user:*}", b"foreign");
    let baseline = snapshot(&server);

    let strategy = (
        id_strategy(),
        id_strategy(),
        id_strategy(),
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(any::<u8>(), 0..512),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |(a, b, data_type, va, vb)| {
        prop_assume!(a != b);
        block_on(async {
            for (id, value) in [(&a, &va), (&b, &vb)] {
                service
                    .cache_user_data(id, &data_type, value, None)
                    .await
                    .unwrap();
                assert_eq!(echo(id, value.clone()).await, (id.clone(), value.clone()));
            }
            for (id, value) in [(&a, &va), (&b, &vb)] {
                assert_eq!(
                    service
                        .get_user_data::<Vec<u8>>(id, &data_type)
                        .await
                        .unwrap()
                        .as_ref(),
                    Some(value),
                    "round trip of {id:?}"
                );
                let runs = ECHO_RUNS.load(SeqCst);
                assert_eq!(echo(id, value.clone()).await, (id.clone(), value.clone()));
                assert_eq!(ECHO_RUNS.load(SeqCst), runs, "a hit for {id:?}");
            }
            assert_eq!(service.clear_all_user_cache(&a).await.unwrap(), 2);
            assert_eq!(
                service
                    .get_user_data::<Vec<u8>>(&a, &data_type)
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(
                service
                    .get_user_data::<Vec<u8>>(&b, &data_type)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(&vb),
                "clearing {a:?} touched {b:?}"
            );
            let runs = ECHO_RUNS.load(SeqCst);
            assert_eq!(echo(&b, vb.clone()).await, (b.clone(), vb.clone()));
            assert_eq!(ECHO_RUNS.load(SeqCst), runs, "clearing {a:?} touched {b:?}");
            assert_eq!(service.clear_all_user_cache(&b).await.unwrap(), 2);
        });
        let now = snapshot(&server);
        prop_assert!(
            now == baseline,
            "ids {a:?} and {b:?} left {:?}",
            diff(&baseline, &now)
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    println!("property test: 64 cases passed");
}
