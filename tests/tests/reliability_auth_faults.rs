//! Faults that must trip the circuit breaker at once: refused credentials (a rotated
//! password) and `rediss://` pointed at a plain Redis port. Both fail every request the
//! same way until the configuration or the server changes, so paying for them on every
//! call (a failed read, then a failed store; or the socket timeout) only makes the cache
//! slower than no cache. After the first failure calls bypass Redis, health and `cachectl`
//! name the cause, and the breaker's probe notices when it works again.
//!
//! Each test has its own servers, its own [`Cache`] (through `with_cache`) and its own
//! decorated function, so they may run in parallel.

mod reliability_support;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cache_runtime::cli::{self, Io, EXIT_AUTH, EXIT_TLS};
use cache_runtime::error::AuthCause;
use cache_runtime::{cache_result, with_cache, Cache, CacheConfig, CacheConfigBuilder, CacheError};
use cache_tests::{AclUser, RedisServer, ServerConfig};
use reliability_support::Capture;

/// The body's own time: the yardstick of "within 2x of the body".
const BODY: Duration = Duration::from_millis(50);
const CALLS: usize = 20;

/// The default socket timeout, which a handshake against a plain port used to wait out.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

static ROTATION_RUNS: AtomicU64 = AtomicU64::new(0);
static TLS_RUNS: AtomicU64 = AtomicU64::new(0);
static ACL_OK_RUNS: AtomicU64 = AtomicU64::new(0);
static ACL_DENIED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_result(ttl = 600, namespace = "rotation")]
async fn rotation_body(x: u64) -> u64 {
    ROTATION_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(BODY).await;
    x * 7 + 1
}

#[cache_result(ttl = 600, namespace = "tlsmix")]
async fn tls_body(x: u64) -> u64 {
    TLS_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(BODY).await;
    x * 5 + 3
}

#[cache_result(ttl = 600, namespace = "aclok")]
async fn acl_allowed(x: u64) -> u64 {
    ACL_OK_RUNS.fetch_add(1, SeqCst);
    x + 11
}

#[cache_result(ttl = 600, namespace = "acldenied")]
async fn acl_denied(x: u64) -> u64 {
    ACL_DENIED_RUNS.fetch_add(1, SeqCst);
    x + 13
}

/// The defaults' timeouts (socket 5 s, connect 10 s): the figures are theirs.
fn builder(url: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .url(url)
        .socket_timeout(SOCKET_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
}

/// The warnings logged so far that contain every one of `words`.
fn warnings(capture: &Capture, words: &[&str]) -> Vec<String> {
    capture
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("WARN") && words.iter().all(|w| l.contains(w)))
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Runs `cachectl ARGS` in-process; exit code and both streams.
async fn cachectl(args: &[&str], config: CacheConfig) -> (u8, String) {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| None;
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        cli::run(args.iter().map(|s| (*s).to_owned()), Ok(config), &mut io).await
    };
    (
        code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    )
}

/// `calls` decorated calls on fresh keys from `first`; each call's duration (values
/// checked).
async fn timed_calls(cache: &Cache, first: u64, calls: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(calls);
    for x in first..first + calls as u64 {
        let start = Instant::now();
        let got = with_cache(cache.clone(), rotation_body(x)).await;
        took.push(start.elapsed());
        assert_eq!(got, x * 7 + 1, "the cache changed a return value");
    }
    took
}

/// What 20 calls after the rotation showed.
struct Run {
    took: Vec<Duration>,
    body_runs: u64,
}

impl Run {
    async fn measure(cache: &Cache, first: u64) -> Run {
        let runs = ROTATION_RUNS.load(SeqCst);
        let took = timed_calls(cache, first, CALLS).await;
        let body_runs = ROTATION_RUNS.load(SeqCst) - runs;
        Run { took, body_runs }
    }

    /// The median of calls 6 onwards (the first five may pay for finding out).
    fn later(&self) -> Duration {
        median(&self.took[5..])
    }

