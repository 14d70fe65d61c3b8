//! Real-server test harness for the workspace's integration tests.
//!
//! Every [`RedisServer`] is a throwaway `redis-server` child process with its
//! own temporary directory, listening only on `127.0.0.1` on a free port
//! (never 6379, where a shared Redis may run). Nothing is persisted (`save ""`,
//! `appendonly no`), `DEBUG` is enabled (for `DEBUG SLEEP`), and the process is
//! killed with SIGKILL when the value is dropped, including while a test
//! panics, or when the test process exits (servers held by a `static`, which is
//! never dropped). A server of a test process killed by a signal is not
//! cleaned up (there is no parent-death signal; see the type docs).
//!
//! ```no_run
//! use cache_tests::{keyspace, raw_client, RedisServer};
//!
//! let server = RedisServer::plain();
//! let mut con = raw_client(&server);
//! redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
//! assert_eq!(keyspace(&server)["k"], b"v".to_vec());
//! ```

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub mod cluster;
mod reaper;
pub use cluster::{ClusterOptions, RedisCluster};

/// Panic message used when `redis-server` is not on `PATH`.
pub const REDIS_MISSING: &str = "redis-server not found: install it (apt-get install redis-server) or run ./scripts/test.sh which installs it";

/// The only address test servers bind to.
pub const HOST: &str = "127.0.0.1";

/// How long a server may take to answer `PING` after being spawned.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports are tried when the chosen port was taken meanwhile.
pub(crate) const START_ATTEMPTS: usize = 5;
/// Port of the shared Redis on the machine: never used by test servers.
pub(crate) const SHARED_REDIS_PORT: u16 = 6379;

/// Returns `true` when a runnable `redis-server` binary is on `PATH`.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// TLS settings for [`RedisServer::tls`].
///
/// The default is: client certificates not required, no password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `tls-auth-clients yes` (mutual TLS) when `true`, `tls-auth-clients no` otherwise.
    pub require_client_cert: bool,
    /// `requirepass` for the default user, if any.
    pub password: Option<String>,
}

/// An ACL user created through a `user` directive in the server's config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    /// User name (must not be `default`).
    pub name: String,
    /// The user's password.
    pub password: String,
    /// Whitespace-separated ACL rules, e.g. `"~* +@all"` or `"~allowed:* +get"`.
    /// `on` and the password are added by the harness.
    pub rules: String,
}

/// Full description of a test server; [`RedisServer::start`] takes one.
///
/// The named constructors ([`RedisServer::plain`], [`RedisServer::with_password`],
/// [`RedisServer::with_acl_user`], [`RedisServer::tls`]) are shorthands for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// `requirepass` for the default user. When `None` but `acl_user` is set,
    /// the default user gets a random password so unauthenticated access fails.
    pub password: Option<String>,
    /// An extra ACL user; [`RedisServer::url`] then carries its credentials.
    pub acl_user: Option<AclUser>,
    /// Serve TLS only (`port 0`, `tls-port N`) with generated certificates.
    pub tls: bool,
    /// With `tls`: `tls-auth-clients yes` (client certificate required).
    /// Ignored without `tls`.
    pub require_client_cert: bool,
    /// Extra `redis.conf` lines appended verbatim (e.g. `"maxmemory 10mb"`).
    pub extra_config: Vec<String>,
}

/// Paths of the PEM files generated for a TLS server (all inside its temp dir).
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) wrong_ca_cert: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

/// A `redis-server` child process owned by a test.
///
/// * Binds `127.0.0.1` only, on a free port chosen by binding `127.0.0.1:0`
///   (the whole start is retried on a fresh port if another process won the race).
/// * Has its own temp dir holding `redis.conf`, `redis.log`, `stdio.log` and,
///   for TLS, the generated certificates; the dir is removed on drop.
/// * Readiness: the harness connects with the redis crate (TLS and the default
///   user's password included), runs `INFO server` and checks that
///   `process_id` is its own child, for up to 10 s; on failure it panics with
///   the server's log.
/// * [`Drop`] kills the process with SIGKILL and reaps it. Servers are
///   independent of the creating thread, so one may be shared across tests.
#[derive(Debug)]
pub struct RedisServer {
    config: ServerConfig,
    port: u16,
    /// Password actually set with `requirepass` on the default user.
    default_password: Option<String>,
    tls: Option<TlsFiles>,
    child: Option<Child>,
    // Declared last so the process is killed (in Drop) before the dir goes away.
    dir: tempfile::TempDir,
}

