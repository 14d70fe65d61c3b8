//! `cachectl inspect KEY` and `cachectl keys (--user ID | --namespace NS)`, in process
//! (`cache_runtime::cli::run`) against a real `redis-server`, on values written the ways the
//! library writes them (decorated calls plain and with `fail_safe`, manual sets, a
//! compressed value, a counter, another codec's value) and a foreign one; every figure is
//! checked against what the server holds.

use std::time::Duration;

use cache_runtime::cli::{self, Io, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig, CodecKind};
use cache_tests::{raw_client, RedisServer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const PREFIX: &str = "insp";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    user: String,
    kind: String,
}

#[cache_user_specific(ttl = 600, data_type = "reports")]
async fn report(user_id: &str, kind: &str) -> Report {
    Report {
        user: user_id.to_owned(),
        kind: kind.to_owned(),
    }
}

#[cache_result(namespace = "quotes", ttl = 600, fail_safe = "1h")]
async fn quote(symbol: &str) -> f64 {
    f64::from(u32::try_from(symbol.len()).unwrap_or(0))
}

fn config(server: &RedisServer, codec: CodecKind) -> CacheConfig {
    CacheConfig::builder()
        .url(server.url())
        .key_prefix(PREFIX)
        .codec(codec)
        .compress_above(1024)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration")
}

/// What one run printed.
#[derive(Debug)]
struct Outcome {
    code: u8,
    out: String,
    err: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

async fn run(config: CacheConfig, args: &[&str]) -> Outcome {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| None;
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        let run = cli::run(args.iter().map(|s| (*s).to_owned()), Ok(config), &mut io);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("cachectl {args:?} did not finish within 60 s"))
    };
    Outcome {
        code,
        out: String::from_utf8(out).expect("UTF-8"),
        err: String::from_utf8(err).expect("UTF-8"),
    }
}

fn raw_get(server: &RedisServer, key: &str) -> Vec<u8> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut raw_client(server))
        .expect("GET")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every key under `prefix`, as the server lists it.
