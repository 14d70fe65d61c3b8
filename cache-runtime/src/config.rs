//! Configuration: environment (and `.env`), `REDIS_URL` or its parts, or a builder in code.
//!
//! Both sources go through one validation ([`CacheConfigBuilder::build`]), so an invalid
//! setting fails at start with a message that names the variable and the fix.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::CodecKind;

/// Default TTL of namespace `general` and of calls without one (`REDIS_TTL_DEFAULT`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Default bound on connections (`REDIS_CONNECTION_POOL_MAX_SIZE`).
pub const DEFAULT_POOL_MAX_SIZE: usize = 50;
/// Default per-command timeout (`REDIS_SOCKET_TIMEOUT`).
pub const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Default connect timeout (`REDIS_SOCKET_CONNECT_TIMEOUT`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first key segment (`REDIS_KEY_PREFIX`).
pub const DEFAULT_KEY_PREFIX: &str = "tradistry";
/// Default largest encoded value that is stored (`CACHE_MAX_VALUE_BYTES`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 32 * 1024 * 1024;
/// Default entry bound of the embedded store (`CACHE_MEMORY_MAX_ENTRIES`).
pub const DEFAULT_MEMORY_MAX_ENTRIES: u64 = 100_000;
/// Default byte bound of the embedded store (`CACHE_MEMORY_MAX_BYTES`).
pub const DEFAULT_MEMORY_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Default entry bound of the in-process L1 in front of Redis (`CACHE_L1_MAX_ENTRIES`).
pub const DEFAULT_L1_MAX_ENTRIES: u64 = 10_000;
/// Default byte bound of the L1 (`CACHE_L1_MAX_BYTES`).
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default longest time an L1 entry is served (`CACHE_L1_MAX_TTL`).
pub const DEFAULT_L1_MAX_TTL: Duration = Duration::from_secs(60);

/// An invalid setting. The message names the variable and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable has a value of the wrong form.
    #[error("{var}={value:?} is invalid: {fix}")]
    Invalid {
        /// The variable, e.g. `REDIS_PORT`.
        var: &'static str,
        /// The value as given (never a password).
        value: String,
        /// What to do.
        fix: String,
    },
    /// Two settings contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// A file named by a variable cannot be read.
    #[error("{var}={path:?} cannot be read ({reason}); point it at a readable PEM file")]
    Unreadable {
        /// The variable, e.g. `REDIS_SSL_CA_CERTS`.
        var: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The `.env` file exists but cannot be parsed.
    #[error(".env file {path:?} cannot be parsed ({reason}); fix the line or remove the file")]
    DotEnv {
        /// Where it was looked for.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

fn invalid(var: &'static str, value: &str, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        fix: fix.into(),
    }
}

/// A password: never printed by `Debug`, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The secret itself, for the connection handshake only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// How the server's certificate is checked (`REDIS_SSL_CERT_REQS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CertReqs {
    /// Chain and host name are verified (the default).
    #[default]
    Required,
    /// The chain is verified, the host name is not (warned at start).
    Optional,
    /// Nothing is verified (warned loudly at start). Never use in production.
    None,
}

impl CertReqs {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "required" | "cert_required" => Ok(Self::Required),
            "optional" | "cert_optional" => Ok(Self::Optional),
            "none" | "cert_none" => Ok(Self::None),
            _ => Err(invalid(
                "REDIS_SSL_CERT_REQS",
                value,
                "use required (verify chain and host name), optional (verify chain only) or none (verify nothing)",
            )),
        }
    }
}

/// TLS settings of a Redis connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Certificate checks.
    pub cert_reqs: CertReqs,
    /// A PEM file of trusted CAs instead of the system roots (`REDIS_SSL_CA_CERTS`).
    pub ca_certs: Option<PathBuf>,
    /// Client certificate for mutual TLS (`REDIS_SSL_CERTFILE`).
    pub certfile: Option<PathBuf>,
    /// Client key for mutual TLS (`REDIS_SSL_KEYFILE`).
    pub keyfile: Option<PathBuf>,
}

/// Where and how to reach Redis.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user name (`None`: the server's default user).
    pub username: Option<String>,
    /// Password, redacted everywhere.
    pub password: Option<Password>,
    /// Database number.
    pub db: i64,
    /// TLS, when enabled.
    pub tls: Option<TlsConfig>,
    /// Upper bound of connections.
    pub pool_max_size: usize,
    /// Per-command timeout.
    pub socket_timeout: Duration,
    /// Per-connect timeout.
    pub connect_timeout: Duration,
}