pub(crate) enum StartError {
    /// The port was taken by someone else: retry on another port.
    PortInUse(String),
    /// Anything else: panic with this message.
    Fatal(String),
}

impl RedisServer {
    /// A plain-TCP server without authentication.
    pub fn plain() -> RedisServer {
        Self::start(ServerConfig::default())
    }

    /// A plain-TCP server whose default user needs `password` (`requirepass`).
    pub fn with_password(password: &str) -> RedisServer {
        Self::start(ServerConfig {
            password: Some(password.to_owned()),
            ..ServerConfig::default()
        })
    }

    /// A plain-TCP server with the ACL user `user` (password `password`,
    /// rules `rules`, e.g. `"~* +@all"` or `"~allowed:* +get"`).
    ///
    /// The default user is *not* left open: it gets `requirepass` with a random
    /// password, so unauthenticated connections fail with `NOAUTH`. [`Self::url`]
    /// carries `user:password`; [`raw_client`] still logs in as the default user.
    pub fn with_acl_user(user: &str, password: &str, rules: &str) -> RedisServer {
        Self::start(ServerConfig {
            acl_user: Some(AclUser {
                name: user.to_owned(),
                password: password.to_owned(),
                rules: rules.to_owned(),
            }),
            ..ServerConfig::default()
        })
    }

    /// A TLS-only server (`port 0`, `tls-port N`) with certificates freshly
    /// generated by the `openssl` CLI: see [`Self::ca_cert_path`] and friends.
    pub fn tls(opts: TlsOptions) -> RedisServer {
        Self::start(ServerConfig {
            password: opts.password,
            tls: true,
            require_client_cert: opts.require_client_cert,
            ..ServerConfig::default()
        })
    }

    /// Starts a server for `config` and waits until it answers.
    ///
    /// Panics with [`REDIS_MISSING`] when `redis-server` is not installed, and
    /// with the server's log when it does not come up within 10 s.
    pub fn start(config: ServerConfig) -> RedisServer {
        if !redis_available() {
            panic!("{REDIS_MISSING}");
        }
        if let Some(user) = &config.acl_user {
            assert!(
                user.name != "default",
                "cache-tests: use ServerConfig::password for the default user, not an AclUser named \"default\""
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("cache-tests-redis-")
            .tempdir()
            .expect("cache-tests: cannot create a temp dir for redis-server");
        let tls = config.tls.then(|| generate_tls_files(dir.path()));
        let default_password = config
            .password
            .clone()
            .or_else(|| config.acl_user.as_ref().map(|_| random_password()));
        let mut server = RedisServer {
            config,
            port: 0,
            default_password,
            tls,
            child: None,
            dir,
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::PortInUse(log)) => last = log,
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-tests: redis-server could not bind a free port after {START_ATTEMPTS} attempts; last log:\n{last}"
        );
    }

    /// The port the server listens on (the TLS port for TLS servers).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `redis://` (or `rediss://` for TLS) URL with host `127.0.0.1`,
    /// carrying the credentials of the configured user, percent-encoded:
    /// `user:password@` for an ACL server, `:password@` with a password,
    /// none otherwise.
    pub fn url(&self) -> String {
        match (&self.config.acl_user, &self.config.password) {
            (Some(user), _) => self.url_with(Some(&user.name), Some(&user.password)),
            (None, Some(pw)) => self.url_with(None, Some(pw)),
            (None, None) => self.url_with(None, None),
        }
    }

    /// Like [`Self::url`] but with explicit credentials (`None` for none),
    /// e.g. to try a wrong password.
    pub fn url_with(&self, user: Option<&str>, password: Option<&str>) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let creds = match (user, password) {
            (None, None) => String::new(),
            (u, p) => format!(
                "{}:{}@",
                percent_encode(u.unwrap_or("")),
                percent_encode(p.unwrap_or(""))
            ),
        };
        format!("{scheme}://{creds}{HOST}:{}", self.port)
    }

