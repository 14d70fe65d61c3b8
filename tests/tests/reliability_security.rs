//! Security: TLS verifies chain and host name by default (a wrong CA or a wrong host name
//! is refused with a clear error); insecure modes only when configured, with a warning;
//! the password appears in no log, error, `Debug` output, health or stats JSON, or
//! `cachectl` output; an ACL user with limited rights gets clear errors, not panics.
//!
//! Already covered in `runtime_connection.rs` (not repeated here): wrong CA and no CA
//! refused, `cert_reqs=none` warning, wrong/missing password errors, restricted ACL user on
//! manual operations, secrets in config errors and reports of manual operations.
//! Added here: a host-name mismatch that needs no `/etc/hosts` alias (a proxy on
//! 127.0.0.2, outside the certificate's names), warnings only for the configured insecure
//! modes, `cachectl` on TLS failures, and a full decorated-call workload over TLS as a
//! limited ACL user (hits, misses, stores, permission errors, corrupt and oversized
//! values, the server killed and restarted) with every log record at every level captured
//! (`tracing` and `log`), plus health, stats, `Debug`, errors and `cachectl` output, all
//! searched for the password.

mod reliability_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cache_runtime::cli::{self, Io, EXIT_AUTH, EXIT_OK, EXIT_TLS, EXIT_UNREACHABLE};
use cache_runtime::config::BackendConfig;
use cache_runtime::service::CacheService;
use cache_runtime::{
    cache_result, cache_user_specific, Cache, CacheConfig, CacheConfigBuilder, CacheError,
    CertReqs, ConfigError,
};
use cache_tests::{keyspace, raw_client, AclUser, RedisServer, ServerConfig, TlsOptions};
use reliability_support::{block_on, poll_until, Capture, Proxy};
use serde::{Deserialize, Serialize};

const TTL: Duration = Duration::from_secs(600);

fn builder(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
}

/// What one in-process `cachectl` run printed, and its exit code.
async fn cachectl(args: &[&str], config: Result<CacheConfig, ConfigError>) -> (u8, String) {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| Some(true);
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        let run = cli::run(args.iter().map(|s| (*s).to_owned()), config, &mut io);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("cachectl {args:?} hung"))
    };
    let text = format!(
        "$ cachectl {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    (code, text)
}

// ------------------------------------------------------------------ TLS host names

/// How the runtime words the two certificate failures (`backend/redis/errors.rs`,
/// `tls_failure`, from the rustls error behind the handshake).
const HOST_NAME_CAUSE: &str = "the server's certificate is not valid for the host name";
const CA_CAUSE: &str = "the server's certificate is signed by a CA this client does not trust";

/// A host-name mismatch: the error says so, names the host, and does not send the user
/// after the CA file (which is right).
fn assert_host_name_cause(text: &str, host: &str) {
    assert!(
        text.contains(&format!("{HOST_NAME_CAUSE} \"{host}\"")),
        "the error should say the certificate does not list {host}: {text}"
    );
    assert!(
        !text.contains(CA_CAUSE) && !text.contains("REDIS_SSL_CA_CERTS"),
        "a host-name mismatch blamed on the CA: {text}"
    );
}

/// An untrusted CA: the error says so and points at REDIS_SSL_CA_CERTS, and does not
/// blame the host name.
fn assert_ca_cause(text: &str) {
    assert!(
        text.contains(CA_CAUSE) && text.contains("REDIS_SSL_CA_CERTS"),
        "the error should say the CA is not trusted: {text}"
    );
    assert!(
        !text.contains(HOST_NAME_CAUSE),
        "an untrusted CA blamed on the host name: {text}"
    );
}