impl RedisConfig {
    /// `host:port`, for messages (never credentials).
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("pool_max_size", &self.pool_max_size)
            .field("socket_timeout", &self.socket_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl fmt::Display for RedisConfig {
    /// A URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.endpoint(), self.db)
    }
}

/// Bounds of the embedded in-process store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Most entries held.
    pub max_entries: u64,
    /// Most bytes of values held.
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MEMORY_MAX_ENTRIES,
            max_bytes: DEFAULT_MEMORY_MAX_BYTES,
        }
    }
}

/// The optional in-process L1 in front of Redis (`CACHE_L1=true`).
///
/// Coherent across processes: every store, delete and clear is published on a Redis
/// channel and every process drops what it holds for those keys; while that channel is
/// down, L1 serves nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct L1Config {
    /// Most entries held.
    pub max_entries: u64,
    /// Most bytes of values held.
    pub max_bytes: u64,
    /// Longest an entry is served (never longer than its Redis TTL).
    pub max_ttl: Duration,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_L1_MAX_ENTRIES,
            max_bytes: DEFAULT_L1_MAX_BYTES,
            max_ttl: DEFAULT_L1_MAX_TTL,
        }
    }
}

/// Which store the runtime uses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendConfig {
    /// The embedded in-process store (no `REDIS_URL` and no `REDIS_HOST`).
    Memory(MemoryConfig),
    /// A Redis server.
    Redis(RedisConfig),
}

/// The whole configuration of a cache.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Store.
    pub backend: BackendConfig,
    /// First key segment.
    pub key_prefix: String,
    /// TTL of namespace `general` and of calls without one.
    pub ttl_default: Duration,
    /// Value codec.
    pub codec: CodecKind,
    /// Largest encoded value that is stored.
    pub max_value_bytes: usize,
    /// The in-process L1 in front of Redis, when enabled (ignored by the embedded store).
    pub l1: Option<L1Config>,
}

impl Default for CacheConfig {
    /// The embedded store with every default.
    fn default() -> Self {
        Self {
            backend: BackendConfig::Memory(MemoryConfig::default()),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            ttl_default: DEFAULT_TTL,
            codec: CodecKind::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            l1: None,
        }
    }
}

impl fmt::Display for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            BackendConfig::Memory(m) => write!(
                f,
                "embedded store (max {} entries, {} bytes)",
                m.max_entries, m.max_bytes
            )?,
            BackendConfig::Redis(r) => write!(f, "{r}")?,
        }
        write!(f, ", prefix {:?}, codec {}", self.key_prefix, self.codec)
    }
}

impl CacheConfig {
    /// A builder with nothing set (every default; the embedded store unless a URL or host is given).
    pub fn builder() -> CacheConfigBuilder {
        CacheConfigBuilder::default()
    }