fn server_keys(server: &RedisServer, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut raw_client(server))
        .expect("KEYS");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_tells_what_each_stored_value_is_and_whether_this_build_reads_it() {
    let server = RedisServer::plain();
    let cache = Cache::new(config(&server, CodecKind::Bincode)).expect("cache");
    let ns = cache.namespace("catalog").expect("namespace");
    ns.set("item", &vec![1u32, 2, 3], Some(Duration::from_secs(300)))
        .await
        .expect("set");
    let big: Vec<String> = (0..400).map(|i| format!("row {}", i % 5)).collect();
    ns.set("big", &big, None).await.expect("set big");
    assert_eq!(ns.increment("hits", 5, None).await.expect("incr"), 5);
    with_cache(cache.clone(), async {
        assert_eq!(quote("AAPL").await, 4.0);
    })
    .await;
    let json_cache = Cache::new(config(&server, CodecKind::Json)).expect("json cache");
    json_cache
        .namespace("catalog")
        .expect("namespace")
        .set("from_json", "hello", None)
        .await
        .expect("set json");
    let mut con = raw_client(&server);
    redis::cmd("SET")
        .arg("insp:catalog:foreign")
        .arg("not ours")
        .exec(&mut con)
        .expect("SET");
    let bincode = || config(&server, CodecKind::Bincode);

    // A manual set: an envelope, every field checked against the bytes in Redis.
    let item = ns.key("item");
    let stored = raw_get(&server, &item);
    let o = run(bincode(), &["--json", "inspect", &item]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(v["form"], "envelope", "{v:#}");
    assert_eq!(v["envelope_format"], "0xc2", "{v:#}");
    assert_eq!(v["codec"], "bincode", "{v:#}");
    assert_eq!(v["shape_tag"], hex(&stored[2..10]), "{v:#}");
    assert_eq!(v["size_bytes"], stored.len(), "{v:#}");
    assert_eq!(v["payload_bytes"], stored.len() - 10, "{v:#}");
    assert_eq!(v["compressed"], false, "{v:#}");
    assert!(
        v["ttl_ms"].as_i64().is_some_and(|t| t > 0 && t <= 300_000),
        "{v:#}"
    );
    assert_eq!(v["accepted"], true, "{v:#}");
    let o = run(bincode(), &["inspect", &item]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    for expected in [
        "form:        envelope (0xc2)",
        "codec:       bincode",
        &format!(
            "shape tag:   {} (a build reads it only if its type has that shape)",
            hex(&stored[2..10])
        ),
        "compressed:  no",
        "accepted:    yes",
    ] {
        assert!(o.out.contains(expected), "{expected:?} in {o:#?}");
    }

    // Large: compressed.
    let v = run(bincode(), &["--json", "inspect", &ns.key("big")])
        .await
        .json();
    assert_eq!(
        (v["compressed"].clone(), v["accepted"].clone()),
        (true.into(), true.into()),
        "{v:#}"
    );
    assert!(
        v["ttl_ms"].as_i64().is_some_and(|t| t > 0),
        "the namespace's TTL: {v:#}"
    );

    // A counter: decimal text, read by every codec.
    let v = run(bincode(), &["--json", "inspect", &ns.key("hits")])
        .await
        .json();
    assert_eq!(
        (v["form"].clone(), v["integer"].clone()),
        ("integer".into(), 5.into()),
        "{v:#}"
    );
    assert_eq!(v["accepted"], true, "{v:#}");

    // Another codec's envelope: this configuration's reads miss on it.
    let v = run(bincode(), &["--json", "inspect", &ns.key("from_json")])
        .await
        .json();
    assert_eq!(
        (v["codec"].clone(), v["accepted"].clone()),
        ("json".into(), false.into()),
        "{v:#}"
    );
    assert!(
        v["verdict"]
            .as_str()
            .is_some_and(|s| s.contains("written with codec json")),
        "{v:#}"
    );
    let v = run(
        config(&server, CodecKind::Json),
        &["--json", "inspect", &ns.key("from_json")],
    )
    .await
    .json();
    assert_eq!(v["accepted"], true, "the json build reads it: {v:#}");

    // Not ours.
    let o = run(bincode(), &["--json", "inspect", "insp:catalog:foreign"]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(
        (v["form"].clone(), v["accepted"].clone()),
        ("foreign".into(), false.into()),
        "{v:#}"
    );

    // A decorated call with fail_safe: a timed envelope, fresh until TTL's end.
    let quote_key = server_keys(&server, "insp:quotes:")
        .pop()
        .expect("the quote is stored");
    let v = run(bincode(), &["--json", "inspect", &quote_key])
        .await
        .json();
    assert_eq!(v["form"], "timed envelope", "{v:#}");
    assert_eq!(v["envelope_format"], "0xc3", "{v:#}");
    assert_eq!(v["fresh"], true, "{v:#}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let until = v["fresh_until_ms"].as_u64().expect("fresh until");
    assert!(until > now_ms && until <= now_ms + 601_000, "{v:#}");
    // Kept past its TTL for the fail-safe window: the key's TTL is longer than freshness.
    assert!(v["ttl_ms"].as_i64().is_some_and(|t| t > 600_000), "{v:#}");
    let o = run(bincode(), &["inspect", &quote_key]).await;
    assert!(
        o.out.contains("fresh until: ") && o.out.contains("(fresh for "),
        "{o:#?}"
    );

    // Absent, and not a string: exit 1, saying so.
    let o = run(bincode(), &["--json", "inspect", "insp:catalog:nothing"]).await;
    assert_eq!(o.code, EXIT_FAILURE, "{o:#?}");
    let v = o.json();
    assert_eq!(
        (v["ok"].clone(), v["exists"].clone()),
        (false.into(), false.into()),
        "{v:#}"
    );
    with_cache(cache.clone(), async {
        report("u1", "daily").await;
    })
    .await;
    let o = run(bincode(), &["inspect", &cache.keys().user_index("u1")]).await;
    assert_eq!(o.code, EXIT_FAILURE, "{o:#?}");
    assert!(o.err.contains("sorted set"), "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_lists_a_users_index_and_a_namespace_with_ttls_bounded() {
    let server = RedisServer::plain();
    let cache = Cache::new(config(&server, CodecKind::Bincode)).expect("cache");
    // A user id that needs escaping, and another user who must not show.
    let user = "a:b c*";
    with_cache(cache.clone(), async {
        for kind in ["daily", "weekly", "monthly"] {
            report(user, kind).await;
        }
        report("someone-else", "daily").await;
    })
    .await;
    let ns = cache.namespace("catalog").expect("namespace");
    for i in 0..5 {
        ns.set(&format!("k{i}"), &i, Some(Duration::from_secs(100 + i)))
            .await
            .expect("set");
    }
    let mut con = raw_client(&server);
    redis::cmd("SET")
        .arg("insp:catalog:persistent")
        .arg("x")
        .exec(&mut con)
        .expect("SET");
    // Another namespace whose name starts the same: not listed.
    cache
        .namespace("catalog2")
        .expect("namespace")
        .set("k", &1u8, None)
        .await
        .expect("set");
    let bincode = || config(&server, CodecKind::Bincode);

    // The user's index: exactly the keys Redis lists in it, each with its TTL.
    let index = cache.keys().user_index(user);
    let mut members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .expect("ZRANGE");
    members.sort();
    assert_eq!(members.len(), 3);
    let o = run(bincode(), &["--json", "keys", "--user", user]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(v["index"], index, "{v:#}");
    assert_eq!(
        (v["total"].clone(), v["listed"].clone()),
        (3.into(), 3.into()),
        "{v:#}"
    );
    assert_eq!(v["complete"], true, "{v:#}");
    let mut listed: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            let ttl = k["ttl_ms"].as_i64().expect("ttl");
            assert!(ttl > 0 && ttl <= 1_800_000, "{k}");
            k["key"].as_str().expect("key").to_owned()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, members);
    let o = run(bincode(), &["keys", "--user", user, "--limit", "2"]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("2 of 3 listed (--limit 2"), "{o:#?}");
    assert_eq!(
        o.out
            .lines()
            .filter(|l| l.contains(":{user:a%3Ab%20c%2A}:"))
            .count(),
        2,
        "{o:#?}"
    );
    // A user with nothing cached.
    let o = run(bincode(), &["keys", "--user", "nobody"]).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(
        o.out.contains("no keys") && o.out.contains("0 of 0 listed"),
        "{o:#?}"
    );

    // A namespace: its keys and only them, with TTLs (-1: none).
    let expected = server_keys(&server, "insp:catalog:");
    assert_eq!(expected.len(), 6);
    let v = run(bincode(), &["--json", "keys", "--namespace", "catalog"])
        .await
        .json();
    assert_eq!(
        (v["listed"].clone(), v["complete"].clone()),
        (6.into(), true.into()),
        "{v:#}"
    );
    let keys = v["keys"].as_array().expect("keys");
    let names: Vec<&str> = keys.iter().filter_map(|k| k["key"].as_str()).collect();
    assert_eq!(
        names,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for k in keys {
        let ttl = k["ttl_ms"].as_i64().expect("ttl");
        if k["key"] == "insp:catalog:persistent" {
            assert_eq!(ttl, -1, "{k}");
        } else {
            assert!(ttl > 90_000 && ttl <= 105_000, "{k}");
        }
    }
    let o = run(
        bincode(),
        &["keys", "--namespace", "catalog", "--limit", "2"],
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("first 2 keys: there are more"), "{o:#?}");
    let o = run(bincode(), &["keys", "--namespace", "Not A Name"]).await;
    assert_eq!(o.code, EXIT_USAGE, "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_new_verbs_point_at_the_applications_own_figures() {
    for args in [
        &["top", "--once"][..],
        &["inspect", "insp:x"][..],
        &["keys", "--user", "u1"][..],
        &["--json", "keys", "--namespace", "users"][..],
    ] {
        let o = run(CacheConfig::default(), args).await;
        assert_eq!(o.code, EXIT_USAGE, "{args:?}: {o:#?}");
        let all = format!("{}{}", o.out, o.err);
        assert!(
            all.contains("embedded store") && all.contains("/metrics"),
            "{args:?}: {o:#?}"
        );
    }
}
