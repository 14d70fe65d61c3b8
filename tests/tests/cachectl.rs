//! `cachectl` run in-process (`cache_runtime::cli::run`) with captured stdout/stderr and a
//! scripted confirmation, against real `redis-server` processes from the harness.

use std::collections::BTreeMap;
use std::time::Duration;

use cache_runtime::cli::{
    self, Io, EXIT_AUTH, EXIT_NOT_CONFIRMED, EXIT_OK, EXIT_TLS, EXIT_UNREACHABLE, EXIT_USAGE,
};
use cache_runtime::service::{prompt_hash, CacheService};
use cache_runtime::{Cache, CacheConfig, CacheConfigBuilder, ConfigError};
use cache_tests::{keyspace, raw_client, RedisServer, TlsOptions};
use serde_json::Value;

/// What one `cachectl` run produced.
#[derive(Debug)]
struct Outcome {
    code: u8,
    out: String,
    err: String,
    /// The questions asked through `confirm`.
    asked: Vec<String>,
}

impl Outcome {
    /// Stdout parsed as JSON (panics with both streams otherwise).
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.out, self.err)
    }
}

/// Runs `cachectl ARGS` with `config`; `answer` is what the confirmation returns.
async fn run(
    args: &[&str],
    config: Result<CacheConfig, ConfigError>,
    answer: Option<bool>,
) -> Outcome {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut asked = Vec::new();
    let mut confirm = |what: &str| {
        asked.push(what.to_owned());
        answer
    };
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        let run = cli::run(args.iter().map(|s| (*s).to_owned()), config, &mut io);
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap_or_else(|_| panic!("cachectl {args:?} did not finish within 120 s"))
    };
    Outcome {
        code,
        out: String::from_utf8(out).expect("stdout is UTF-8"),
        err: String::from_utf8(err).expect("stderr is UTF-8"),
        asked,
    }
}

/// A configuration for `url` with short, but not tight, timeouts.
fn builder(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(5))
        .socket_timeout(Duration::from_secs(5))
}

fn config_for(server: &RedisServer) -> CacheConfig {
    let b = builder(&server.url());
    let b = if server.config().tls {
        b.ca_certs(server.ca_cert_path())
    } else {
        b
    };
    b.build().expect("valid configuration")
}

/// A port on 127.0.0.1 that nobody listens on (a moment ago).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

fn unreachable_config() -> CacheConfig {
    CacheConfig::builder()
        .url(format!("redis://127.0.0.1:{}", closed_port()))
        .connect_timeout(Duration::from_secs(1))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration")
}

fn tls_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.trim_start().starts_with("TLS:"))
        .unwrap_or_else(|| panic!("no TLS line in {out:?}"))
}

