//! Self-tests of the real-server harness in `cache-tests`.

use std::path::Path;
use std::time::Duration;

use cache_tests::{
    keyspace, raw_async_client, raw_client, redis_available, tls_client, RedisServer, ServerConfig,
    TlsOptions,
};

fn ping(client: &redis::Client) -> redis::RedisResult<String> {
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    redis::cmd("PING").query(&mut con)
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn assert_err_contains<T: std::fmt::Debug>(result: redis::RedisResult<T>, needles: &[&str]) {
    let err = result.expect_err("expected an error");
    let text = format!("{err} {err:?}");
    eprintln!("expected error: {text}");
    let lower = text.to_lowercase();
    assert!(
        needles.iter().any(|n| lower.contains(&n.to_lowercase())),
        "error {text:?} mentions none of {needles:?}"
    );
}

#[test]
fn redis_server_is_installed() {
    assert!(redis_available(), "{}", cache_tests::REDIS_MISSING);
}

#[test]
fn plain_server_pings_and_dumps_keyspace() {
    let server = RedisServer::plain();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.host(), "127.0.0.1");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.password(), None);
    assert_eq!(ping(&server.client()).unwrap(), "PONG");

    let mut con = raw_client(&server);
    assert!(keyspace(&server).is_empty());
    redis::cmd("SET")
        .arg("a")
        .arg(b"\x00bin")
        .exec(&mut con)
        .unwrap();
    redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .exec(&mut con)
        .unwrap();
    redis::cmd("RPUSH")
        .arg("l")
        .arg("x")
        .exec(&mut con)
        .unwrap();
    // DEBUG is enabled for tests that need a slow server.
    redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(0)
        .exec(&mut con)
        .unwrap();

    let dump = keyspace(&server);
    let expected: Vec<(String, Vec<u8>)> = vec![
        ("a".into(), b"\x00bin".to_vec()),
        ("h".into(), b"hash".to_vec()),
        ("l".into(), b"list".to_vec()),
    ];
    assert_eq!(dump.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn keyspace_scans_past_one_batch() {
    let server = RedisServer::plain();
    let mut con = raw_client(&server);
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.exec(&mut con).unwrap();
    let dump = keyspace(&server);
    assert_eq!(dump.len(), 2500);
    assert_eq!(dump["k1234"], b"1234".to_vec());
}

#[tokio::test]
async fn async_raw_client_works() {
    let server = RedisServer::plain();
    let mut con = raw_async_client(&server).await;
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn password_server_requires_the_password() {
    let server = RedisServer::with_password("pw-123");
    assert_eq!(server.password(), Some("pw-123"));
    assert_eq!(
        server.url(),
        format!("redis://:pw-123@127.0.0.1:{}", server.port())
    );

    let anonymous = redis::Client::open(server.url_with(None, None)).unwrap();
    assert_err_contains(ping(&anonymous), &["NOAUTH", "Authentication required"]);

    let wrong = redis::Client::open(server.url_with(None, Some("nope"))).unwrap();
    assert_err_contains(
        ping(&wrong),
        &[
            "WRONGPASS",
            "invalid username-password",
            "authentication failed",
        ],
    );

    assert_eq!(ping(&server.client()).unwrap(), "PONG");
    assert!(keyspace(&server).is_empty());
}

#[test]
fn passwords_with_special_characters_are_quoted_and_encoded() {
    let password = "p@ss:w/rd \"quoted\" \\ #%";
    let server = RedisServer::with_password(password);
    assert_eq!(ping(&server.client()).unwrap(), "PONG");
    let anonymous = redis::Client::open(server.url_with(None, None)).unwrap();
    assert_err_contains(ping(&anonymous), &["NOAUTH"]);
}

#[test]
fn acl_user_is_restricted_and_default_user_is_locked() {
    let server = RedisServer::with_acl_user("app", "app-pw", "~allowed:* +get +ping");
    assert_eq!(server.username(), Some("app"));
    assert_eq!(server.password(), Some("app-pw"));
    assert_eq!(
        server.url(),
        format!("redis://app:app-pw@127.0.0.1:{}", server.port())
    );

    // Unauthenticated access fails: the default user has a random password.
    let anonymous = redis::Client::open(server.url_with(None, None)).unwrap();
    assert_err_contains(ping(&anonymous), &["NOAUTH"]);

    let mut admin = raw_client(&server);
    redis::cmd("SET")
        .arg("allowed:k")
        .arg("v")
        .exec(&mut admin)
        .unwrap();
    redis::cmd("SET")
        .arg("secret:k")
        .arg("s")
        .exec(&mut admin)
        .unwrap();

    let mut con = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let v: Option<String> = redis::cmd("GET").arg("allowed:k").query(&mut con).unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    // Command not granted.
    assert_err_contains(
        redis::cmd("SET").arg("allowed:k").arg("x").exec(&mut con),
        &["NOPERM"],
    );
    // Key outside the pattern.
    assert_err_contains(
        redis::cmd("GET")
            .arg("secret:k")
            .query::<Option<String>>(&mut con),
        &["NOPERM"],
    );

    let wrong = redis::Client::open(server.url_with(Some("app"), Some("bad"))).unwrap();
    assert_err_contains(
        ping(&wrong),
        &[
            "WRONGPASS",
            "invalid username-password",
            "authentication failed",
        ],
    );

    let dump = keyspace(&server);
    assert_eq!(dump.len(), 2);
    assert_eq!(dump["allowed:k"], b"v".to_vec());
}

#[test]
fn acl_user_with_all_permissions() {
    let server = RedisServer::with_acl_user("full", "full-pw", "~* +@all");
    let mut con = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    redis::cmd("SET").arg("x").arg("1").exec(&mut con).unwrap();
    assert_eq!(keyspace(&server)["x"], b"1".to_vec());
}

#[test]
fn tls_server_trusts_only_its_ca() {
    let server = RedisServer::tls(TlsOptions::default());
    assert!(server.url().starts_with("rediss://127.0.0.1:"));
    for p in [
        server.ca_cert_path(),
        server.wrong_ca_path(),
        server.client_cert_path(),
        server.client_key_path(),
    ] {
        assert!(p.is_file(), "{} missing", p.display());
    }

    assert_eq!(ping(&server.client()).unwrap(), "PONG");

    let wrong = tls_client(&server.url(), server.wrong_ca_path(), None);
    assert_err_contains(ping(&wrong), &["UnknownIssuer", "unknown issuer"]);

    // The plain port is disabled: speaking plain RESP to the TLS port fails.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    assert!(ping(&plain).is_err());

    let mut con = raw_client(&server);
    redis::cmd("SET").arg("t").arg("1").exec(&mut con).unwrap();
    assert_eq!(keyspace(&server)["t"], b"1".to_vec());
}

#[test]
fn mtls_server_requires_a_client_certificate() {
    let server = RedisServer::tls(TlsOptions {
        require_client_cert: true,
        password: None,
    });
    // The harness client presents the generated client certificate.
    assert_eq!(ping(&server.client()).unwrap(), "PONG");

    // Trusting the right CA is not enough without a client certificate.
    let no_cert = tls_client(&server.url(), server.ca_cert_path(), None);
    assert_err_contains(
        ping(&no_cert),
        &["CertificateRequired", "certificate", "handshake"],
    );

    // Explicit certificate through the public helper.
    let with_cert = tls_client(
        &server.url(),
        server.ca_cert_path(),
        Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(server.client_cert_path()).unwrap(),
            client_key: std::fs::read(server.client_key_path()).unwrap(),
        }),
    );
    assert_eq!(ping(&with_cert).unwrap(), "PONG");
}