    /// Reads the process environment, plus `.env` in the current directory when present
    /// (variables already in the environment win over the file).
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = read_dotenv(Path::new(".env"))?;
        vars.extend(std::env::vars().filter(|(k, _)| is_ours(k)));
        Self::from_vars(vars)
    }

    /// Reads the given variables (the same names as the environment). Lets tests and
    /// embedders configure without touching the process environment.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut errors = Vec::new();
        let mut b = CacheConfigBuilder::default();
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim().to_owned());
        let mut record = |r: Result<(), ConfigError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        b.url = get("REDIS_URL");
        b.host = get("REDIS_HOST");
        if let Some(v) = get("REDIS_PORT") {
            record(parse_port(&v).map(|p| b.port = Some(p)));
        }
        b.username = get("REDIS_USERNAME");
        // Passwords may legitimately have surrounding spaces: take it verbatim.
        b.password = vars.get("REDIS_PASSWORD").cloned().map(Password);
        if let Some(v) = get("REDIS_SSL") {
            record(parse_bool("REDIS_SSL", &v).map(|x| b.ssl = Some(x)));
        }
        if let Some(v) = get("REDIS_SSL_CERT_REQS") {
            record(CertReqs::parse(&v).map(|x| b.cert_reqs = Some(x)));
        }
        b.ca_certs = get("REDIS_SSL_CA_CERTS").map(PathBuf::from);
        b.certfile = get("REDIS_SSL_CERTFILE").map(PathBuf::from);
        b.keyfile = get("REDIS_SSL_KEYFILE").map(PathBuf::from);
        if let Some(v) = get("REDIS_CONNECTION_POOL_MAX_SIZE") {
            record(
                parse_count("REDIS_CONNECTION_POOL_MAX_SIZE", &v, 1, 10_000)
                    .map(|x| b.pool_max_size = Some(x as usize)),
            );
        }
        if let Some(v) = get("REDIS_SOCKET_TIMEOUT") {
            record(parse_secs("REDIS_SOCKET_TIMEOUT", &v).map(|x| b.socket_timeout = Some(x)));
        }
        if let Some(v) = get("REDIS_SOCKET_CONNECT_TIMEOUT") {
            record(
                parse_secs("REDIS_SOCKET_CONNECT_TIMEOUT", &v).map(|x| b.connect_timeout = Some(x)),
            );
        }
        if let Some(v) = get("REDIS_TTL_DEFAULT") {
            record(
                parse_count("REDIS_TTL_DEFAULT", &v, 1, u64::from(u32::MAX))
                    .map(|x| b.ttl_default = Some(Duration::from_secs(x))),
            );
        }
        b.key_prefix = get("REDIS_KEY_PREFIX");
        if let Some(v) = get("CACHE_CODEC") {
            record(CodecKind::parse(&v).map(|x| b.codec = Some(x)));
        }
        if let Some(v) = get("CACHE_MAX_VALUE_BYTES") {
            record(
                parse_count("CACHE_MAX_VALUE_BYTES", &v, 1, 512 * 1024 * 1024)
                    .map(|x| b.max_value_bytes = Some(x as usize)),
            );
        }
        if let Some(v) = get("CACHE_MEMORY_MAX_ENTRIES") {
            record(
                parse_count("CACHE_MEMORY_MAX_ENTRIES", &v, 1, u64::MAX)
                    .map(|x| b.memory_max_entries = Some(x)),
            );
        }
        if let Some(v) = get("CACHE_MEMORY_MAX_BYTES") {
            record(
                parse_count("CACHE_MEMORY_MAX_BYTES", &v, 1, u64::MAX)
                    .map(|x| b.memory_max_bytes = Some(x)),
            );
        }
        if let Some(v) = get("CACHE_L1") {
            record(parse_bool("CACHE_L1", &v).map(|x| b.l1 = Some(x)));
        }
        if let Some(v) = get("CACHE_L1_MAX_ENTRIES") {
            record(
                parse_count("CACHE_L1_MAX_ENTRIES", &v, 1, u64::MAX)
                    .map(|x| b.l1_max_entries = Some(x)),
            );
        }
        if let Some(v) = get("CACHE_L1_MAX_BYTES") {
            record(
                parse_count("CACHE_L1_MAX_BYTES", &v, 1, u64::MAX)
                    .map(|x| b.l1_max_bytes = Some(x)),
            );
        }
        if let Some(v) = get("CACHE_L1_MAX_TTL") {
            record(parse_secs("CACHE_L1_MAX_TTL", &v).map(|x| b.l1_max_ttl = Some(x)));
        }
        if let Some(first) = errors.into_iter().next() {
            return Err(first);
        }
        b.build()
    }
}

/// The variables this crate reads.
pub const VARIABLES: &[&str] = &[
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_USERNAME",
    "REDIS_PASSWORD",
    "REDIS_SSL",
    "REDIS_SSL_CERT_REQS",
    "REDIS_SSL_CA_CERTS",
    "REDIS_SSL_CERTFILE",
    "REDIS_SSL_KEYFILE",
    "REDIS_CONNECTION_POOL_MAX_SIZE",
    "REDIS_SOCKET_TIMEOUT",
    "REDIS_SOCKET_CONNECT_TIMEOUT",
    "REDIS_TTL_DEFAULT",
    "REDIS_KEY_PREFIX",
    "CACHE_CODEC",
    "CACHE_MAX_VALUE_BYTES",
    "CACHE_MEMORY_MAX_ENTRIES",
    "CACHE_MEMORY_MAX_BYTES",
    "CACHE_L1",
    "CACHE_L1_MAX_ENTRIES",
    "CACHE_L1_MAX_BYTES",
    "CACHE_L1_MAX_TTL",
];