    fn print(&self, what: &str) {
        let figures: Vec<String> = self.took.iter().map(|d| ms(*d)).collect();
        eprintln!(
            "{what}: {CALLS} calls (body {} ms), in ms: {}",
            ms(BODY),
            figures.join(" ")
        );
        eprintln!(
            "{what}: calls 6..{CALLS}: median {} ms ({:.2}x the body), slowest {} ms; body runs {}",
            ms(self.later()),
            self.later().as_secs_f64() / BODY.as_secs_f64(),
            ms(self.took[5..].iter().copied().max().unwrap_or_default()),
            self.body_runs,
        );
    }
}

/// Polls until a repeated call on one key is served from the cache; how long it took.
async fn until_caching_resumes(cache: &Cache, first: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    for x in first.. {
        let before = ROTATION_RUNS.load(SeqCst);
        timed_calls(cache, x, 2).await;
        // Two calls on one key, one body run: the second was a hit.
        if ROTATION_RUNS.load(SeqCst) - before == 1 {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn set_requirepass(admin: &mut redis::Connection, password: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .exec(admin)
        .expect("CONFIG SET requirepass");
}

/// A password rotated under a running cache (`CONFIG SET requirepass` plus `CLIENT KILL`,
/// so its connections must authenticate again), and a cache started after the rotation
/// with the old password (a process restarted before its configuration was updated):
/// every call returns the body's value, calls 6 onwards take less than twice the body,
/// health names authentication and reports the circuit open; once the password works
/// again, both resume caching by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_trips_the_breaker_and_caching_resumes_when_it_works_again() {
    const OLD: &str = "old-Pa55word-rot8";
    const NEW: &str = "new-Pa55word-rot9";
    let capture = Capture::global();
    let server = RedisServer::with_password(OLD);
    let config = || builder(&server.url()).build().expect("config");
    let running = Cache::new(config()).expect("cache");
    // The admin's connection outlives the rotation (CLIENT KILL skips the caller).
    let mut admin = cache_tests::raw_client(&server);

    // Warm up: a miss, then a hit.
    let warm = timed_calls(&running, 0, 1).await;
    let runs = ROTATION_RUNS.load(SeqCst);
    let hit = timed_calls(&running, 0, 1).await;
    assert_eq!(ROTATION_RUNS.load(SeqCst), runs, "the second call hits");
    eprintln!(
        "healthy: a miss took {} ms, a hit {} ms",
        ms(warm[0]),
        ms(hit[0])
    );

    set_requirepass(&mut admin, NEW);
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .expect("CLIENT KILL");
    eprintln!("rotated the password; killed {killed} connections");

    let rotated = Run::measure(&running, 1000).await;
    rotated.print("running cache, after the rotation");
    let running_health = running.health().await;
    eprintln!("running cache, health: {running_health:?}");
    // A manual operation bypassed meanwhile fails at once, naming the cause.
    let start = Instant::now();
    let manual = running
        .namespace("rotation")
        .expect("namespace")
        .get::<u64>("manual")
        .await;
    let manual_took = start.elapsed();
    eprintln!(
        "running cache, a manual get: {} ms, {manual:?}",
        ms(manual_took)
    );

    // A process started after the rotation, still configured with the old password.
    let restarted = Cache::new(config()).expect("cache");
    let stale = Run::measure(&restarted, 2000).await;
    stale.print("cache started with the old password");
    let restarted_health = restarted.health().await;
    eprintln!("cache started with the old password, health: {restarted_health:?}");
    let start = Instant::now();
    let (code, cachectl_text) = cachectl(&["ping"], config()).await;
    let cachectl_took = start.elapsed();
    eprintln!(
        "cachectl ping with the old password ({} ms, exit {code}):\n{cachectl_text}",
        ms(cachectl_took)
    );

    // The password works again (rotated back; or the configuration catches up).
    set_requirepass(&mut admin, OLD);
    let limit = Duration::from_secs(10);
    let running_resumed = until_caching_resumes(&running, 3000, limit).await;
    let restarted_resumed = until_caching_resumes(&restarted, 4000, limit).await;
    eprintln!(
        "after restoring the password, caching resumed after {running_resumed:?} (running cache) and {restarted_resumed:?} (started with the old password)"
    );
    let healed = running.health().await;
    eprintln!("running cache, health after restoring: {healed:?}");
    let warned = warnings(&capture, &["refused authentication"]);
    eprintln!("warnings naming the refused authentication: {warned:#?}");

    for (what, run, health) in [
        ("running cache", &rotated, &running_health),
        (
            "cache started with the old password",
            &stale,
            &restarted_health,
        ),
    ] {
        assert_eq!(
            run.body_runs, CALLS as u64,
            "{what}: every call ran its body"
        );
        assert!(
            run.later() < BODY * 2,
            "{what}: calls 6 onwards should bypass Redis: median {:?} against a {BODY:?} body",
            run.later()
        );
        let error = health.error.clone().unwrap_or_default();
        assert_eq!(health.status, "unhealthy", "{what}: {health:?}");
        assert!(health.circuit_open, "{what}: {health:?}");
        assert!(error.contains("authentication"), "{what}: {health:?}");
        assert!(error.contains("REDIS_PASSWORD"), "{what}: {health:?}");
        for secret in [OLD, NEW] {
            assert!(!format!("{health:?}").contains(secret), "password leaked");
        }
    }
    match &manual {
        Err(e @ CacheError::Auth { cause, .. }) => {
            assert_eq!(*cause, AuthCause::Credentials, "{e:?}");
            assert!(e.is_authentication_failure() && e.trips_breaker(), "{e:?}");
        }
        other => panic!("a manual get should fail with the cause, authentication: {other:?}"),
    }
    assert!(manual_took < BODY, "bypassed at once: {manual_took:?}");
    assert_eq!(code, EXIT_AUTH, "{cachectl_text}");
    assert!(
        cachectl_text.contains("refused authentication"),
        "{cachectl_text}"
    );
    assert!(cachectl_text.contains("rotated"), "{cachectl_text}");
    for secret in [OLD, NEW] {
        assert!(!cachectl_text.contains(secret), "password leaked");
    }
    for (what, resumed) in [
        ("running cache", running_resumed),
        ("cache started with the old password", restarted_resumed),
    ] {
        let resumed = resumed.unwrap_or_else(|| {
            panic!("{what}: caching should resume once the password works again")
        });
        assert!(resumed < Duration::from_secs(5), "{what}: {resumed:?}");
    }
    assert_eq!(healed.status, "healthy", "{healed:?}");
    assert!(!healed.circuit_open, "{healed:?}");
    // Once per cache when its breaker opened (a few more at most, if a probe met another
    // fault in between), not once per call: 40 calls ran against refused credentials.
    assert!(
        (2..=4).contains(&warned.len()),
        "expected one warning per cache: {warned:#?}"
    );
    assert!(
        warned.iter().all(|l| l.contains("bypassing the cache")),
        "{warned:#?}"
    );
    for secret in [OLD, NEW] {
        assert!(
            !capture.lines().iter().any(|l| l.contains(secret)),
            "password leaked in the logs"
        );
    }
}

/// `rediss://` at a plain Redis port: the plain server waits for a line a TLS ClientHello
/// never ends, so each handshake used to wait out the socket timeout (5 s) and say only
/// "did not answer within 5s". Now the first failure names the cause and trips the
/// breaker: later calls are fast, and health and `cachectl ping` say "TLS against a
/// plain port".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_at_a_plain_port_fails_fast_and_says_so() {
    let capture = Capture::global();
    let plain = RedisServer::plain();
    let url = format!("rediss://127.0.0.1:{}", plain.port());
    let config = || builder(&url).build().expect("config");
    let cache = Cache::new(config()).expect("cache");

    let mut took = Vec::new();
    for x in 0..8u64 {
        let start = Instant::now();
        let got = with_cache(cache.clone(), tls_body(x)).await;
        took.push(start.elapsed());
        assert_eq!(got, x * 5 + 3, "the cache changed a return value");
    }
    let figures: Vec<String> = took.iter().map(|d| ms(*d)).collect();
    eprintln!(
        "rediss:// at a plain port, 8 calls (body {} ms), in ms: {}",
        ms(BODY),
        figures.join(" ")
    );
    let health = cache.health().await;
    eprintln!("health: {health:?}");
    let start = Instant::now();
    let (code, text) = cachectl(&["ping"], config()).await;
    let cachectl_took = start.elapsed();
    eprintln!(
        "cachectl ping ({} ms, exit {code}):\n{text}",
        ms(cachectl_took)
    );

    let port = plain.port().to_string();
    let warned = warnings(&capture, &["serves plain Redis", &port]);
    eprintln!("warnings naming the plain port: {warned:#?}");

    let later = median(&took[1..]);
    assert!(
        later < BODY * 2,
        "calls 2 onwards should bypass Redis: median {later:?} against a {BODY:?} body"
    );
    assert!(
        (1..=2).contains(&warned.len()),
        "one warning, not one per call: {warned:#?}"
    );
    assert!(
        took.iter().all(|d| *d < SOCKET_TIMEOUT),
        "no call should wait out the socket timeout: {took:?}"
    );
    assert!(
        cachectl_took < SOCKET_TIMEOUT,
        "cachectl ping should not wait out a timeout: {cachectl_took:?}"
    );
    let error = health.error.clone().unwrap_or_default();
    assert!(health.circuit_open, "{health:?}");
    assert!(error.contains("plain Redis"), "{health:?}");
    assert!(error.contains("redis://"), "{health:?}");
    assert_eq!(code, EXIT_TLS, "{text}");
    assert!(text.contains("plain Redis"), "{text}");
}

/// The limit of the above: an ACL that refuses one namespace (NOPERM) is a reply about
/// that command, not a fault of the connection. Calls in the refused namespace run their
/// body every time; the breaker stays closed, so the allowed namespace keeps caching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noperm_in_one_namespace_does_not_trip_the_breaker() {
    let server = RedisServer::start(ServerConfig {
        acl_user: Some(AclUser {
            name: "app".to_owned(),
            password: "acl-Pa55word-q1".to_owned(),
            rules: "~tradistry:aclok:* ~tradistry:__index:* &* +@all -@dangerous +info".to_owned(),
        }),
        ..ServerConfig::default()
    });
    let cache = Cache::new(builder(&server.url()).build().expect("config")).expect("cache");
    let start = Instant::now();
    for x in 0..10 {
        assert_eq!(with_cache(cache.clone(), acl_denied(x)).await, x + 13);
    }
    eprintln!("10 calls refused by the ACL took {:?}", start.elapsed());
    assert_eq!(ACL_DENIED_RUNS.load(SeqCst), 10, "never cached");
    let err = cache
        .namespace("acldenied")
        .expect("namespace")
        .get::<u64>("k")
        .await
        .expect_err("the ACL refuses");
    assert!(
        matches!(
            err,
            CacheError::Auth {
                cause: AuthCause::Permission,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !err.is_authentication_failure() && !err.trips_breaker(),
        "{err:?}"
    );
    let health = cache.health().await;
    eprintln!("health after 10 refused calls: {health:?}");
    assert_eq!(health.status, "healthy", "{health:?}");
    assert!(!health.circuit_open, "{health:?}");
    for _ in 0..3 {
        assert_eq!(with_cache(cache.clone(), acl_allowed(1)).await, 12);
    }
    assert_eq!(ACL_OK_RUNS.load(SeqCst), 1, "the allowed namespace caches");
}