    /// The ACL user's name for [`Self::with_acl_user`] servers.
    pub fn username(&self) -> Option<&str> {
        self.config.acl_user.as_ref().map(|u| u.name.as_str())
    }

    /// The password in [`Self::url`]: the ACL user's, else `requirepass`.
    pub fn password(&self) -> Option<&str> {
        match &self.config.acl_user {
            Some(user) => Some(&user.password),
            None => self.config.password.as_deref(),
        }
    }

    /// The configuration the server was started with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// PEM of the CA that signed the server (and client) certificate. Panics
    /// for non-TLS servers.
    pub fn ca_cert_path(&self) -> &Path {
        &self.tls_files().ca_cert
    }

    /// PEM of an unrelated CA that did *not* sign the server certificate.
    /// Panics for non-TLS servers.
    pub fn wrong_ca_path(&self) -> &Path {
        &self.tls_files().wrong_ca_cert
    }

    /// PEM of a client certificate signed by [`Self::ca_cert_path`] (for mTLS).
    /// Panics for non-TLS servers.
    pub fn client_cert_path(&self) -> &Path {
        &self.tls_files().client_cert
    }

    /// PEM (PKCS#8) key of [`Self::client_cert_path`]. Panics for non-TLS servers.
    pub fn client_key_path(&self) -> &Path {
        &self.tls_files().client_key
    }