fn is_ours(name: &str) -> bool {
    VARIABLES.contains(&name)
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HashMap::new())
        }
        Err(e) => {
            return Err(ConfigError::DotEnv {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let mut out = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::DotEnv {
            path: path.to_owned(),
            // dotenvy's parse error quotes the line, which may hold a password: keep only the kind.
            reason: match e {
                dotenvy::Error::LineParse(_, index) => format!("syntax error at byte {index}"),
                other => other.to_string(),
            },
        })?;
        if is_ours(&k) {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, value, "use true or false")),
    }
}

fn parse_port(value: &str) -> Result<u16, ConfigError> {
    match value.parse::<u32>() {
        Ok(p) if (1..=65_535).contains(&p) => Ok(p as u16),
        _ => Err(invalid(
            "REDIS_PORT",
            value,
            "use a TCP port between 1 and 65535 (Redis Cloud shows it after the host name)",
        )),
    }
}

fn parse_count(var: &'static str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            var,
            value,
            format!("use a whole number between {min} and {max}"),
        )),
    }
}

fn parse_secs(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match value.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(invalid(
            var,
            value,
            "use a number of seconds greater than 0, e.g. 5 or 0.5",
        )),
    }
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Builds a [`CacheConfig`] in code; [`build`](Self::build) validates like the environment does.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::config::CacheConfig;
///
/// let config = CacheConfig::builder()
///     .url("rediss://default:s%40cret@redis.example.com:12345/0")
///     .socket_timeout(Duration::from_secs(2))
///     .build()
///     .unwrap();
/// assert!(!format!("{config:?}").contains("s@cret"));
/// ```
#[derive(Clone, Default)]
pub struct CacheConfigBuilder {
    url: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    password: Option<Password>,
    db: Option<i64>,
    ssl: Option<bool>,
    cert_reqs: Option<CertReqs>,
    ca_certs: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    pool_max_size: Option<usize>,
    socket_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    ttl_default: Option<Duration>,
    key_prefix: Option<String>,
    codec: Option<CodecKind>,
    max_value_bytes: Option<usize>,
    memory_max_entries: Option<u64>,
    memory_max_bytes: Option<u64>,
    l1: Option<bool>,
    l1_max_entries: Option<u64>,
    l1_max_bytes: Option<u64>,
    l1_max_ttl: Option<Duration>,
}

impl fmt::Debug for CacheConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: the URL may carry the password.
        f.debug_struct("CacheConfigBuilder")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("ssl", &self.ssl)
            .field("cert_reqs", &self.cert_reqs)
            .field("ca_certs", &self.ca_certs)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("pool_max_size", &self.pool_max_size)
            .field("socket_timeout", &self.socket_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ttl_default", &self.ttl_default)
            .field("key_prefix", &self.key_prefix)
            .field("codec", &self.codec)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("memory_max_entries", &self.memory_max_entries)
            .field("memory_max_bytes", &self.memory_max_bytes)
            .field("l1", &self.l1)
            .finish_non_exhaustive()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = Some(value.into());
            self
        }
    };
}

impl CacheConfigBuilder {
    setter!(
        /// `REDIS_URL`: `redis://` or `rediss://[user[:password]@]host[:port][/db]`; wins over the parts.
        url: &str
    );
    setter!(
        /// `REDIS_HOST`.
        host: &str
    );
    setter!(
        /// `REDIS_PORT`.
        port: u16
    );
    setter!(
        /// `REDIS_USERNAME`.
        username: &str
    );
    setter!(
        /// Database number (from the URL path otherwise).
        db: i64
    );
    setter!(
        /// `REDIS_SSL`.
        ssl: bool
    );
    setter!(
        /// `REDIS_SSL_CERT_REQS`.
        cert_reqs: CertReqs
    );
    setter!(
        /// `REDIS_CONNECTION_POOL_MAX_SIZE`.
        pool_max_size: usize
    );
    setter!(
        /// `REDIS_SOCKET_TIMEOUT`.
        socket_timeout: Duration
    );
    setter!(
        /// `REDIS_SOCKET_CONNECT_TIMEOUT`.
        connect_timeout: Duration
    );
    setter!(
        /// `REDIS_TTL_DEFAULT`.
        ttl_default: Duration
    );
    setter!(
        /// `REDIS_KEY_PREFIX`.
        key_prefix: &str
    );
    setter!(
        /// `CACHE_CODEC`.
        codec: CodecKind
    );
    setter!(
        /// `CACHE_MAX_VALUE_BYTES`.
        max_value_bytes: usize
    );
    setter!(
        /// `CACHE_MEMORY_MAX_ENTRIES`.
        memory_max_entries: u64
    );
    setter!(
        /// `CACHE_MEMORY_MAX_BYTES`.
        memory_max_bytes: u64
    );
    setter!(
        /// `CACHE_L1`: an in-process L1 in front of Redis, coherent across processes.
        l1: bool
    );
    setter!(
        /// `CACHE_L1_MAX_ENTRIES`.
        l1_max_entries: u64
    );
    setter!(
        /// `CACHE_L1_MAX_BYTES`.
        l1_max_bytes: u64
    );
    setter!(
        /// `CACHE_L1_MAX_TTL`.
        l1_max_ttl: Duration
    );