#[test]
fn tls_server_with_password() {
    let server = RedisServer::tls(TlsOptions {
        require_client_cert: false,
        password: Some("tls-pw".into()),
    });
    assert_eq!(
        server.url(),
        format!("rediss://:tls-pw@127.0.0.1:{}", server.port())
    );
    assert_eq!(ping(&server.client()).unwrap(), "PONG");
    let anonymous = tls_client(&server.url_with(None, None), server.ca_cert_path(), None);
    assert_err_contains(ping(&anonymous), &["NOAUTH"]);
}

#[test]
fn extra_config_lines_are_applied() {
    let server = RedisServer::start(ServerConfig {
        extra_config: vec!["maxmemory 12mb".into()],
        ..ServerConfig::default()
    });
    let mut con = raw_client(&server);
    let (_, value): (String, u64) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut con)
        .unwrap();
    assert_eq!(value, 12 * 1024 * 1024);
}

#[test]
#[should_panic(expected = "Bad directive or wrong number of arguments")]
fn startup_failure_panics_with_the_server_output() {
    let _server = RedisServer::start(ServerConfig {
        extra_config: vec!["no-such-directive yes".into()],
        ..ServerConfig::default()
    });
}

#[test]
fn restart_keeps_port_and_loses_data() {
    let mut server = RedisServer::with_password("pw");
    let port = server.port();
    let old_pid = server.pid().unwrap();
    let mut con = raw_client(&server);
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    assert_eq!(keyspace(&server).len(), 1);

    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!process_alive(old_pid));
    assert!(ping(&server.client()).is_err());

    server.restart();
    assert_eq!(server.port(), port);
    let new_pid = server.pid().unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(ping(&server.client()).unwrap(), "PONG");
    assert!(keyspace(&server).is_empty(), "data survived a restart");

    // Restart of a running server works too.
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(ping(&server.client()).unwrap(), "PONG");
}

#[test]
fn tls_restart_reuses_certificates() {
    let mut server = RedisServer::tls(TlsOptions {
        require_client_cert: true,
        password: None,
    });
    let ca = std::fs::read(server.ca_cert_path()).unwrap();
    let client = server.client();
    server.restart();
    assert_eq!(std::fs::read(server.ca_cert_path()).unwrap(), ca);
    assert_eq!(ping(&client).unwrap(), "PONG");
}

#[test]
fn drop_kills_the_process_and_removes_the_dir() {
    let server = RedisServer::plain();
    let pid = server.pid().unwrap();
    let log = server.log_path();
    assert!(process_alive(pid));
    assert!(log.is_file());
    drop(server);
    assert!(!process_alive(pid), "redis-server {pid} survived drop");
    assert!(!log.exists(), "temp dir survived drop");
}

#[test]
fn drop_during_panic_kills_the_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::plain();
        tx.send(server.pid().unwrap()).unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(!process_alive(pid), "redis-server {pid} survived a panic");
}

#[test]
#[should_panic(expected = "certificate paths exist only for TLS servers")]
fn cert_paths_panic_for_plain_servers() {
    let server = RedisServer::plain();
    let _ = server.ca_cert_path();
}