/// The harness's certificate names `localhost` and `127.0.0.1` only. A proxy listening on
/// 127.0.0.2 (loopback on Linux, no DNS or /etc/hosts needed) reaches the same server
/// under a name the certificate does not list.
#[test]
fn tls_refuses_a_wrong_host_name_and_skips_checks_only_when_configured() {
    let capture = Capture::global();
    let server = RedisServer::tls(TlsOptions::default());
    let ca = server.ca_cert_path().to_owned();
    let wrong_ca = server.wrong_ca_path().to_owned();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let direct = format!("rediss://127.0.0.1:{}", server.port());

    block_on(async {
        let proxy = Proxy::start("127.0.0.2:0", upstream).await;
        let alias = format!("rediss://{}", proxy.addr());
        let alias_endpoint = proxy.addr().to_string();
        // A failed handshake fails fast; on a loaded machine it may still take longer than
        // the file's 2 s timeouts (the driver retries the connect), and the request timer
        // (which covers the wait for the connection) would then report a timeout instead of
        // the cause. Long timeouts here, the connect's shorter than the request's, so the
        // connect's own, classified error is what a request gets.
        let tls_timeouts = |b: CacheConfigBuilder| {
            b.connect_timeout(Duration::from_secs(5))
                .socket_timeout(Duration::from_secs(10))
        };
        let set = async |b: CacheConfigBuilder| {
            let b = tls_timeouts(b);
            let cache = Cache::new(b.build().expect("valid config")).expect("cache");
            let ns = cache.namespace("tls").unwrap();
            ns.set("k", "v", Some(TTL)).await?;
            ns.get::<String>("k").await
        };

        // Default (required): the right CA by a listed name works...
        let config = builder(&direct).ca_certs(&ca).build().unwrap();
        match &config.backend {
            BackendConfig::Redis(r) => assert_eq!(
                r.tls.as_ref().map(|t| t.cert_reqs),
                Some(CertReqs::Required),
                "rediss:// verifies chain and host name unless told otherwise"
            ),
            other => panic!("expected Redis, got {other:?}"),
        }
        assert_eq!(
            set(builder(&direct).ca_certs(&ca))
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
        // ...but not by a name the certificate does not list.
        let err = set(builder(&alias).ca_certs(&ca)).await.unwrap_err();
        println!("wrong host name, required: {err}");
        assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("TLS handshake with 127.0.0.2:"), "{text}");
        assert_host_name_cause(&text, "127.0.0.2");
        // The wrong CA by any name: the chain is checked first, so the cause is the CA,
        // never the name (even by the alias the certificate does not list).
        for url in [&direct, &alias] {
            let err = set(builder(url).ca_certs(&wrong_ca)).await.unwrap_err();
            assert!(matches!(err, CacheError::Tls { .. }), "{url}: {err:?}");
            assert_ca_cause(&err.to_string());
        }

        // cachectl says the same, with its TLS exit code.
        let (code, text) = cachectl(
            &["ping"],
            tls_timeouts(builder(&alias).ca_certs(&ca)).build(),
        )
        .await;
        println!("{text}");
        assert_eq!(code, EXIT_TLS, "{text}");
        assert!(text.contains("TLS"), "{text}");
        assert!(
            text.contains(HOST_NAME_CAUSE),
            "cachectl names the cause: {text}"
        );
        assert!(!text.contains(CA_CAUSE), "cachectl blames the CA: {text}");

        // optional: the chain is still checked, the name is not (and it says so).
        let optional = |url: &str, ca: &std::path::Path| {
            builder(url).ca_certs(ca).cert_reqs(CertReqs::Optional)
        };
        assert_eq!(
            set(optional(&alias, &ca)).await.unwrap().as_deref(),
            Some("v")
        );
        let err = set(optional(&alias, &wrong_ca)).await.unwrap_err();
        assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
        assert_ca_cause(&err.to_string());
        // none: anything goes (and it says so, loudly).
        assert_eq!(
            set(builder(&alias)
                .ca_certs(&wrong_ca)
                .cert_reqs(CertReqs::None))
            .await
            .unwrap()
            .as_deref(),
            Some("v")
        );

        // Warnings: for the configured insecure modes, on their endpoint only.
        let lines = capture.lines();
        let warns_on = |endpoint: &str, needle: &str| {
            lines
                .iter()
                .filter(|l| l.starts_with("WARN") && l.contains(needle))
                .any(|l| l.contains(&format!("endpoint={endpoint}")))
        };
        assert!(warns_on(&alias_endpoint, "host name is NOT"), "{lines:#?}");
        assert!(warns_on(&alias_endpoint, "NOT verified"), "{lines:#?}");
        let direct_endpoint = format!("127.0.0.1:{}", server.port());
        assert!(
            !warns_on(&direct_endpoint, "NOT"),
            "a default configuration warned about disabled checks: {lines:#?}"
        );
    });
}