    /// `REDIS_PASSWORD`.
    #[must_use]
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(Password::new(password));
        self
    }

    /// `REDIS_SSL_CA_CERTS`: a PEM file of trusted CAs.
    #[must_use]
    pub fn ca_certs(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_certs = Some(path.into());
        self
    }

    /// `REDIS_SSL_CERTFILE` and `REDIS_SSL_KEYFILE`: a client certificate for mutual TLS.
    #[must_use]
    pub fn client_cert(
        mut self,
        certfile: impl Into<PathBuf>,
        keyfile: impl Into<PathBuf>,
    ) -> Self {
        self.certfile = Some(certfile.into());
        self.keyfile = Some(keyfile.into());
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<CacheConfig, ConfigError> {
        let key_prefix = self
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        if !valid_prefix(&key_prefix) {
            return Err(invalid(
                "REDIS_KEY_PREFIX",
                &key_prefix,
                "use 1 to 64 characters from A-Z, a-z, 0-9, '_', '-' and '.' (no ':')",
            ));
        }
        let ttl_default = self.ttl_default.unwrap_or(DEFAULT_TTL);
        if ttl_default.as_secs() == 0 {
            return Err(invalid(
                "REDIS_TTL_DEFAULT",
                "0",
                "use a TTL of at least 1 second",
            ));
        }
        if self.max_value_bytes == Some(0) {
            return Err(invalid(
                "CACHE_MAX_VALUE_BYTES",
                "0",
                "use a limit of at least 1 byte",
            ));
        }
        let backend = if self.url.is_some() || self.host.is_some() {
            BackendConfig::Redis(self.redis()?)
        } else {
            let entries = self
                .memory_max_entries
                .unwrap_or(DEFAULT_MEMORY_MAX_ENTRIES);
            let bytes = self.memory_max_bytes.unwrap_or(DEFAULT_MEMORY_MAX_BYTES);
            if entries == 0 || bytes == 0 {
                return Err(invalid(
                    "CACHE_MEMORY_MAX_ENTRIES",
                    "0",
                    "use bounds of at least 1 entry and 1 byte",
                ));
            }
            BackendConfig::Memory(MemoryConfig {
                max_entries: entries,
                max_bytes: bytes,
            })
        };
        let l1 = if self.l1 == Some(true) {
            let l1 = L1Config {
                max_entries: self.l1_max_entries.unwrap_or(DEFAULT_L1_MAX_ENTRIES),
                max_bytes: self.l1_max_bytes.unwrap_or(DEFAULT_L1_MAX_BYTES),
                max_ttl: self.l1_max_ttl.unwrap_or(DEFAULT_L1_MAX_TTL),
            };
            if l1.max_ttl < Duration::from_millis(1) {
                return Err(invalid(
                    "CACHE_L1_MAX_TTL",
                    "0",
                    "use at least 0.001 seconds",
                ));
            }
            Some(l1)
        } else {
            None
        };
        Ok(CacheConfig {
            backend,
            key_prefix,
            ttl_default,
            codec: self.codec.unwrap_or_default(),
            max_value_bytes: self.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES),
            l1,
        })
    }

    fn redis(&self) -> Result<RedisConfig, ConfigError> {
        let mut cfg = RedisConfig {
            host: String::new(),
            port: self.port.unwrap_or(6379),
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db.unwrap_or(0),
            tls: None,
            pool_max_size: self.pool_max_size.unwrap_or(DEFAULT_POOL_MAX_SIZE),
            socket_timeout: self.socket_timeout.unwrap_or(DEFAULT_SOCKET_TIMEOUT),
            connect_timeout: self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        };
        if cfg.pool_max_size == 0 {
            return Err(invalid(
                "REDIS_CONNECTION_POOL_MAX_SIZE",
                "0",
                "use at least 1 connection",
            ));
        }
        for (var, d) in [
            ("REDIS_SOCKET_TIMEOUT", cfg.socket_timeout),
            ("REDIS_SOCKET_CONNECT_TIMEOUT", cfg.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(var, "0", "use a timeout greater than 0 seconds"));
            }
        }
        let tls_from_scheme = if let Some(url) = &self.url {
            let parsed = parse_url(url)?;
            cfg.host = parsed.host;
            cfg.port = parsed.port;
            if parsed.username.is_some() {
                cfg.username = parsed.username;
            }
            if parsed.password.is_some() {
                cfg.password = parsed.password;
            }
            if let Some(db) = parsed.db {
                cfg.db = db;
            }
            Some(parsed.tls)
        } else {
            let host = self.host.clone().unwrap_or_default();
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(invalid(
                    "REDIS_HOST",
                    &host,
                    "use a host name or IP address only, e.g. redis-12345.c1.us-east-1-1.ec2.cloud.redislabs.com",
                ));
            }
            cfg.host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            None
        };
        let tls = match (tls_from_scheme, self.ssl) {
            (Some(false), Some(true)) => {
                return Err(ConfigError::Conflict(
                    "REDIS_SSL=true but REDIS_URL starts with redis:// (plain TCP); use rediss:// for TLS, or set REDIS_SSL=false"
                        .to_owned(),
                ))
            }
            (Some(true), Some(false)) => {
                return Err(ConfigError::Conflict(
                    "REDIS_SSL=false but REDIS_URL starts with rediss:// (TLS); remove REDIS_SSL or use a redis:// URL"
                        .to_owned(),
                ))
            }
            (Some(tls), _) => tls,
            (None, ssl) => ssl.unwrap_or(false),
        };
        if tls {
            let tls_cfg = TlsConfig {
                cert_reqs: self.cert_reqs.unwrap_or_default(),
                ca_certs: self.ca_certs.clone(),
                certfile: self.certfile.clone(),
                keyfile: self.keyfile.clone(),
            };
            for (var, path) in [
                ("REDIS_SSL_CA_CERTS", &tls_cfg.ca_certs),
                ("REDIS_SSL_CERTFILE", &tls_cfg.certfile),
                ("REDIS_SSL_KEYFILE", &tls_cfg.keyfile),
            ] {
                if let Some(path) = path {
                    check_readable(var, path)?;
                }
            }
            if tls_cfg.certfile.is_some() != tls_cfg.keyfile.is_some() {
                return Err(ConfigError::Conflict(
                    "REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together: set both for mutual TLS, or neither"
                        .to_owned(),
                ));
            }
            cfg.tls = Some(tls_cfg);
        } else if self.ca_certs.is_some() || self.certfile.is_some() || self.keyfile.is_some() {
            return Err(ConfigError::Conflict(
                "REDIS_SSL_CA_CERTS/CERTFILE/KEYFILE are set but TLS is off; use a rediss:// URL or REDIS_SSL=true"
                    .to_owned(),
            ));
        }
        Ok(cfg)
    }
}

