//! Environment-style configuration (`CacheConfig::from_vars`, and `from_env` with a `.env`
//! file in a child process), checked against real servers where it matters.
//!
//! Nothing here touches the process environment or the current directory: tests run in
//! parallel.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cache_runtime::config::BackendConfig;
use cache_runtime::{Cache, CacheConfig, CacheError, CertReqs, CodecKind, ConfigError, KeyTtl};
use cache_tests::{keyspace, raw_client, RedisServer, TlsOptions};

const TTL: Duration = Duration::from_secs(600);

fn vars(pairs: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
    CacheConfig::from_vars(pairs.iter().copied())
}

fn error_of(pairs: &[(&str, &str)]) -> String {
    match vars(pairs) {
        Ok(c) => panic!("{pairs:?} should be rejected, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

async fn roundtrip(cache: &Cache) {
    let ns = cache.namespace("cfg").unwrap();
    ns.set("k", "v", Some(TTL)).await.expect("set");
    assert_eq!(
        ns.get::<String>("k").await.expect("get").as_deref(),
        Some("v")
    );
}

fn cache_from(pairs: &[(&str, &str)]) -> Cache {
    Cache::new(vars(pairs).expect("valid config")).expect("cache")
}

// ------------------------------------------------------------- invalid settings

#[test]
fn ssl_flag_contradicting_the_url_scheme_names_both() {
    let err = error_of(&[
        ("REDIS_URL", "redis://127.0.0.1:6380"),
        ("REDIS_SSL", "true"),
    ]);
    assert!(
        err.contains("REDIS_SSL") && err.contains("rediss://"),
        "{err}"
    );
    let err = error_of(&[
        ("REDIS_URL", "rediss://127.0.0.1:6380"),
        ("REDIS_SSL", "false"),
    ]);
    assert!(
        err.contains("REDIS_SSL") && err.contains("redis://"),
        "{err}"
    );
    let err = error_of(&[("REDIS_HOST", "h"), ("REDIS_SSL", "maybe")]);
    assert!(
        err.contains("REDIS_SSL") && err.contains("true or false"),
        "{err}"
    );
    // Agreeing settings are fine.
    vars(&[("REDIS_URL", "rediss://h:1"), ("REDIS_SSL", "true")]).unwrap();
    vars(&[("REDIS_URL", "redis://h:1"), ("REDIS_SSL", "false")]).unwrap();
}

#[test]
fn cert_reqs_must_be_a_known_value() {
    let err = error_of(&[
        ("REDIS_HOST", "h"),
        ("REDIS_SSL", "true"),
        ("REDIS_SSL_CERT_REQS", "maybe"),
    ]);
    assert!(err.contains("REDIS_SSL_CERT_REQS"), "{err}");
    assert!(err.contains("\"maybe\""), "{err}");
    for option in ["required", "optional", "none"] {
        assert!(err.contains(option), "{err}");
    }
    for (value, expected) in [
        ("required", CertReqs::Required),
        ("CERT_REQUIRED", CertReqs::Required),
        ("Optional", CertReqs::Optional),
        ("none", CertReqs::None),
        ("cert_none", CertReqs::None),
    ] {
        let c = vars(&[
            ("REDIS_URL", "rediss://h:1"),
            ("REDIS_SSL_CERT_REQS", value),
        ])
        .unwrap();
        let BackendConfig::Redis(r) = &c.backend else {
            panic!("expected Redis")
        };
        assert_eq!(r.tls.as_ref().unwrap().cert_reqs, expected, "{value}");
    }
}

#[test]
fn port_out_of_range_is_rejected() {
    for bad in ["99999", "0", "65536", "-1", "abc", "6379x"] {
        let err = error_of(&[("REDIS_HOST", "h"), ("REDIS_PORT", bad)]);
        assert!(err.contains("REDIS_PORT"), "{bad}: {err}");
        assert!(err.contains("65535"), "{bad}: {err}");
    }
    let err = error_of(&[("REDIS_URL", "redis://h:99999")]);
    assert!(err.contains("REDIS_URL"), "{err}");
    let c = vars(&[("REDIS_HOST", "h"), ("REDIS_PORT", "65535")]).unwrap();
    let BackendConfig::Redis(r) = &c.backend else {
        panic!("expected Redis")
    };
    assert_eq!(r.port, 65535);
}

#[test]
fn socket_timeouts_must_be_positive_numbers() {
    for var in ["REDIS_SOCKET_TIMEOUT", "REDIS_SOCKET_CONNECT_TIMEOUT"] {
        for bad in ["five", "5s", "0", "-1", "NaN", "inf"] {
            let err = error_of(&[("REDIS_HOST", "h"), (var, bad)]);
            assert!(err.contains(var), "{var}={bad}: {err}");
            assert!(err.contains("seconds"), "{var}={bad}: {err}");
        }
    }
    let c = vars(&[
        ("REDIS_HOST", "h"),
        ("REDIS_SOCKET_TIMEOUT", "0.5"),
        ("REDIS_SOCKET_CONNECT_TIMEOUT", "3"),
    ])
    .unwrap();
    let BackendConfig::Redis(r) = &c.backend else {
        panic!("expected Redis")
    };
    assert_eq!(r.socket_timeout, Duration::from_millis(500));
    assert_eq!(r.connect_timeout, Duration::from_secs(3));
}

#[test]
fn unreadable_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let missing_str = missing.to_str().unwrap();
    match vars(&[
        ("REDIS_URL", "rediss://h:1"),
        ("REDIS_SSL_CA_CERTS", missing_str),
    ]) {
        Err(ConfigError::Unreadable { var, path, .. }) => {
            assert_eq!(var, "REDIS_SSL_CA_CERTS");
            assert_eq!(path, missing);
        }
        other => panic!("expected Unreadable, got {other:?}"),
    }
    let err = error_of(&[
        ("REDIS_HOST", "h"),
        ("REDIS_SSL", "true"),
        ("REDIS_SSL_CA_CERTS", missing_str),
    ]);
    assert!(
        err.contains("REDIS_SSL_CA_CERTS") && err.contains("missing-ca.pem"),
        "{err}"
    );
    for var in ["REDIS_SSL_CERTFILE", "REDIS_SSL_KEYFILE"] {
        let other = if var == "REDIS_SSL_CERTFILE" {
            "REDIS_SSL_KEYFILE"
        } else {
            "REDIS_SSL_CERTFILE"
        };
        let present = dir.path().join("present.pem");
        std::fs::write(&present, "x").unwrap();
        let err = error_of(&[
            ("REDIS_URL", "rediss://h:1"),
            (var, missing_str),
            (other, present.to_str().unwrap()),
        ]);
        assert!(err.contains(var), "{err}");
        // One without the other.
        let err = error_of(&[
            ("REDIS_URL", "rediss://h:1"),
            (other, present.to_str().unwrap()),
        ]);
        assert!(
            err.contains("REDIS_SSL_CERTFILE") && err.contains("REDIS_SSL_KEYFILE"),
            "{err}"
        );
    }
    // A CA file while TLS is off is a contradiction, not silently ignored.
    let present = dir.path().join("ca.pem");
    std::fs::write(&present, "x").unwrap();
    let err = error_of(&[
        ("REDIS_URL", "redis://h:1"),
        ("REDIS_SSL_CA_CERTS", present.to_str().unwrap()),
    ]);
    assert!(err.contains("TLS is off"), "{err}");
}

/// A CA path that opens but cannot be read as a file (a directory), and a file that is not
/// PEM: rejected when the cache is built or on first use, with a TLS/config error naming
/// the CA setting, never a panic and never a silently unverified connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_ca_files_fail_clearly() {
    let server = RedisServer::tls(TlsOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let url = server.url();
    for ca in [dir.path(), garbage.as_path()] {
        let ca_str = ca.to_str().unwrap();
        let pairs = [("REDIS_URL", url.as_str()), ("REDIS_SSL_CA_CERTS", ca_str)];
        let err = match vars(&pairs) {
            Err(e) => CacheError::Config(e),
            Ok(config) => match Cache::new(config) {
                Err(e) => e,
                Ok(cache) => cache
                    .namespace("cfg")
                    .unwrap()
                    .set("k", "v", Some(TTL))
                    .await
                    .expect_err("a connection without a usable CA must fail"),
            },
        };
        eprintln!("CA {ca:?}: {err}");
        assert!(
            matches!(err, CacheError::Config(_) | CacheError::Tls { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("REDIS_SSL_CA_CERTS"), "{err}");
    }
    assert!(keyspace(&server).is_empty());
}

#[test]
fn other_invalid_values_name_their_variable() {
    for (pairs, needle) in [
        (&[("REDIS_URL", "http://h:1")][..], "redis:// or rediss://"),
        (
            &[("REDIS_URL", "redis://h:1/notadb")][..],
            "database number",
        ),
        (&[("REDIS_URL", "redis://")][..], "REDIS_URL"),
        (&[("REDIS_HOST", "user@h")][..], "REDIS_HOST"),
        (&[("REDIS_KEY_PREFIX", "a:b")][..], "REDIS_KEY_PREFIX"),
        (&[("REDIS_TTL_DEFAULT", "0")][..], "REDIS_TTL_DEFAULT"),
        (&[("REDIS_TTL_DEFAULT", "1h")][..], "REDIS_TTL_DEFAULT"),
        (&[("CACHE_CODEC", "msgpack")][..], "CACHE_CODEC"),
        (
            &[("CACHE_MAX_VALUE_BYTES", "0")][..],
            "CACHE_MAX_VALUE_BYTES",
        ),
        (
            &[("CACHE_MEMORY_MAX_ENTRIES", "0")][..],
            "CACHE_MEMORY_MAX_ENTRIES",
        ),
        (
            &[("REDIS_HOST", "h"), ("REDIS_CONNECTION_POOL_MAX_SIZE", "0")][..],
            "REDIS_CONNECTION_POOL_MAX_SIZE",
        ),
    ] {
        let err = error_of(pairs);
        assert!(err.contains(needle), "{pairs:?}: {err}");
    }
}

#[test]
fn nothing_or_empty_values_mean_the_embedded_store() {
    for pairs in [
        &[][..],
        &[("REDIS_URL", ""), ("REDIS_HOST", "  ")][..],
        &[("SOMETHING_ELSE", "redis://h:1")][..],
    ] {
        let c = vars(pairs).unwrap();
        assert!(
            matches!(c.backend, BackendConfig::Memory(_)),
            "{pairs:?}: {c:?}"
        );
        assert_eq!(Cache::new(c).unwrap().backend_kind(), "embedded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_settings_apply() {
    let cache = cache_from(&[
        ("REDIS_TTL_DEFAULT", "120"),
        ("CACHE_MAX_VALUE_BYTES", "100"),
    ]);
    let ns = cache.namespace("custom").unwrap();
    ns.set("k", "v", None).await.unwrap();
    match ns.get_ttl("k").await.unwrap() {
        KeyTtl::ExpiresIn(d) => {
            assert!(d <= Duration::from_secs(120) && d > Duration::from_secs(110))
        }
        other => panic!("{other:?}"),
    }
    let err = ns.set("big", &"x".repeat(200), None).await.unwrap_err();
    assert!(
        matches!(err, CacheError::TooLarge { limit: 100, .. }),
        "{err:?}"
    );
}

// ------------------------------------------------------------ passwords in URLs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_password_in_the_url_is_decoded() {
    const PASSWORD: &str = "p@ss:w/rd";
    let server = RedisServer::with_password(PASSWORD);
    let url = server.url();
    assert!(url.contains("p%40ss%3Aw%2Frd"), "{url}");
    let cache = cache_from(&[("REDIS_URL", url.as_str())]);
    roundtrip(&cache).await;

    // The same password as a separate variable is taken verbatim.
    let port = server.port().to_string();
    let cache = cache_from(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_PASSWORD", PASSWORD),
    ]);
    roundtrip(&cache).await;

    // Unencoded, the URL does not parse; the message says to percent-encode and does not
    // echo the password.
    let raw_url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let err = error_of(&[("REDIS_URL", raw_url.as_str())]);
    assert!(err.contains("percent-encode"), "{err}");
    assert!(!err.contains("p@ss") && !err.contains("w/rd"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_password_with_special_characters() {
    // '%' itself must be decoded exactly once: "%41" stays "%41", not "A".
    const PASSWORD: &str = "p@ss:w/rd %41#?";
    let server = RedisServer::with_acl_user("app.user-1", PASSWORD, "~* +@all");
    let cache = cache_from(&[("REDIS_URL", server.url().as_str())]);
    roundtrip(&cache).await;
    // As parts.
    let port = server.port().to_string();
    let cache = cache_from(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_USERNAME", "app.user-1"),
        ("REDIS_PASSWORD", PASSWORD),
    ]);
    roundtrip(&cache).await;
    // A password decoded twice would be "p@ss:w/rd A#?": refused.
    let twice = server.url_with(Some("app.user-1"), Some("p@ss:w/rd A#?"));
    let cache = cache_from(&[("REDIS_URL", twice.as_str())]);
    let err = cache
        .namespace("cfg")
        .unwrap()
        .set("k", "v", Some(TTL))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Auth { .. }), "{err:?}");
}

// ------------------------------------------------ variables that reach Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_host_port_and_ssl_variables() {
    let server = RedisServer::tls(TlsOptions {
        require_client_cert: true,
        ..TlsOptions::default()
    });
    let port = server.port().to_string();
    let ca = server.ca_cert_path().to_str().unwrap().to_owned();
    let cert = server.client_cert_path().to_str().unwrap().to_owned();
    let key = server.client_key_path().to_str().unwrap().to_owned();
    let cache = cache_from(&[
        ("REDIS_HOST", "localhost"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_SSL", "true"),
        ("REDIS_SSL_CA_CERTS", ca.as_str()),
        ("REDIS_SSL_CERTFILE", cert.as_str()),
        ("REDIS_SSL_KEYFILE", key.as_str()),
    ]);
    roundtrip(&cache).await;
    let cache = cache_from(&[
        ("REDIS_URL", server.url().as_str()),
        ("REDIS_SSL_CERT_REQS", "none"),
        ("REDIS_SSL_CERTFILE", cert.as_str()),
        ("REDIS_SSL_KEYFILE", key.as_str()),
    ]);
    roundtrip(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_prefix_database_and_pool_variables_reach_redis() {
    let server = RedisServer::plain();
    let url = format!("{}/3", server.url());
    let cache = cache_from(&[
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", "myapp"),
        ("CACHE_CODEC", "json"),
        ("REDIS_CONNECTION_POOL_MAX_SIZE", "2"),
        ("REDIS_TTL_DEFAULT", "120"),
    ]);
    let ns = cache.namespace("general").unwrap();
    let start = Instant::now();
    ns.set("k", &vec![1, 2, 3], None).await.unwrap();
    match ns.get_ttl("k").await.unwrap() {
        KeyTtl::ExpiresIn(d) => assert!(
            d <= Duration::from_secs(120) && d + start.elapsed() > Duration::from_secs(119),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.pool_stats().unwrap().max_connections, 2);

    // Database 3, not 0.
    assert!(keyspace(&server).is_empty(), "{:?}", keyspace(&server));
    let mut raw = raw_client(&server);
    redis::cmd("SELECT").arg(3).exec(&mut raw).unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("myapp:general:k")
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        stored[..2],
        [cache_runtime::codec::FORMAT_V2, CodecKind::Json.id()]
    );
    // Bytes 2..10 are the shape tag of `Vec<i32>`; the JSON text follows.
    assert_eq!(&stored[10..], b"[1,2,3]");
}

// --------------------------------------------------------------- .env (child)

const CHILD_MARKER: &str = "CACHE_TESTS_DOTENV_CHILD";
const DOTENV_TEST: &str = "dotenv_file_in_the_current_directory_is_read";

/// Runs this test binary again, only [`DOTENV_TEST`], in `dir` with a clean environment
/// plus `env`; returns its stdout. The parent's environment and CWD are untouched.
fn run_child(dir: &Path, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([DOTENV_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .current_dir(dir)
        .env_clear()
        .env(CHILD_MARKER, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn dotenv_file_in_the_current_directory_is_read() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        // Child mode: report what from_env() sees, on one line.
        match CacheConfig::from_env() {
            Ok(c) => println!("CONFIG-OK {c}"),
            Err(e) => println!("CONFIG-ERR {e}"),
        }
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# comment\nREDIS_URL=redis://:dotenv%40pw@127.0.0.1:6390/2\nREDIS_KEY_PREFIX=fromdotenv\nCACHE_CODEC=json\nUNRELATED=1\n",
    )
    .unwrap();
    let out = run_child(dir.path(), &[]);
    assert!(
        out.contains("CONFIG-OK redis://:***@127.0.0.1:6390/2, prefix \"fromdotenv\", codec json"),
        "{out}"
    );
    assert!(
        !out.contains("dotenv@pw") && !out.contains("dotenv%40pw"),
        "{out}"
    );

    // The environment wins over the file.
    let out = run_child(dir.path(), &[("REDIS_KEY_PREFIX", "fromenv")]);
    assert!(out.contains("prefix \"fromenv\", codec json"), "{out}");

    // A malformed file is an error that does not quote the line (it may hold a secret).
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join(".env"),
        "REDIS_PASSWORD=\"unterminated hunter2-secret\nREDIS_HOST=h\n",
    )
    .unwrap();
    let out = run_child(bad.path(), &[]);
    assert!(out.contains("CONFIG-ERR") && out.contains(".env"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");

    // No .env at all: nothing set means the embedded store.
    let empty = tempfile::tempdir().unwrap();
    let out = run_child(empty.path(), &[]);
    assert!(out.contains("CONFIG-OK embedded store"), "{out}");
}