// ---------------------------------------------------------------------------------------
// ping
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_plain_server_reports_version_and_no_tls() {
    let server = RedisServer::plain();
    let o = run(&["ping"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("ok: connected to"), "{o:#?}");
    assert!(o.out.contains(&server.port().to_string()), "{o:#?}");
    assert!(o.out.contains("server version: 7."), "{o:#?}");
    assert!(tls_line(&o.out).trim_end().ends_with("off"), "{o:#?}");
    assert!(o.out.contains("latency:"), "{o:#?}");
    assert!(o.err.is_empty(), "{o:#?}");
    assert!(o.asked.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_json_reports_ok_and_latency() {
    let server = RedisServer::plain();
    let o = run(&["--json", "ping"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["backend"], "redis", "{v:#}");
    assert_eq!(v["tls"], false, "{v:#}");
    assert!(
        v["server_version"]
            .as_str()
            .is_some_and(|s| s.starts_with("7.")),
        "{v:#}"
    );
    let min = v["latency_ms"]["min"].as_f64().expect("latency_ms.min");
    let median = v["latency_ms"]["median"]
        .as_f64()
        .expect("latency_ms.median");
    assert!(min >= 0.0 && median >= min, "{v:#}");
    // The flag may come after the command too.
    let o = run(&["ping", "--json"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.json()["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_without_redis_reports_the_embedded_store() {
    let o = run(&["ping"], Ok(CacheConfig::builder().build().unwrap()), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("embedded"), "{o:#?}");
    assert!(tls_line(&o.out).trim_end().ends_with("off"), "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_tls_with_the_right_ca_reports_tls_on() {
    let server = RedisServer::tls(TlsOptions::default());
    let o = run(&["ping"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(tls_line(&o.out).trim_end().ends_with("on"), "{o:#?}");
    assert!(o.out.contains("server version: 7."), "{o:#?}");
    let o = run(&["--json", "ping"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.json()["tls"], true, "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_tls_with_a_wrong_ca_exits_4_with_tls_hints() {
    let server = RedisServer::tls(TlsOptions::default());
    let config = builder(&server.url())
        .ca_certs(server.wrong_ca_path())
        .build()
        .unwrap();
    let o = run(&["ping"], Ok(config.clone()), None).await;
    assert_eq!(o.code, EXIT_TLS, "{o:#?}");
    assert!(o.err.contains("error: TLS handshake"), "{o:#?}");
    assert!(o.err.contains("rediss://"), "{o:#?}");
    assert!(o.err.contains("REDIS_SSL_CA_CERTS"), "{o:#?}");
    assert!(o.out.is_empty(), "nothing on stdout on failure: {o:#?}");

    let o = run(&["--json", "ping"], Ok(config), None).await;
    assert_eq!(o.code, EXIT_TLS, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], false, "{v:#}");
    let hints = v["hints"].to_string();
    assert!(hints.contains("rediss://"), "{v:#}");
    assert!(hints.contains("REDIS_SSL_CA_CERTS"), "{v:#}");
}

/// `rediss://` on a plain server's port: the TLS hints (exit 4), whose last one is exactly
/// this case ("a plain (non-TLS) server on this port also fails the handshake: check the
/// port"), not the allow-list/firewall advice of an unreachable server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_tls_url_on_a_plain_port_exits_4() {
    let plain = RedisServer::plain();
    let tls = RedisServer::tls(TlsOptions::default());
    let config = builder(&format!("rediss://127.0.0.1:{}", plain.port()))
        .ca_certs(tls.ca_cert_path())
        .build()
        .unwrap();
    let o = run(&["ping"], Ok(config), None).await;
    assert_eq!(o.code, EXIT_TLS, "{o:#?}");
    assert!(o.err.contains("check the port"), "{o:#?}");
}

/// `redis://` on a TLS-only port (the most common Redis Cloud mistake): the server resets
/// the connection. Whatever the exit code, the advice must name the fix, `rediss://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_plain_url_on_a_tls_port_suggests_rediss() {
    let tls = RedisServer::tls(TlsOptions::default());
    let config = builder(&format!("redis://127.0.0.1:{}", tls.port()))
        .build()
        .unwrap();
    let o = run(&["ping"], Ok(config), None).await;
    assert!(o.code == EXIT_TLS || o.code == EXIT_UNREACHABLE, "{o:#?}");
    assert!(o.err.contains("rediss://"), "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_unreachable_exits_3_with_network_hints() {
    let o = run(&["ping"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    assert!(o.err.contains("cannot reach Redis"), "{o:#?}");
    assert!(o.err.contains("allow-listed"), "{o:#?}");
    assert!(o.err.contains("firewall"), "{o:#?}");
    assert!(o.err.contains("REDIS_SOCKET_CONNECT_TIMEOUT"), "{o:#?}");

    let o = run(&["--json", "ping"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(v["error"].is_string(), "{v:#}");
    assert!(v["hints"].to_string().contains("firewall"), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_wrong_password_exits_5_and_never_prints_the_password() {
    const RIGHT: &str = "right-Pa55word-7f3a";
    const WRONG: &str = "wr0ng-Secret-q9z!";
    let server = RedisServer::with_password(RIGHT);
    let wrong_url = server.url_with(None, Some(WRONG));
    let wrong = || builder(&wrong_url).build().unwrap();

    let o = run(&["ping"], Ok(wrong()), None).await;
    assert_eq!(o.code, EXIT_AUTH, "{o:#?}");
    assert!(o.err.contains("REDIS_PASSWORD"), "{o:#?}");
    assert!(o.err.contains("refused authentication"), "{o:#?}");
    for secret in [WRONG, "wr0ng-Secret-q9z", "wr0ng-Secret-q9z%21", RIGHT] {
        assert!(!o.all().contains(secret), "{secret:?} leaked: {o:#?}");
    }

    let o = run(&["--json", "ping"], Ok(wrong()), None).await;
    assert_eq!(o.code, EXIT_AUTH, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(v["hints"].to_string().contains("REDIS_PASSWORD"), "{v:#}");
    for secret in [WRONG, "wr0ng-Secret-q9z", "wr0ng-Secret-q9z%21", RIGHT] {
        assert!(!o.all().contains(secret), "{secret:?} leaked: {o:#?}");
    }

    // The same password given as REDIS_PASSWORD (not in the URL).
    let vars = [
        ("REDIS_HOST", "127.0.0.1".to_owned()),
        ("REDIS_PORT", server.port().to_string()),
        ("REDIS_PASSWORD", WRONG.to_owned()),
        ("REDIS_SOCKET_CONNECT_TIMEOUT", "5".to_owned()),
    ];
    let o = run(&["ping"], CacheConfig::from_vars(vars), None).await;
    assert_eq!(o.code, EXIT_AUTH, "{o:#?}");
    assert!(!o.all().contains(WRONG), "password leaked: {o:#?}");

    // The right password works.
    let o = run(&["ping"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(!o.all().contains(RIGHT), "password leaked: {o:#?}");
}

// ---------------------------------------------------------------------------------------
// health and stats
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_stats_on_a_good_server() {
    let server = RedisServer::plain();
    let cache = Cache::new(config_for(&server)).unwrap();
    let service = CacheService::new(cache.clone());
    service
        .cache_trading_data("u1", "AAPL", "quote", &1.5f64, None)
        .await
        .unwrap();
    cache
        .namespace("analytics")
        .unwrap()
        .set("m", &1u32, None)
        .await
        .unwrap();

    let o = run(&["health"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("status: healthy (backend redis)"), "{o:#?}");
    assert!(o.out.contains("server: 7."), "{o:#?}");

    let o = run(&["--json", "health"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(v["status"], "healthy", "{v:#}");
    assert_eq!(v["connected"], true, "{v:#}");
    assert!(
        v["info"]["server"]["version"]
            .as_str()
            .is_some_and(|s| s.starts_with("7.")),
        "{v:#}"
    );
    assert_eq!(v["info"]["server"]["mode"], "standalone", "{v:#}");
    assert!(v["info"]["clients"]["connected"].is_u64(), "{v:#}");
    assert!(v["info"]["pool"]["max_connections"].is_u64(), "{v:#}");
    assert!(v["timestamp"].is_string(), "{v:#}");

    let o = run(&["stats"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.out.contains("memory:"), "{o:#?}");
    assert!(o.out.contains("keys:"), "{o:#?}");
    assert!(o.out.contains("trading"), "{o:#?}");

    let o = run(&["--json", "stats"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert!(v["memory"]["used_memory"].is_u64(), "{v:#}");
    assert!(v["memory"]["used_memory_human"].is_string(), "{v:#}");
    assert!(v["memory"]["maxmemory"].is_u64(), "{v:#}");
    // The quote, the user's index set and the analytics entry.
    assert_eq!(v["keys"]["total"], 3, "{v:#}");
    let by_ns = &v["keys"]["by_namespace"];
    for ns in ["users", "ai", "trading", "analytics", "general"] {
        assert!(by_ns[ns].is_u64(), "by_namespace.{ns}: {v:#}");
    }
    assert_eq!(by_ns["trading"], 1, "{v:#}");
    assert_eq!(by_ns["analytics"], 1, "{v:#}");
    assert_eq!(by_ns["users"], 0, "{v:#}");
    assert_eq!(v["keys"]["approximate"], false, "{v:#}");
    assert!(v["counters"].is_object(), "{v:#}");
    assert!(v["timestamp"].is_string(), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_on_an_unreachable_server_exits_3() {
    let o = run(&["health"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    assert!(o.out.contains("status: unhealthy"), "{o:#?}");
    assert!(o.out.contains("cannot reach Redis"), "{o:#?}");

    let o = run(&["--json", "health"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    let v = o.json();
    assert_eq!(v["status"], "unhealthy", "{v:#}");
    assert_eq!(v["connected"], false, "{v:#}");
    assert!(v["error"].is_string(), "{v:#}");
}

/// Like `health`: an unreachable server is exit 3 with the reason, not exit 0 with every
/// namespace counted as 0 keys (those counts are unknown, not zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_an_unreachable_server_exits_3_with_the_reason() {
    let o = run(&["stats"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    assert!(o.all().contains("cannot reach Redis"), "{o:#?}");

    let o = run(&["--json", "stats"], Ok(unreachable_config()), None).await;
    assert_eq!(o.code, EXIT_UNREACHABLE, "{o:#?}");
    let v = o.json();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach Redis")),
        "{v:#}"
    );
}

// ---------------------------------------------------------------------------------------
// clear
// ---------------------------------------------------------------------------------------

/// Keys of `before` that are not in `after`.
fn removed(before: &BTreeMap<String, Vec<u8>>, after: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_namespace_deletes_exactly_that_namespace() {
    let server = RedisServer::plain();
    let cache = Cache::new(config_for(&server)).unwrap();
    let analytics = cache.namespace("analytics").unwrap();
    for key in ["a", "b", "c*"] {
        analytics.set(key, key, None).await.unwrap();
    }
    cache
        .namespace("analytics2")
        .unwrap()
        .set("a", &1u8, None)
        .await
        .unwrap();
    cache
        .namespace("general")
        .unwrap()
        .set("analytics", &1u8, None)
        .await
        .unwrap();
    CacheService::new(cache.clone())
        .cache_user_data("u1", "profile", "p", None)
        .await
        .unwrap();
    let mut con = raw_client(&server);
    redis::cmd("SET")
        .arg("other:analytics:x")
        .arg("foreign")
        .exec(&mut con)
        .unwrap();

    let before = keyspace(&server);
    let expected: Vec<String> = before
        .keys()
        .filter(|k| k.starts_with("tradistry:analytics:"))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 3, "{before:#?}");

    let o = run(
        &["clear", "--namespace", "analytics", "--yes"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.out.trim(), "cleared 3 keys", "{o:#?}");
    assert!(o.asked.is_empty(), "--yes asks nothing: {o:#?}");
    let after = keyspace(&server);
    assert_eq!(removed(&before, &after), expected);
    assert_eq!(after.len(), before.len() - 3, "nothing else touched");

    // Again, in JSON: nothing left to clear.
    let o = run(
        &["--json", "clear", "--namespace", "analytics", "-y"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["cleared"], 0, "{v:#}");
    assert_eq!(keyspace(&server), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_namespace_with_an_invalid_name_deletes_nothing() {
    let server = RedisServer::plain();
    let cache = Cache::new(config_for(&server)).unwrap();
    cache
        .namespace("analytics")
        .unwrap()
        .set("a", &1u8, None)
        .await
        .unwrap();
    let before = keyspace(&server);
    let o = run(
        &["clear", "--namespace", "*", "--yes"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_ne!(o.code, EXIT_OK, "{o:#?}");
    assert!(o.err.contains("invalid namespace"), "{o:#?}");
    assert_eq!(keyspace(&server), before);
}

/// Seeds u1, u2 and the look-alike users `u1x` and `u*` with the service API.
async fn seed_users(server: &RedisServer) {
    let service = CacheService::new(Cache::new(config_for(server)).unwrap());
    for user in ["u1", "u2", "u1x", "u*"] {
        service
            .cache_user_data(user, "profile", &format!("profile of {user}"), None)
            .await
            .unwrap();
        service
            .cache_ai_response(user, &prompt_hash("hi"), "hello", None)
            .await
            .unwrap();
        service
            .cache_trading_data(user, "AAPL", "quote", &187.5f64, None)
            .await
            .unwrap();
    }
}

/// The keys that clearing u1 must delete: its three entries and its index.
fn u1_keys(ks: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let keys: Vec<String> = ks
        .keys()
        .filter(|k| k.contains(":{user:u1}:") || k.as_str() == "tradistry:__index:{user:u1}")
        .cloned()
        .collect();
    assert_eq!(keys.len(), 4, "3 entries and the index of u1: {ks:#?}");
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_user_deletes_only_that_users_keys() {
    let server = RedisServer::plain();
    seed_users(&server).await;
    let before = keyspace(&server);
    let expected = u1_keys(&before);

    let o = run(
        &["clear", "--user", "u1", "--yes"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.out.trim(), "cleared 3 keys", "{o:#?}");
    let after = keyspace(&server);
    assert_eq!(removed(&before, &after), expected, "only u1's keys go");
    assert_eq!(after.len(), before.len() - 4, "{after:#?}");

    // A glob-looking user id clears only itself.
    let o = run(
        &["--json", "clear", "--user", "u*", "--yes"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.json()["cleared"], 3, "{o:#?}");
    let last = keyspace(&server);
    assert!(
        last.keys().any(|k| k.contains(":{user:u2}:")),
        "u2 survives clearing u*: {last:#?}"
    );
    assert!(
        last.keys().any(|k| k.contains(":{user:u1x}:")),
        "u1x survives: {last:#?}"
    );
    assert_eq!(last.len(), after.len() - 4, "{last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_user_without_yes_needs_confirmation() {
    let server = RedisServer::plain();
    seed_users(&server).await;
    let before = keyspace(&server);
    let expected = u1_keys(&before);

    // Nobody can answer (no terminal): refused, nothing deleted.
    let o = run(&["clear", "--user", "u1"], Ok(config_for(&server)), None).await;
    assert_eq!(o.code, EXIT_NOT_CONFIRMED, "{o:#?}");
    assert_eq!(o.asked.len(), 1, "{o:#?}");
    assert!(o.asked[0].contains("u1"), "{o:#?}");
    assert!(o.err.contains("--yes"), "{o:#?}");
    assert_eq!(keyspace(&server), before, "nothing deleted");

    // The answer is no.
    let o = run(
        &["clear", "--user", "u1"],
        Ok(config_for(&server)),
        Some(false),
    )
    .await;
    assert_eq!(o.code, EXIT_NOT_CONFIRMED, "{o:#?}");
    assert_eq!(o.asked.len(), 1, "{o:#?}");
    assert_eq!(keyspace(&server), before, "nothing deleted");

    // The same for a namespace.
    let o = run(
        &["clear", "--namespace", "trading"],
        Ok(config_for(&server)),
        None,
    )
    .await;
    assert_eq!(o.code, EXIT_NOT_CONFIRMED, "{o:#?}");
    assert!(o.asked[0].contains("trading"), "{o:#?}");
    assert_eq!(keyspace(&server), before, "nothing deleted");

    // The answer is yes.
    let o = run(
        &["clear", "--user", "u1"],
        Ok(config_for(&server)),
        Some(true),
    )
    .await;
    assert_eq!(o.code, EXIT_OK, "{o:#?}");
    assert_eq!(o.out.trim(), "cleared 3 keys", "{o:#?}");
    assert_eq!(removed(&before, &keyspace(&server)), expected);
}

// ---------------------------------------------------------------------------------------
// usage and configuration errors
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_with_the_usage_text() {
    // An unreachable server: usage errors must be reported before any connection.
    for (args, message) in [
        (&["bogus"][..], "unknown command \"bogus\""),
        (&[][..], "missing command"),
        (&["clear"][..], "exactly one of --namespace NS or --user ID"),
        (
            &["clear", "--namespace", "a", "--user", "b"][..],
            "exactly one of --namespace NS or --user ID",
        ),
        (&["ping", "--user", "b"][..], "only go with clear"),
        (&["ping", "extra"][..], "unexpected argument"),
        (&["--frobnicate", "ping"][..], "unknown option --frobnicate"),
        (&["clear", "--namespace"][..], "--namespace needs a value"),
    ] {
        let o = run(args, Ok(unreachable_config()), Some(true)).await;
        assert_eq!(o.code, EXIT_USAGE, "{args:?}: {o:#?}");
        assert!(o.err.contains(message), "{args:?}: {o:#?}");
        assert!(o.err.contains("usage: cachectl"), "{args:?}: {o:#?}");
        assert!(o.out.is_empty(), "{args:?}: {o:#?}");
        assert!(o.asked.is_empty(), "{args:?}: {o:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_exits_2_and_names_the_variable() {
    let bad_port = CacheConfig::from_vars([("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", "abc")]);
    let o = run(&["ping"], bad_port.clone(), None).await;
    assert_eq!(o.code, EXIT_USAGE, "{o:#?}");
    assert!(o.err.contains("REDIS_PORT"), "{o:#?}");
    assert!(o.out.is_empty(), "{o:#?}");

    let o = run(&["--json", "health"], bad_port, None).await;
    assert_eq!(o.code, EXIT_USAGE, "{o:#?}");
    let v = o.json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("REDIS_PORT")),
        "{v:#}"
    );

    // REDIS_SSL=true with a plain URL is an error, not a silent downgrade.
    let downgrade = CacheConfig::from_vars([
        ("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:6390"),
        ("REDIS_SSL", "true"),
    ]);
    let o = run(&["ping"], downgrade, None).await;
    assert_eq!(o.code, EXIT_USAGE, "{o:#?}");
    assert!(o.err.contains("REDIS_SSL"), "{o:#?}");
    assert!(o.err.contains("rediss://"), "{o:#?}");
    assert!(!o.all().contains("hunter2"), "password leaked: {o:#?}");

    // Destructive commands do not run on an invalid configuration either.
    let o = run(
        &["clear", "--user", "u1", "--yes"],
        CacheConfig::from_vars([("REDIS_TTL_DEFAULT", "0")]),
        Some(true),
    )
    .await;
    assert_eq!(o.code, EXIT_USAGE, "{o:#?}");
    assert!(o.err.contains("REDIS_TTL_DEFAULT"), "{o:#?}");
}