// ---------------------------------------------------- the password, end to end

/// The secret: special characters, percent-encoded in the URL.
const SECRET: &str = "Sup3r-S3cret/pw:@%+";
/// A wrong password tried on the way; it must not leak either.
const WRONG: &str = "Wr0ng-S3cret-Pa55";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metrics {
    user: String,
    timeframe: String,
    value: u64,
}

fn metrics_of(user: &str, timeframe: &str) -> Metrics {
    Metrics {
        user: user.to_owned(),
        timeframe: timeframe.to_owned(),
        value: (user.len() * 31 + timeframe.len()) as u64,
    }
}

static OK_RUNS: AtomicUsize = AtomicUsize::new(0);
static DENIED_RUNS: AtomicUsize = AtomicUsize::new(0);
static USER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// In a namespace the ACL user may use.
#[cache_result(ttl = 600, namespace = "ok")]
async fn allowed(user: &str, timeframe: &str) -> Result<Metrics, String> {
    OK_RUNS.fetch_add(1, SeqCst);
    Ok(metrics_of(user, timeframe))
}

/// In a namespace the ACL user may not touch.
#[cache_result(ttl = 600, namespace = "denied")]
async fn denied(user: &str, timeframe: &str) -> Metrics {
    DENIED_RUNS.fetch_add(1, SeqCst);
    metrics_of(user, timeframe)
}

#[cache_user_specific(ttl = 600, data_type = "reports")]
async fn user_report(user_id: &str, size: usize) -> Vec<u8> {
    USER_RUNS.fetch_add(1, SeqCst);
    let mut v = user_id.as_bytes().to_vec();
    v.resize(size, 7);
    v
}

/// The forms the secret could leak in: raw, percent-encoded, and distinctive pieces.
fn leaks(text: &str) -> Option<&'static str> {
    [
        SECRET,
        "Sup3r-S3cret%2Fpw",
        "Sup3r-S3cret",
        "S3cret/pw",
        WRONG,
        "Wr0ng-S3cret",
    ]
    .into_iter()
    .find(|needle| text.contains(needle))
}