    /// The server's log file (`logfile` directive).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Process id of the running server, `None` after [`Self::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL and reaps it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            reaper::unregister(child.id());
        }
    }

    /// Stops the server (if running) and starts it again on the same port with
    /// the same config and certificates, then waits until it is ready. The
    /// data is gone (nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        // The old listener is gone once the process is reaped; retry briefly in
        // case someone else grabbed the port in between.
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortInUse(log)) => {
                    last = log;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "cache-tests: cannot restart redis-server on port {}: the port is taken; log:\n{last}",
            self.port
        );
    }

    /// A client for [`Self::url`] (the configured user). For TLS servers it
    /// trusts [`Self::ca_cert_path`] and, when client certificates are
    /// required, presents [`Self::client_cert_path`].
    pub fn client(&self) -> redis::Client {
        self.client_for(&self.url())
    }

    /// A client logged in as the *default* user with full permissions
    /// (whatever password it has, random for ACL servers): the harness's own
    /// view of the server, used by [`raw_client`] and [`keyspace`].
    pub fn admin_client(&self) -> redis::Client {
        self.client_for(&self.url_with(None, self.default_password.as_deref()))
    }

    /// A client for an arbitrary `url`, with this server's TLS settings.
    fn client_for(&self, url: &str) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(url)
                .unwrap_or_else(|e| panic!("cache-tests: bad redis URL {url}: {e}")),
            Some(files) => {
                let client_tls = self
                    .config
                    .require_client_cert
                    .then(|| redis::ClientTlsConfig {
                        client_cert: read_file(&files.client_cert),
                        client_key: read_file(&files.client_key),
                    });
                tls_client(url, &files.ca_cert, client_tls)
            }
        }
    }

    fn tls_files(&self) -> &TlsFiles {
        self.tls.as_ref().unwrap_or_else(|| {
            panic!(
                "cache-tests: certificate paths exist only for TLS servers (RedisServer::tls); this one listens on plain port {}",
                self.port
            )
        })
    }

    fn write_config(&self) -> PathBuf {
        let dir = self.dir.path();
        let mut lines = vec![
            format!("bind {HOST}"),
            "daemonize no".to_owned(),
            "save \"\"".to_owned(),
            "appendonly no".to_owned(),
            format!("dir {}", quote(&dir.to_string_lossy())),
            format!("logfile {}", quote(&self.log_path().to_string_lossy())),
            "enable-debug-command yes".to_owned(),
        ];
        match &self.tls {
            None => lines.push(format!("port {}", self.port)),
            Some(files) => {
                lines.push("port 0".to_owned());
                lines.push(format!("tls-port {}", self.port));
                lines.push(format!(
                    "tls-cert-file {}",
                    quote(&files.server_cert.to_string_lossy())
                ));
                lines.push(format!(
                    "tls-key-file {}",
                    quote(&files.server_key.to_string_lossy())
                ));
                lines.push(format!(
                    "tls-ca-cert-file {}",
                    quote(&files.ca_cert.to_string_lossy())
                ));
                let auth = if self.config.require_client_cert {
                    "yes"
                } else {
                    "no"
                };
                lines.push(format!("tls-auth-clients {auth}"));
            }
        }
        if let Some(pw) = &self.default_password {
            lines.push(format!("requirepass {}", quote(pw)));
        }
        if let Some(user) = &self.config.acl_user {
            let mut line = format!(
                "user {} on {}",
                quote(&user.name),
                quote(&format!(">{}", user.password))
            );
            for rule in user.rules.split_whitespace() {
                line.push(' ');
                line.push_str(&quote(rule));
            }
            lines.push(line);
        }
        lines.extend(self.config.extra_config.iter().cloned());
        let path = dir.join("redis.conf");
        fs::write(&path, lines.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("cache-tests: cannot write {}: {e}", path.display()));
        path
    }

    /// Spawns `redis-server` on `self.port` and waits until it is ready.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        assert!(self.child.is_none(), "cache-tests: server already running");
        let conf = self.write_config();
        let stdio_path = self.dir.path().join("stdio.log");
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .unwrap_or_else(|e| panic!("cache-tests: cannot open {}: {e}", stdio_path.display()));
        let stdio2 = stdio
            .try_clone()
            .expect("cache-tests: cannot clone stdio log handle");
        let child = Command::new("redis-server")
            .arg(&conf)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stdio2)
            .spawn()
            .unwrap_or_else(|e| panic!("{REDIS_MISSING} (spawn failed: {e})"));
        let pid = child.id();
        reaper::register(pid);
        self.child = Some(child);

        let client = self.admin_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error: String;
        loop {
            let exited = self
                .child
                .as_mut()
                .expect("child just spawned")
                .try_wait()
                .expect("cache-tests: cannot poll redis-server child");
            if let Some(status) = exited {
                reaper::unregister(pid);
                self.child = None;
                let logs = self.logs();
                if logs.contains("Address already in use") {
                    return Err(StartError::PortInUse(logs));
                }
                return Err(StartError::Fatal(format!(
                    "cache-tests: redis-server exited early ({status}) on port {}; logs:\n{logs}",
                    self.port
                )));
            }
            match probe(&client) {
                Ok(p) if p == pid => return Ok(()),
                // Another server answered on our port: ours will fail to bind
                // and exit, which is handled above.
                Ok(other) => last_error = format!("port answered by foreign pid {other}"),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(StartError::Fatal(format!(
                    "cache-tests: redis-server (pid {pid}) not ready on {} within {READY_TIMEOUT:?}; last error: {last_error}; logs:\n{}",
                    self.url_with(None, None),
                    self.logs()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server log plus anything printed on stdout/stderr (config errors).
    fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read_to_string(self.dir.path().join(name))
                .unwrap_or_else(|e| format!("<cannot read {name}: {e}>"))
        };
        format!(
            "--- redis.log ---\n{}\n--- stdout/stderr ---\n{}",
            read("redis.log"),
            read("stdio.log")
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A synchronous connection logged in as the default user (full permissions,
/// whatever password the server has), with 5 s read/write timeouts.
pub fn raw_client(server: &RedisServer) -> redis::Connection {
    let con = server
        .admin_client()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| {
            panic!(
                "cache-tests: raw_client cannot connect to {}: {e}",
                server.url_with(None, None)
            )
        });
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("cache-tests: set_read_timeout");
    con.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("cache-tests: set_write_timeout");
    con
}

/// Async counterpart of [`raw_client`] (needs a Tokio runtime).
pub async fn raw_async_client(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    server
        .admin_client()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cache-tests: raw_async_client cannot connect to {}: {e}",
                server.url_with(None, None)
            )
        })
}

/// How many calls of `command` (lower case, e.g. `mget`) the server ran and rejected,
/// from `INFO commandstats` (`(0, 0)` when it never ran).
pub fn command_calls(server: &RedisServer, command: &str) -> (u64, u64) {
    let mut conn = server
        .admin_client()
        .get_connection()
        .expect("admin connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find(|l| l.starts_with(&prefix)) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("rejected_calls="))
}

/// Every key of database 0 (SCAN) mapped to its value for strings (GET), or to
/// the `TYPE` name as bytes (e.g. `b"hash"`) for other types. Keys expiring
/// during the dump are left out. Use it to assert "nothing else was touched".
pub fn keyspace(server: &RedisServer) -> BTreeMap<String, Vec<u8>> {
    let mut con = raw_client(server);
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("cache-tests: keyspace SCAN failed: {e}"));
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("cache-tests: keyspace TYPE failed: {e}"));
        let value = match kind.as_str() {
            "none" => continue,
            "string" => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query(&mut con)
                    .unwrap_or_else(|e| panic!("cache-tests: keyspace GET failed: {e}"));
                match v {
                    Some(v) => v,
                    None => continue,
                }
            }
            other => other.as_bytes().to_vec(),
        };
        out.insert(String::from_utf8_lossy(&key).into_owned(), value);
    }
    out
}

