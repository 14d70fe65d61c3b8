//! Connecting to real Redis servers: authentication and ACLs, TLS (CA, host names,
//! `cert_reqs`, mutual TLS), secrets never shown, unreachable servers, reconnection,
//! the connection bound and the socket timeout.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{Cache, CacheConfig, CacheConfigBuilder, CacheError, CertReqs};
use cache_tests::{keyspace, raw_client, RedisServer, TlsOptions};

const TTL: Duration = Duration::from_secs(600);

fn builder(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
}

/// For TLS servers whose handshake must fail with its cause. A failed handshake fails
/// fast, but on a loaded machine it may take longer than 2 s (the driver retries the
/// connect), and the request timer, which covers the wait for a connection, would then
/// report a timeout instead of the cause: long timeouts, the connect's shorter than the
/// request's, so a request gets the connect's own, classified error.
fn tls_builder(url: &str) -> CacheConfigBuilder {
    builder(url)
        .connect_timeout(Duration::from_secs(5))
        .socket_timeout(Duration::from_secs(10))
}

fn cache(b: CacheConfigBuilder) -> Cache {
    Cache::new(b.build().expect("valid config")).expect("cache")
}

/// A set + get round trip that must work.
async fn roundtrip(cache: &Cache) {
    let ns = cache.namespace("conn").unwrap();
    ns.set("k", "v", Some(TTL)).await.expect("set");
    assert_eq!(
        ns.get::<String>("k").await.expect("get").as_deref(),
        Some("v")
    );
}

/// The error of a set, which must fail.
async fn set_error(cache: &Cache) -> CacheError {
    cache
        .namespace("conn")
        .unwrap()
        .set("k", "v", Some(TTL))
        .await
        .expect_err("set should fail")
}

/// A port on 127.0.0.1 with nothing listening (a moment ago).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A host name other than `localhost` that resolves to 127.0.0.1 (from /etc/hosts), so a
/// certificate issued for `localhost`/`127.0.0.1` does not match it.
fn other_loopback_name() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next()? == "127.0.0.1").then(|| parts.map(str::to_owned).collect::<Vec<_>>())
        })
        .flatten()
        .find(|name| {
            !name.starts_with("localhost")
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
}

// ---------------------------------------------------------------- log capture

/// A minimal `tracing` subscriber that records every event as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `fut` on a fresh 2-worker runtime whose every thread logs into the returned
/// capture (thread-scoped: other tests are not affected).
fn run_capturing<F: std::future::Future>(fut: F) -> (F::Output, Vec<String>) {
    let capture = Capture::default();
    let dispatch = tracing::Dispatch::new(capture.clone());
    let for_workers = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The guard lives as long as the worker thread.
            std::mem::forget(tracing::dispatcher::set_default(&for_workers));
        })
        .build()
        .unwrap();
    let out = tracing::dispatcher::with_default(&dispatch, || runtime.block_on(fut));
    drop(runtime);
    (out, capture.lines())
}

// ------------------------------------------------------------ auth and ACLs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_password_connects_and_works() {
    let server = RedisServer::with_acl_user("app", "s3cret", "~* +@all");
    let c = cache(builder(&server.url()));
    roundtrip(&c).await;
    assert!(keyspace(&server).contains_key("tradistry:conn:k"));
    let health = c.health().await;
    assert_eq!((health.status, health.connected), ("healthy", true));

    // The same user given as parts instead of in the URL.
    let c = cache(
        CacheConfig::builder()
            .host("127.0.0.1")
            .port(server.port())
            .username("app")
            .password("s3cret"),
    );
    roundtrip(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error_without_the_password() {
    const WRONG: &str = "Wr0ng-Pa55word-xyz";
    let server = RedisServer::with_acl_user("app", "s3cret", "~* +@all");
    let c = cache(builder(&server.url_with(Some("app"), Some(WRONG))));
    let err = set_error(&c).await;
    let text = format!("{err} {err:?}");
    assert!(matches!(err, CacheError::Auth { .. }), "{text}");
    assert!(text.contains("REDIS_PASSWORD"), "{text}");
    assert!(!text.contains(WRONG), "the password leaked: {text}");
    // Reads fail the same way (never a panic, never a silent miss).
    let err = c.namespace("conn").unwrap().get::<String>("k").await;
    assert!(
        matches!(err, Err(CacheError::Auth { .. } | CacheError::Unavailable)),
        "{err:?}"
    );
    let health = c.health().await;
    assert_eq!((health.status, health.connected), ("unhealthy", false));
    let json = serde_json::to_string(&health).unwrap();
    assert!(!json.contains(WRONG), "{json}");

    // requirepass server, wrong password.
    let server = RedisServer::with_password("right-one");
    let err = set_error(&cache(builder(&server.url_with(None, Some(WRONG))))).await;
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(WRONG));
}