#[test]
fn password_never_appears_and_a_limited_acl_user_gets_clear_errors() {
    let capture = Capture::global();
    let mut server = RedisServer::start(ServerConfig {
        acl_user: Some(AclUser {
            name: "app".to_owned(),
            password: SECRET.to_owned(),
            // Our keys in namespaces `ok` and `users` and the user indexes; no `denied`;
            // INFO is in @dangerous but health wants it.
            rules: "~tradistry:ok:* ~tradistry:users:* ~tradistry:__index:* +@all -@dangerous +info +dbsize"
                .to_owned(),
        }),
        tls: true,
        ..ServerConfig::default()
    });
    let url = server.url();
    assert!(url.contains("Sup3r-S3cret%2Fpw"), "{url}");
    assert!(
        leaks(&url).is_some(),
        "the leak detector finds the URL's password"
    );
    let ca = server.ca_cert_path().to_owned();
    let config = || {
        builder(&url)
            .ca_certs(&ca)
            .max_value_bytes(4096)
            .connect_timeout(Duration::from_secs(1))
            .socket_timeout(Duration::from_secs(1))
    };
    let cache = cache_runtime::init(config().build().unwrap()).expect("init");
    let mut texts: Vec<String> = vec![
        format!("{:?}", config().build().unwrap()),
        format!("{}", config().build().unwrap()),
        format!("{cache:?}"),
    ];

    // 1. Decorated calls while everything works: misses, hits, stores, clears.
    block_on(async {
        for _ in 0..3 {
            assert_eq!(allowed("u1", "30d").await, Ok(metrics_of("u1", "30d")));
            assert_eq!(user_report("u1", 16).await.len(), 16);
        }
        assert_eq!(OK_RUNS.load(SeqCst), 1);
        assert_eq!(USER_RUNS.load(SeqCst), 1);
        texts.push(serde_json::to_string(&cache.health().await).unwrap());
        texts.push(serde_json::to_string(&cache.stats().await).unwrap());
        texts.push(format!("{:?}", cache.pool_stats()));
        let service = CacheService::new(cache.clone());
        service
            .cache_user_data("u1", "profile", "p", None)
            .await
            .unwrap();
        assert_eq!(service.clear_all_user_cache("u1").await.unwrap(), 2);
    });

    // 2. The limited ACL user: decorated calls in a forbidden namespace still return the
    //    right value; manual operations get a clear Auth error.
    let seed_denied = |server: &RedisServer| {
        redis::cmd("SET")
            .arg("tradistry:denied:seed")
            .arg("x")
            .exec(&mut raw_client(server))
            .unwrap();
    };
    seed_denied(&server);
    block_on(async {
        for _ in 0..3 {
            assert_eq!(denied("u2", "7d").await, metrics_of("u2", "7d"));
        }
        assert_eq!(DENIED_RUNS.load(SeqCst), 3, "never cached, never a failure");
        let ns = cache.namespace("denied").unwrap();
        for err in [
            ns.set("k", &1u8, Some(TTL)).await.unwrap_err(),
            ns.get::<u8>("k").await.unwrap_err(),
            cache.clear_namespace("denied").await.unwrap_err(),
        ] {
            let text = err.to_string();
            println!("limited ACL user: {text}");
            assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
            assert!(text.to_uppercase().contains("NOPERM"), "{text}");
            assert!(text.contains("ACL"), "{text}");
            texts.push(format!("{text} {err:?}"));
        }
        let health = cache.health().await;
        assert_eq!(health.status, "healthy", "{health:?}");
    });
    let denied_warnings: Vec<String> = capture
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("WARN") && l.contains("tradistry:denied:"))
        .collect();
    assert!(
        denied_warnings
            .iter()
            .any(|l| l.to_uppercase().contains("NOPERM") && l.contains("ACL rules")),
        "decorated calls refused by the ACL should log why: {denied_warnings:#?}"
    );

    // 3. A corrupt value at our key, and a value over the size limit.
    let key = allowed_cache_key("u1", "30d").unwrap();
    redis::cmd("SET")
        .arg(&key)
        .arg(b"\xC1\x01garbage")
        .exec(&mut raw_client(&server))
        .unwrap();
    block_on(async {
        assert_eq!(allowed("u1", "30d").await, Ok(metrics_of("u1", "30d")));
        assert_eq!(user_report("u3", 10_000).await.len(), 10_000);
    });

    // 4. The server killed: errors, breaker, then back.
    server.stop();
    block_on(async {
        for i in 0..8 {
            assert_eq!(
                allowed("u4", &format!("{i}d")).await,
                Ok(metrics_of("u4", &format!("{i}d")))
            );
        }
        let ns = cache.namespace("ok").unwrap();
        if let Err(e) = ns.set("k", &1u8, Some(TTL)).await {
            texts.push(format!("{e} {e:?}"));
        }
        texts.push(serde_json::to_string(&cache.health().await).unwrap());
        texts.push(serde_json::to_string(&cache.stats().await).unwrap());
        let (code, text) = cachectl(&["ping"], config().build()).await;
        assert_eq!(code, EXIT_UNREACHABLE, "{text}");
        texts.push(text);
    });
    server.restart();
    block_on(async {
        let resumed = poll_until(
            Duration::from_secs(5),
            Duration::from_millis(20),
            async || {
                let runs = OK_RUNS.load(SeqCst);
                assert_eq!(allowed("u5", "1y").await, Ok(metrics_of("u5", "1y")));
                OK_RUNS.load(SeqCst) == runs
            },
        )
        .await;
        assert!(
            resumed.is_some(),
            "caching did not resume after the restart"
        );
        texts.push(serde_json::to_string(&cache.health().await).unwrap());
        texts.push(serde_json::to_string(&cache.stats().await).unwrap());
    });

    // The secret was really in play: the restarted server holds our keys.
    assert!(keyspace(&server)
        .keys()
        .any(|k| k.starts_with("tradistry:ok:")));

    // 5. cachectl, every command, text and JSON; a wrong password; an invalid URL.
    seed_denied(&server);
    block_on(async {
        for args in [
            &["ping"][..],
            &["--json", "ping"],
            &["health"],
            &["--json", "health"],
            &["stats"],
            &["--json", "stats"],
            &["clear", "--user", "u1", "--yes"],
            &["--json", "clear", "--namespace", "ok", "--yes"],
        ] {
            let (code, text) = cachectl(args, config().build()).await;
            assert_eq!(code, EXIT_OK, "{text}");
            texts.push(text);
        }
        let (code, text) = cachectl(
            &["clear", "--namespace", "denied", "--yes"],
            config().build(),
        )
        .await;
        println!("{text}");
        assert_eq!(code, EXIT_AUTH, "the ACL refuses: {text}");
        assert!(text.to_uppercase().contains("NOPERM"), "{text}");
        texts.push(text);

        let wrong_url = server.url_with(Some("app"), Some(WRONG));
        let wrong = || builder(&wrong_url).ca_certs(&ca).build();
        for args in [&["ping"][..], &["--json", "health"]] {
            let (code, text) = cachectl(args, wrong()).await;
            assert_ne!(code, EXIT_OK, "{text}");
            texts.push(text);
        }
        let err = Cache::new(wrong().unwrap())
            .unwrap()
            .namespace("ok")
            .unwrap()
            .get::<u8>("k")
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
        texts.push(format!("{err} {err:?}"));

        let bad = CacheConfig::from_vars([("REDIS_URL", format!("{url}/notadb"))]);
        let (code, text) = cachectl(&["ping"], bad).await;
        assert_ne!(code, EXIT_OK, "{text}");
        texts.push(text);
    });

    let lines = capture.lines();
    for level in ["DEBUG", "INFO", "WARN"] {
        assert!(
            lines.iter().any(|l| l.starts_with(level)),
            "no {level} records captured"
        );
    }
    for needle in ["hit", "miss", "store"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("DEBUG cache_runtime::store") && l.contains(needle)),
            "no debug record of a {needle}"
        );
    }
    println!(
        "searched {} log records and {} reports, errors and cachectl outputs",
        lines.len(),
        texts.len()
    );
    for text in texts.iter().chain(&lines) {
        if let Some(needle) = leaks(text) {
            panic!("the password leaked ({needle:?}): {text}");
        }
    }
}

/// The configuration builder is `Debug` too (and is what an application logs while it
/// assembles its settings): it must not show the password, whether given in the URL or
/// on its own.
#[test]
fn config_builder_debug_does_not_show_the_password() {
    let url = format!(
        "rediss://app:{}@redis.example.com:6380/0",
        "Sup3r-S3cret%2Fpw%3A%40%25%2B"
    );
    for (how, b) in [
        ("in the URL", CacheConfig::builder().url(&url)),
        (
            "as a part",
            CacheConfig::builder().host("h").password(SECRET),
        ),
    ] {
        let shown = format!("{b:?}");
        assert!(leaks(&shown).is_none(), "password {how} shown: {shown}");
    }
}