/// Installs rustls's `ring` crypto provider for the process (idempotent);
/// rustls needs one before any TLS client is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS client for `url` (`rediss://…`) that trusts only the CA in `ca_pem`
/// and presents `client_tls` if given. Use it to test wrong-CA or missing
/// client-certificate cases.
pub fn tls_client(
    url: &str,
    ca_pem: &Path,
    client_tls: Option<redis::ClientTlsConfig>,
) -> redis::Client {
    install_crypto_provider();
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert: Some(read_file(ca_pem)),
        },
    )
    .unwrap_or_else(|e| panic!("cache-tests: cannot build TLS client for {url}: {e}"))
}

/// Connects once and returns the server's `process_id` from `INFO server`.
pub(crate) fn probe(client: &redis::Client) -> Result<u32, String> {
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    con.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .map_err(|e| e.to_string())?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no process_id in INFO: {info}"))
}

/// A port that was free on 127.0.0.1 a moment ago (never 6379).
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((HOST, 0))
            .unwrap_or_else(|e| panic!("cache-tests: cannot bind {HOST}:0: {e}"));
        let port = listener
            .local_addr()
            .expect("cache-tests: local_addr of probe listener")
            .port();
        if port != SHARED_REDIS_PORT {
            return port;
        }
    }
}

fn random_password() -> String {
    let a = RandomState::new().build_hasher().finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// Quotes a `redis.conf` argument (sdssplitargs double-quote syntax).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cache-tests: cannot read {}: {e}", path.display()))
}

/// `openssl` config with the extensions rustls/webpki and OpenSSL expect.
const OPENSSL_CNF: &str = "\
[ req ]
distinguished_name = dn
prompt = no

[ dn ]
CN = cache-tests

[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[ client_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
";

/// Generates CA, wrong CA, server and client certificates (ECDSA P-256) in `dir`.
pub(crate) fn generate_tls_files(dir: &Path) -> TlsFiles {
    fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("cache-tests: write openssl.cnf");
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let self_signed_ca = |name: &str, cn: &str| {
        let mut args = vec!["req", "-x509", "-new", "-config", "openssl.cnf"];
        args.extend(new_key);
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        let subj = format!("/CN={cn}");
        args.extend([
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "30",
            "-subj",
            &subj,
            "-extensions",
            "ca_ext",
        ]);
        openssl(dir, &args);
    };
    let signed_leaf = |name: &str, cn: &str, ext: &str| {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new", "-config", "openssl.cnf"];
        args.extend(new_key);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                ext,
                "-out",
                &crt,
            ],
        );
    };
    self_signed_ca("ca", "cache-tests CA");
    self_signed_ca("wrong-ca", "cache-tests unrelated CA");
    signed_leaf("server", "localhost", "server_ext");
    signed_leaf("client", "cache-tests client", "client_ext");
    TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        wrong_ca_cert: dir.join("wrong-ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cache-tests: the openssl CLI is needed for TLS tests (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "cache-tests: `openssl {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cache with an L1 on `url` (2 s connect and socket timeouts): one process of the L1
/// tests, which stand two or more of them side by side.
pub fn l1_cache_at(url: String) -> cache_runtime::Cache {
    let config = cache_runtime::CacheConfig::builder()
        .url(url)
        .l1(true)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config");
    cache_runtime::Cache::new(config).expect("cache")
}