fn check_readable(var: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(ConfigError::Unreadable {
            var,
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

struct ParsedUrl {
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<Password>,
    db: Option<i64>,
}

fn parse_url(raw: &str) -> Result<ParsedUrl, ConfigError> {
    // Never echo the URL itself: it may hold the password.
    let shown = redact_url(raw);
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            "REDIS_URL",
            &shown,
            format!("{e}; use redis://[user:password@]host:port/db or rediss://… for TLS, and percent-encode special characters in the password"),
        )
    })?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                format!("scheme {other:?} is not supported; use redis:// or rediss://"),
            ))
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                "the URL has no host; use redis://host:port",
            ))
        }
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let username = Some(url.username()).filter(|u| !u.is_empty()).map(decode);
    let password = url.password().map(|p| Password(decode(p)));
    let path = url.path().trim_start_matches('/');
    let db = if path.is_empty() {
        None
    } else {
        match path.parse::<i64>() {
            Ok(db) if db >= 0 => Some(db),
            _ => {
                return Err(invalid(
                    "REDIS_URL",
                    &shown,
                    "the path must be a database number, e.g. /0",
                ))
            }
        }
    };
    Ok(ParsedUrl {
        tls,
        host,
        port: url.port().unwrap_or(6379),
        username,
        password,
        db,
    })
}