/// No password for a server that needs one: the connection opens (no AUTH is sent), and
/// every command is refused with NOAUTH. Reads and writes must both say `Auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_password_is_an_auth_error_on_reads_and_writes() {
    let server = RedisServer::with_password("right-one");
    let c = cache(builder(&server.url_with(None, None)));
    let ns = c.namespace("conn").unwrap();
    let service = cache_runtime::service::CacheService::new(c.clone());
    let errors: Vec<(&str, CacheError)> = vec![
        ("get", ns.get::<String>("k").await.unwrap_err()),
        ("exists", ns.exists("k").await.unwrap_err()),
        ("increment", ns.increment("n", 1, None).await.unwrap_err()),
        // These run as pipelines: the NOAUTH inside must be recognised too.
        ("set", ns.set("k", "v", Some(TTL)).await.unwrap_err()),
        ("delete", ns.delete("k").await.unwrap_err()),
        (
            "cache_user_data",
            service
                .cache_user_data("u", "profile", "p", None)
                .await
                .unwrap_err(),
        ),
    ];
    let wrong: Vec<String> = errors
        .iter()
        .filter(|(_, e)| !matches!(e, CacheError::Auth { .. }))
        .map(|(op, e)| format!("{op}: {e:?}"))
        .collect();
    assert!(wrong.is_empty(), "not reported as Auth errors: {wrong:#?}");
    for (op, e) in &errors {
        assert!(e.to_string().contains("REDIS_PASSWORD"), "{op}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_acl_user_gets_auth_errors_on_writes() {
    let server = RedisServer::with_acl_user("reader", "pw", "~allowed:* +get +ping");
    let c = cache(builder(&server.url()).key_prefix("allowed"));
    let ns = c.namespace("ro").unwrap();
    // Reads are allowed.
    assert_eq!(ns.get::<String>("k").await.unwrap(), None);
    // Writes are refused by the ACL: an Auth error naming the permission problem.
    let err = ns.set("k", "v", Some(TTL)).await.unwrap_err();
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
    assert!(err.to_string().to_uppercase().contains("NOPERM"), "{err}");
    let err = ns.increment("n", 1, None).await.unwrap_err();
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
    let err = ns.delete("k").await.unwrap_err();
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
    // A key outside the allowed pattern: refused even for reads.
    let other = cache(builder(&server.url()));
    let err = other
        .namespace("ro")
        .unwrap()
        .get::<String>("k")
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
    // Health needs PING only; the INFO fields it may not read are null, not an error.
    let health = c.health().await;
    assert_eq!((health.status, health.connected), ("healthy", true));
    assert_eq!(health.info.server.version, None);
    // Stats cannot read anything: it reports why, it does not fail or panic.
    let stats = c.stats().await;
    assert!(stats.error.is_some(), "{stats:?}");
    assert!(keyspace(&server).is_empty());
}

// --------------------------------------------------------------------- TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_works_by_ip_and_by_localhost() {
    let server = RedisServer::tls(TlsOptions::default());
    let by_ip = cache(tls_builder(&server.url()).ca_certs(server.ca_cert_path()));
    roundtrip(&by_ip).await;
    let by_name = cache(
        tls_builder(&format!("rediss://localhost:{}", server.port()))
            .ca_certs(server.ca_cert_path()),
    );
    roundtrip(&by_name).await;
    assert!(keyspace(&server).contains_key("tradistry:conn:k"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_wrong_ca_is_a_tls_error() {
    let server = RedisServer::tls(TlsOptions::default());
    let c = cache(tls_builder(&server.url()).ca_certs(server.wrong_ca_path()));
    let err = set_error(&c).await;
    let text = err.to_string();
    assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
    assert!(
        text.starts_with(&format!(
            "TLS handshake with 127.0.0.1:{} failed: ",
            server.port()
        )),
        "{text}"
    );
    assert_unknown_issuer(&text);
    let health = c.health().await;
    assert_eq!(health.status, "unhealthy");
    let health_error = health.error.as_deref().unwrap_or("");
    assert!(health_error.contains("TLS"), "{health:?}");
    assert!(health_error.contains(UNKNOWN_ISSUER), "{health:?}");

    // No CA at all: the system roots do not know the test CA either.
    let c = cache(tls_builder(&server.url()));
    let err = set_error(&c).await;
    assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
    assert_unknown_issuer(&err.to_string());
}

/// How the runtime words the causes of a failed handshake (`backend/redis/errors.rs`,
/// `tls_failure`, from the rustls error).
const UNKNOWN_ISSUER: &str =
    "the server's certificate is signed by a CA this client does not trust";
const WRONG_HOST_NAME: &str = "the server's certificate is not valid for the host name";
const PLAIN_PORT: &str = "the port serves plain Redis";
const CLIENT_CERT_REQUIRED: &str = "requires a client certificate";

/// The CA is not trusted: the error says so, points at REDIS_SSL_CA_CERTS, and names no
/// other cause (host name, plain port, client certificate).
fn assert_unknown_issuer(text: &str) {
    assert!(
        text.contains(UNKNOWN_ISSUER) && text.contains("REDIS_SSL_CA_CERTS"),
        "the error should say the certificate's CA is not trusted: {text}"
    );
    for wrong in [WRONG_HOST_NAME, PLAIN_PORT, CLIENT_CERT_REQUIRED] {
        assert!(!text.contains(wrong), "wrong cause {wrong:?} in: {text}");
    }
}

#[test]
fn tls_cert_reqs_none_connects_without_a_ca_and_warns() {
    let server = RedisServer::tls(TlsOptions::default());
    let url = server.url();
    let (result, logs) = run_capturing(async move {
        let c = Cache::new(tls_builder(&url).cert_reqs(CertReqs::None).build()?)?;
        let ns = c.namespace("conn").unwrap();
        ns.set("k", "v", Some(TTL)).await?;
        ns.get::<String>("k").await
    });
    assert_eq!(result.unwrap().as_deref(), Some("v"));
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("NOT verified")),
        "no warning about unverified certificates in {logs:#?}"
    );
}

#[test]
fn tls_cert_reqs_optional_skips_only_the_host_name() {
    let server = RedisServer::tls(TlsOptions::default());
    let ca = server.ca_cert_path().to_owned();
    let port = server.port();
    let wrong_ca = server.wrong_ca_path().to_owned();
    let alias = other_loopback_name();
    let ((), logs) = run_capturing(async move {
        let optional = |host: &str, ca: &std::path::Path| {
            cache(
                tls_builder(&format!("rediss://{host}:{port}"))
                    .cert_reqs(CertReqs::Optional)
                    .ca_certs(ca),
            )
        };
        roundtrip(&optional("localhost", &ca)).await;
        roundtrip(&optional("127.0.0.1", &ca)).await;
        // The chain is still verified.
        let err = set_error(&optional("127.0.0.1", &wrong_ca)).await;
        assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
        assert_unknown_issuer(&err.to_string());
        if let Some(alias) = &alias {
            // A name the certificate does not list: refused when required, fine when optional.
            roundtrip(&optional(alias, &ca)).await;
            let required = cache(
                tls_builder(&format!("rediss://{alias}:{port}"))
                    .cert_reqs(CertReqs::Required)
                    .ca_certs(&ca),
            );
            let err = set_error(&required).await;
            assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(WRONG_HOST_NAME), "{text}");
            assert!(!text.contains(UNKNOWN_ISSUER), "{text}");
        } else {
            eprintln!("no loopback alias in /etc/hosts: host-name mismatch not exercised");
        }
    });
    assert!(
        logs.iter()
            .any(|l| l.starts_with("WARN") && l.contains("host name is NOT")),
        "no warning about the unverified host name in {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let server = RedisServer::tls(TlsOptions {
        require_client_cert: true,
        ..TlsOptions::default()
    });
    let with_cert = cache(
        tls_builder(&server.url())
            .ca_certs(server.ca_cert_path())
            .client_cert(server.client_cert_path(), server.client_key_path()),
    );
    roundtrip(&with_cert).await;

    let without = cache(tls_builder(&server.url()).ca_certs(server.ca_cert_path()));
    let err = set_error(&without).await;
    eprintln!("mTLS without a client certificate: {err:?}");
    assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(CLIENT_CERT_REQUIRED), "{text}");
    for wrong in [UNKNOWN_ISSUER, WRONG_HOST_NAME, PLAIN_PORT] {
        assert!(!text.contains(wrong), "wrong cause {wrong:?} in: {text}");
    }

    // A certificate without its key (or the reverse) is a configuration error.
    let err = CacheConfig::builder()
        .url(server.url())
        .client_cert(server.client_cert_path(), "/nonexistent/client.key")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("REDIS_SSL_KEYFILE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_mixed_up_fail_cleanly() {
    let tls = RedisServer::tls(TlsOptions::default());
    let plain = RedisServer::plain();
    // rediss:// to a plain server. The plain server waits for a line that a ClientHello
    // never ends, so this is bounded by the timeouts rather than refused at once.
    let rediss_to_plain = || {
        cache(builder(&format!("rediss://127.0.0.1:{}", plain.port())).ca_certs(tls.ca_cert_path()))
    };
    // An operation: a connection fault. (Its own timer, the 2 s socket timeout, races
    // the 2 s connect timeout, so it says either "did not answer" or the TLS cause.)
    let start = Instant::now();
    let err = set_error(&rediss_to_plain()).await;
    eprintln!("rediss:// to a plain port: {:?} {err}", start.elapsed());
    assert!(err.is_connection_fault(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // `connect()`, which waits for the connect itself, names the cause: a TLS error that
    // says the port serves plain Redis (and no other cause).
    let start = Instant::now();
    let err = rediss_to_plain().connect().await.unwrap_err();
    eprintln!(
        "connect(), rediss:// to a plain port: {:?} {err}",
        start.elapsed()
    );
    assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(PLAIN_PORT), "{text}");
    for wrong in [UNKNOWN_ISSUER, WRONG_HOST_NAME, CLIENT_CERT_REQUIRED] {
        assert!(!text.contains(wrong), "wrong cause {wrong:?} in: {text}");
    }
    // The connect timeout, plus the runtime's 1 s TCP probe that tells a plain port from
    // an unreachable one, plus scheduling.
    assert!(start.elapsed() < Duration::from_secs(5));
    // redis:// to a TLS port: fails (the server drops the connection), within the timeouts.
    let c = cache(builder(&format!("redis://127.0.0.1:{}", tls.port())));
    let start = Instant::now();
    let err = set_error(&c).await;
    eprintln!("redis:// to a TLS port: {err}");
    assert!(err.is_connection_fault(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ----------------------------------------------------------------- secrets

#[test]
fn password_never_appears_in_config_errors_reports_or_logs() {
    const SECRET: &str = "Sup3r-S3cret/pw:@%";
    let encoded_fragment = "Sup3r-S3cret%2Fpw";
    let server = RedisServer::with_password(SECRET);
    let good_url = server.url();
    assert!(good_url.contains(encoded_fragment), "{good_url}");
    let down_url = format!(
        "redis://:{}@127.0.0.1:{}",
        good_url.split(['@', ':']).nth(2).unwrap(),
        closed_port()
    );
    let (texts, logs) = run_capturing(async move {
        let mut texts = Vec::new();
        for url in [&good_url, &down_url] {
            let config = builder(url).build().unwrap();
            texts.push(format!("{config:?}"));
            texts.push(format!("{config}"));
            let c = Cache::new(config).unwrap();
            texts.push(format!("{c:?}"));
            let ns = c.namespace("conn").unwrap();
            if let Err(e) = ns.set("k", "v", Some(TTL)).await {
                texts.push(format!("{e} {e:?}"));
            }
            if let Err(e) = ns.get::<String>("k").await {
                texts.push(format!("{e} {e:?}"));
            }
            texts.push(serde_json::to_string(&c.health().await).unwrap());
            texts.push(serde_json::to_string(&c.stats().await).unwrap());
            texts.push(format!("{:?}", c.pool_stats()));
        }
        // Invalid configs that carry the password.
        for bad in [
            format!("{good_url}/notadb"),
            good_url.replacen("redis://", "http://", 1),
        ] {
            let err = CacheConfig::from_vars([("REDIS_URL", bad.as_str())]).unwrap_err();
            texts.push(format!("{err} {err:?}"));
        }
        texts
    });
    assert!(texts.len() >= 12, "{texts:#?}");
    // The down server did produce errors that were checked.
    assert!(
        texts.iter().any(|t| t.contains("cannot reach Redis")),
        "{texts:#?}"
    );
    for text in texts.iter().chain(&logs) {
        assert!(!text.contains("Sup3r"), "the password leaked: {text}");
    }
    assert!(!logs.is_empty());
}

// ------------------------------------------------- unreachable and recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_at_start_fails_fast_and_reports_unhealthy() {
    let port = closed_port();
    let connect_timeout = Duration::from_secs(3);
    let c = cache(
        builder(&format!("redis://127.0.0.1:{port}"))
            .connect_timeout(connect_timeout)
            .socket_timeout(Duration::from_secs(3)),
    );
    let ns = c.namespace("conn").unwrap();
    for round in 0..6 {
        let start = Instant::now();
        let err = match round % 3 {
            0 => ns.get::<String>("k").await.unwrap_err(),
            1 => ns.set("k", "v", Some(TTL)).await.unwrap_err(),
            _ => ns.increment("n", 1, None).await.unwrap_err(),
        };
        let took = start.elapsed();
        eprintln!("round {round}: {took:?} {err}");
        assert!(
            matches!(
                err,
                CacheError::Unreachable { .. } | CacheError::Unavailable
            ),
            "{err:?}"
        );
        assert!(
            took < connect_timeout / 2,
            "a refused connection took {took:?} (connect timeout {connect_timeout:?})"
        );
        if let CacheError::Unreachable { endpoint, .. } = &err {
            assert_eq!(endpoint, &format!("127.0.0.1:{port}"));
            assert!(err.to_string().contains("REDIS_URL"), "{err}");
        }
    }
    assert!(c.clear_namespace("conn").await.is_err());
    assert!(c.clear_user("u").await.is_err());
    let health = c.health().await;
    assert_eq!(
        (health.status, health.connected, health.backend),
        ("unhealthy", false, "redis")
    );
    assert!(health.error.is_some(), "{health:?}");
    // Six connection faults in a row: the circuit breaker bypasses Redis.
    assert!(health.circuit_open, "{health:?}");
    let stats = c.stats().await;
    assert!(stats.error.is_some(), "{stats:?}");
    assert_eq!(c.pool_stats().unwrap().created_connections, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_never_answers_is_bounded_by_the_timeouts() {
    // Accepts TCP connections (kernel backlog) but never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let socket_timeout = Duration::from_millis(500);
    // The guarantee: one timer, REDIS_SOCKET_TIMEOUT, bounds a request *including* the
    // wait for a connection (ARCHITECTURE.md, "Failure handling"), so the connect timeout
    // never adds to it. The connect timeout is made much longer than the bound below, so a
    // request that waited for the connect instead (3 s) cannot pass.
    let connect_timeout = Duration::from_secs(3);
    // Margin over the socket timeout: scheduling on a loaded 2-core machine (the timer
    // fires late, the task is woken late); far below the connect timeout.
    let bound = socket_timeout + Duration::from_millis(500);
    let c = cache(
        builder(&format!("redis://127.0.0.1:{port}"))
            .connect_timeout(connect_timeout)
            .socket_timeout(socket_timeout),
    );
    let ns = c.namespace("conn").unwrap();
    // Three calls: the first starts the connect (which then hangs in the background), the
    // next ones wait for that connect in progress. Fewer than the breaker's 5 faults, so
    // every one of them pays the timeout (none is bypassed).
    for _ in 0..3 {
        let start = Instant::now();
        let err = ns.get::<String>("k").await.unwrap_err();
        let took = start.elapsed();
        eprintln!("silent server: {took:?} (bound {bound:?}) {err}");
        assert!(
            matches!(err, CacheError::Timeout(d) if d == socket_timeout),
            "expected the socket timeout, got {err:?}"
        );
        assert!(took < bound, "took {took:?}, bound {bound:?}");
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_server_restart() {
    let mut server = RedisServer::plain();
    let c = cache(
        builder(&server.url())
            .connect_timeout(Duration::from_secs(1))
            .socket_timeout(Duration::from_secs(1)),
    );
    roundtrip(&c).await;

    server.stop();
    let ns = c.namespace("conn").unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        let err = ns.get::<String>("k").await.unwrap_err();
        assert!(err.is_connection_fault(), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(c.health().await.status, "unhealthy");

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(5) {
        match ns.set("k", "again", Some(TTL)).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "not reconnected within 5 s: {last:?}");
    eprintln!("reconnected {:?} after the restart", start.elapsed());
    assert_eq!(
        ns.get::<String>("k").await.unwrap().as_deref(),
        Some("again")
    );
    let health = c.health().await;
    assert_eq!((health.status, health.circuit_open), ("healthy", false));
    assert_eq!(
        keyspace(&server)["tradistry:conn:k"][..2],
        [
            cache_runtime::codec::FORMAT_V2,
            cache_runtime::CodecKind::Bincode.id()
        ]
    );
}

/// The server closes our connections while it keeps running (`CLIENT KILL`, an idle
/// timeout, a proxy): the request that finds its connection gone fails, the lane is
/// retired, and the next request opens a fresh connection: no lasting fault, no lane
/// left dead in the pool, no connection leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_server_is_replaced_by_the_next_request() {
    let server = RedisServer::plain();
    let c = cache(builder(&server.url()).pool_max_size(2));
    roundtrip(&c).await;
    let ns = c.namespace("conn").unwrap();
    let mut raw = raw_client(&server);
    for round in 0..3 {
        let killed: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut raw)
            .unwrap();
        assert!(killed >= 1, "round {round}: no connection of ours to kill");
        // At most the first request after the kill fails, with a connection fault.
        let mut failed = 0;
        let mut value = None;
        for _ in 0..3 {
            match ns.get::<String>("k").await {
                Ok(v) => {
                    value = v;
                    break;
                }
                Err(e) => {
                    assert!(e.is_connection_fault(), "round {round}: {e:?}");
                    failed += 1;
                }
            }
        }
        assert!(failed <= 1, "round {round}: {failed} requests failed");
        assert_eq!(value.as_deref(), Some("v"), "round {round}");
        let stats = c.pool_stats().unwrap();
        assert!(
            (1..=2).contains(&stats.created_connections),
            "round {round}: {stats:?}"
        );
    }
    let health = c.health().await;
    assert_eq!((health.status, health.circuit_open), ("healthy", false));
    // The server sees only live connections: ours (at most 2) and the raw one.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut raw).unwrap();
    assert!(list.lines().count() <= 3, "{list}");
}

// ------------------------------------------------------ pool and timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stays_within_its_bound() {
    let server = RedisServer::plain();
    let c = cache(builder(&server.url()).pool_max_size(3));
    // Connected first: the cold-start burst is `cold_start_burst_of_manual_ops_succeeds`.
    roundtrip(&c).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50 {
        let c = c.clone();
        tasks.spawn(async move {
            let ns = c.namespace("pool").unwrap();
            for i in 0..20 {
                let key = format!("{t}-{i}");
                ns.set(&key, &vec![t as u8; 4096], Some(TTL)).await?;
                assert_eq!(ns.get::<Vec<u8>>(&key).await?, Some(vec![t as u8; 4096]));
            }
            Ok::<_, CacheError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let stats = c.pool_stats().unwrap();
    eprintln!("pool after 50 concurrent tasks: {stats:?}");
    assert_eq!(stats.max_connections, 3);
    assert!((1..=3).contains(&stats.created_connections), "{stats:?}");
    // The server agrees: at most 3 clients besides the one asking.
    let mut raw = raw_client(&server);
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut raw).unwrap();
    assert!(list.lines().count() <= 4, "{list}");
    let health = c.health().await;
    assert_eq!(health.info.pool.max_connections, Some(3));
    assert!(health.info.pool.created_connections.unwrap() <= 3);
}

/// 50 manual operations at once on a fresh cache, with a healthy (if slow) server: all
/// succeed.
/// (Today only the caller that opens the first connection succeeds; the others get
/// `Unavailable`, whose message blames "repeated Redis failures" that never happened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_burst_of_manual_ops_succeeds() {
    let server = RedisServer::plain();
    let c = cache(builder(&server.url()).pool_max_size(3));
    // A server slow to answer (busy for 300 ms) makes the first connect take a while, as
    // over a WAN or TLS; well within the 2 s timeouts.
    let mut raw = raw_client(&server);
    let busy = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(0.3)
            .exec(&mut raw)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut tasks = tokio::task::JoinSet::new();
    let start_line = Arc::new(tokio::sync::Barrier::new(50));
    for t in 0..50 {
        let c = c.clone();
        let start_line = Arc::clone(&start_line);
        tasks.spawn(async move {
            start_line.wait().await;
            c.namespace("burst")
                .unwrap()
                .set(&format!("k{t}"), &t, Some(TTL))
                .await
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.unwrap() {
            errors.push(e.to_string());
        }
    }
    tokio::task::spawn_blocking(move || busy.join().unwrap())
        .await
        .unwrap();
    assert!(
        errors.is_empty(),
        "{} of 50 first operations failed against a healthy server, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(keyspace(&server).len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_timeout_bounds_a_stalled_server() {
    let server = RedisServer::plain();
    let socket_timeout = Duration::from_millis(300);
    let c = cache(builder(&server.url()).socket_timeout(socket_timeout));
    roundtrip(&c).await;

    let mut raw = raw_client(&server);
    let sleeper = std::thread::spawn(move || {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(2)
            .exec(&mut raw)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let ns = c.namespace("conn").unwrap();
    let start = Instant::now();
    let result = ns.get::<String>("k").await;
    let took = start.elapsed();
    eprintln!("get during DEBUG SLEEP: {took:?} {result:?}");
    match result {
        Err(CacheError::Timeout(d)) => assert_eq!(d, socket_timeout),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    tokio::task::spawn_blocking(move || sleeper.join().unwrap())
        .await
        .unwrap();

    // Once the server answers again, so does the cache.
    let start = Instant::now();
    loop {
        match ns.get::<String>("k").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some("v"));
                break;
            }
            Err(e) if start.elapsed() < Duration::from_secs(5) => {
                eprintln!("after the stall: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after the stall: {e:?}"),
        }
    }
}