/// Replaces the password of a URL-like string with `***` (best effort, also for unparsable input).
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest = &raw[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if userinfo.contains(':') {
        format!("{}{user}:***@{}", &raw[..scheme_end + 3], &rest[at + 1..])
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        CacheConfig::from_vars(pairs.iter().copied())
    }

    fn redis(c: &CacheConfig) -> &RedisConfig {
        match &c.backend {
            BackendConfig::Redis(r) => r,
            BackendConfig::Memory(_) => panic!("expected redis"),
        }
    }

    #[test]
    fn nothing_set_means_embedded() {
        let c = vars(&[]).unwrap();
        assert!(matches!(c.backend, BackendConfig::Memory(_)));
        assert_eq!(c.key_prefix, "tradistry");
        assert_eq!(c.ttl_default, Duration::from_secs(3600));
    }

    #[test]
    fn url_wins_and_decodes() {
        let c = vars(&[
            (
                "REDIS_URL",
                "rediss://default:p%40ss%3Aw0rd@redis.example.com:12345/3",
            ),
            ("REDIS_HOST", "ignored.example.com"),
            ("REDIS_PORT", "1"),
        ])
        .unwrap();
        let r = redis(&c);
        assert_eq!(r.host, "redis.example.com");
        assert_eq!(r.port, 12345);
        assert_eq!(r.db, 3);
        assert_eq!(r.username.as_deref(), Some("default"));
        assert_eq!(r.password.as_ref().map(Password::expose), Some("p@ss:w0rd"));
        assert_eq!(
            r.tls.as_ref().map(|t| t.cert_reqs),
            Some(CertReqs::Required)
        );
        let shown = format!("{c:?} {c} {r}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
    }

    #[test]
    fn parts_build_a_config() {
        let c = vars(&[
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_SOCKET_TIMEOUT", "0.5"),
            ("REDIS_CONNECTION_POOL_MAX_SIZE", "7"),
        ])
        .unwrap();
        let r = redis(&c);
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 6380));
        assert_eq!(r.socket_timeout, Duration::from_millis(500));
        assert_eq!(r.pool_max_size, 7);
        assert!(r.tls.is_none());
    }

    #[test]
    fn invalid_settings_name_the_variable_and_the_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("REDIS_URL", "redis://h:1"), ("REDIS_SSL", "true")],
                "use rediss://",
            ),
            (
                &[
                    ("REDIS_HOST", "h"),
                    ("REDIS_SSL", "true"),
                    ("REDIS_SSL_CERT_REQS", "maybe"),
                ],
                "REDIS_SSL_CERT_REQS",
            ),
            (
                &[("REDIS_HOST", "h"), ("REDIS_PORT", "99999")],
                "REDIS_PORT",
            ),
            (
                &[
                    ("REDIS_URL", "rediss://h:1"),
                    ("REDIS_SSL_CA_CERTS", "/nonexistent/ca.pem"),
                ],
                "REDIS_SSL_CA_CERTS",
            ),
            (
                &[("REDIS_HOST", "h"), ("REDIS_SOCKET_TIMEOUT", "five")],
                "REDIS_SOCKET_TIMEOUT",
            ),
            (&[("REDIS_URL", "http://h:1")], "redis:// or rediss://"),
            (&[("REDIS_KEY_PREFIX", "a:b")], "REDIS_KEY_PREFIX"),
        ];
        for (input, needle) in cases {
            let err = vars(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn password_never_in_errors() {
        let err = vars(&[("REDIS_URL", "redis://u:hunter2@h:1/notadb")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("***"), "{err}");
    }

    #[test]
    fn redact_url_handles_odd_input() {
        assert_eq!(redact_url("redis://u:p@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("garbage"), "garbage");
        assert_eq!(redact_url("redis://:p@w@h"), "redis://:***@h");
    }
}
