//! Configuration: environment (and `.env`), `REDIS_URL` or its parts, or a builder in code.
//!
//! Every setting is one entry of the table in `settings.rs` ([`SETTINGS`]); both sources go
//! through one validation ([`CacheConfigBuilder::build`]), so an invalid setting fails at
//! start with a message that names the variable and the fix, and every invalid setting is
//! reported at once.

mod parse;
mod settings;
mod url;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::settings::{
    markdown_table, CacheConfigBuilder, DefaultValue, Setting, SETTINGS, VARIABLES,
};
pub use self::url::redact_url;
use crate::codec::CodecKind;
pub use crate::error::ConfigError;

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
/// Default range of large reads (`REDIS_READ_RANGE`): 256 KiB, which Redis copies in
/// well under a millisecond (a whole 10 MB reply stalls it for 4-5 ms).
pub const DEFAULT_READ_RANGE: usize = 256 * 1024;
/// The smallest range `REDIS_READ_RANGE` accepts (besides `0`, off).
pub const MIN_READ_RANGE: usize = 4096;
/// Default compression threshold (`CACHE_COMPRESS_ABOVE`): 64 KiB, where LZ4's ~1 ms per
/// compressible MB is well below the network time it saves.
pub const DEFAULT_COMPRESS_ABOVE: usize = 64 * 1024;
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
/// Default of `CACHE_LOCK_LEASE`.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(10);

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

impl From<&str> for Password {
    fn from(password: &str) -> Self {
        Self::new(password)
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Self(password)
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

/// Whether Redis is a cluster (`REDIS_CLUSTER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClusterMode {
    /// Ask the server at the first connect: a node that reports `cluster_enabled:1`
    /// switches the cache to cluster mode (logged). The default.
    #[default]
    Auto,
    /// A cluster: connect through the cluster protocol from the start.
    Enabled,
    /// A standalone server. Pointed at a cluster node, the cache refuses to work (every
    /// operation fails with an error that says so) rather than cache a third of the keys.
    Disabled,
}

/// One `host:port` of `REDIS_CLUSTER_NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl NodeAddr {
    /// A node at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub pool_max_size: NonZeroUsize,
    /// Concurrent GETs go out together as MGETs (standalone servers; `REDIS_BATCH_READS`).
    pub batch_reads: bool,
    /// Values seen to be large are read in ranges of this many bytes, one value at a time
    /// per process (standalone servers; `0`: whole; `REDIS_READ_RANGE`).
    pub read_range: usize,
    /// Per-command timeout.
    pub socket_timeout: Duration,
    /// Per-connect timeout.
    pub connect_timeout: Duration,
    /// Standalone, cluster, or ask the server.
    pub cluster: ClusterMode,
    /// More seed nodes of a cluster besides `host:port` (`REDIS_CLUSTER_NODES`).
    pub cluster_nodes: Vec<NodeAddr>,
}

impl RedisConfig {
    /// `host:port`, for messages (never credentials).
    pub fn endpoint(&self) -> String {
        self.seed().to_string()
    }

    /// `host:port` as a node address.
    pub fn seed(&self) -> NodeAddr {
        NodeAddr {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// Every seed node of a cluster: `host:port`, then `REDIS_CLUSTER_NODES` (no
    /// duplicates).
    pub fn seeds(&self) -> Vec<NodeAddr> {
        let mut seeds = vec![self.seed()];
        for node in &self.cluster_nodes {
            if !seeds.contains(node) {
                seeds.push(node.clone());
            }
        }
        seeds
    }

    /// The same connection settings for another node (a cluster's).
    pub(crate) fn for_node(&self, node: &NodeAddr) -> Self {
        Self {
            host: node.host.clone(),
            port: node.port,
            ..self.clone()
        }
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
    pub max_entries: NonZeroU64,
    /// Most bytes of values held.
    pub max_bytes: NonZeroU64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_entries: NonZeroU64::new(DEFAULT_MEMORY_MAX_ENTRIES).unwrap_or(NonZeroU64::MIN),
            max_bytes: NonZeroU64::new(DEFAULT_MEMORY_MAX_BYTES).unwrap_or(NonZeroU64::MIN),
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
    pub max_entries: NonZeroU64,
    /// Most bytes of values held.
    pub max_bytes: NonZeroU64,
    /// Longest an entry is served (never longer than its Redis TTL).
    pub max_ttl: Duration,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            max_entries: NonZeroU64::new(DEFAULT_L1_MAX_ENTRIES).unwrap_or(NonZeroU64::MIN),
            max_bytes: NonZeroU64::new(DEFAULT_L1_MAX_BYTES).unwrap_or(NonZeroU64::MIN),
            max_ttl: DEFAULT_L1_MAX_TTL,
        }
    }
}

/// Which store the runtime uses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
// One per configuration: the size difference costs nothing, a box would cost clarity.
#[allow(clippy::large_enum_variant)]
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
    pub max_value_bytes: NonZeroUsize,
    /// Envelope payloads above this many bytes are compressed when that shrinks them
    /// (`0`: never).
    pub compress_above: usize,
    /// The in-process L1 in front of Redis, when enabled (ignored by the embedded store).
    pub l1: Option<L1Config>,
    /// Defaults of decorated functions' resilience options.
    pub resilience: ResilienceConfig,
}

/// Defaults of decorated functions' resilience options (each attribute may override them).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResilienceConfig {
    /// How long past its TTL an entry is kept and served when the body fails; zero: off.
    pub fail_safe: Duration,
    /// A cold key's body runs once across processes sharing the Redis.
    pub distributed_lock: bool,
    /// Longest a distributed lock is held, and so the longest others wait for its value.
    pub lock_lease: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            fail_safe: Duration::ZERO,
            distributed_lock: false,
            lock_lease: DEFAULT_LOCK_LEASE,
        }
    }
}

impl Default for CacheConfig {
    /// The embedded store with every default.
    fn default() -> Self {
        Self {
            backend: BackendConfig::Memory(MemoryConfig::default()),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            ttl_default: DEFAULT_TTL,
            codec: CodecKind::default(),
            max_value_bytes: NonZeroUsize::new(DEFAULT_MAX_VALUE_BYTES)
                .unwrap_or(NonZeroUsize::MIN),
            compress_above: DEFAULT_COMPRESS_ABOVE,
            l1: None,
            resilience: ResilienceConfig::default(),
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
    /// embedders configure without touching the process environment. Unknown names are
    /// ignored; empty values count as unset. Every invalid value is reported, at once.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let mut builder = CacheConfigBuilder::default();
        let mut errors = Vec::new();
        // In table order, so errors come out in a stable order.
        for var in VARIABLES {
            if let Some(value) = vars.get(*var) {
                if let Err(e) = builder.set_var(var, value) {
                    errors.push(e);
                }
            }
        }
        let result = builder.build();
        if let Err(e) = &result {
            errors.extend(e.errors().iter().cloned());
        }
        match ConfigError::collect(errors) {
            Some(e) => Err(e),
            None => result,
        }
    }
}

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
        assert_eq!(c, CacheConfig::default());
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
        assert_eq!(r.pool_max_size.get(), 7);
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
    fn every_invalid_setting_is_reported_at_once() {
        let err = vars(&[
            ("REDIS_HOST", "h"),
            ("REDIS_PORT", "99999"),
            ("REDIS_SOCKET_TIMEOUT", "five"),
            ("REDIS_KEY_PREFIX", "a:b"),
            ("CACHE_L1_MAX_TTL", "0"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err
            .errors()
            .iter()
            .filter_map(|e| match e {
                ConfigError::Invalid { var, .. } => Some(*var),
                _ => None,
            })
            .collect();
        assert_eq!(
            vars,
            [
                "REDIS_PORT",
                "REDIS_SOCKET_TIMEOUT",
                "CACHE_L1_MAX_TTL",
                "REDIS_KEY_PREFIX"
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(text.starts_with("4 settings are invalid"), "{text}");
    }

    #[test]
    fn zero_is_refused_where_it_makes_no_sense() {
        for (var, value) in [
            ("REDIS_CONNECTION_POOL_MAX_SIZE", "0"),
            ("CACHE_MAX_VALUE_BYTES", "0"),
            ("CACHE_MEMORY_MAX_ENTRIES", "0"),
            ("CACHE_L1_MAX_BYTES", "0"),
            ("REDIS_TTL_DEFAULT", "0"),
        ] {
            let err = vars(&[("REDIS_HOST", "h"), (var, value)]).unwrap_err();
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
        // The builder takes plain numbers and refuses zero the same way.
        let err = CacheConfig::builder()
            .host("h")
            .pool_max_size(0usize)
            .max_value_bytes(0usize)
            .build()
            .unwrap_err();
        assert_eq!(err.errors().len(), 2, "{err}");
    }

    #[test]
    fn cluster_settings() {
        let c = vars(&[("REDIS_URL", "redis://h:7000")]).unwrap();
        assert_eq!(redis(&c).cluster, ClusterMode::Auto);
        let c = vars(&[
            ("REDIS_URL", "rediss://u:p@h:7000"),
            ("REDIS_CLUSTER_NODES", "h2:7001, [::1]:7002,h:7000"),
        ])
        .unwrap();
        let r = redis(&c);
        assert_eq!(
            r.cluster,
            ClusterMode::Enabled,
            "several seeds mean a cluster"
        );
        let seeds: Vec<String> = r.seeds().iter().map(ToString::to_string).collect();
        assert_eq!(seeds, ["h:7000", "h2:7001", "[::1]:7002"]);
        assert!(r.tls.is_some(), "the same TLS settings for every node");
        // Seeds alone are enough.
        let c = vars(&[("REDIS_CLUSTER_NODES", "10.0.0.1:6379,10.0.0.2:6379")]).unwrap();
        assert_eq!(redis(&c).endpoint(), "10.0.0.1:6379");
        for (pairs, needle) in [
            (
                &[("REDIS_HOST", "h"), ("REDIS_CLUSTER", "maybe")][..],
                "REDIS_CLUSTER",
            ),
            (
                &[("REDIS_CLUSTER", "false"), ("REDIS_CLUSTER_NODES", "h:1")][..],
                "REDIS_CLUSTER=false",
            ),
            (
                &[("REDIS_CLUSTER_NODES", "h:1,nonsense")][..],
                "REDIS_CLUSTER_NODES",
            ),
            (
                &[("REDIS_URL", "redis://h:1/2"), ("REDIS_CLUSTER", "true")][..],
                "database 0",
            ),
        ] {
            let err = vars(pairs).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
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
    fn builder_debug_shows_every_setting_and_no_secret() {
        let b = CacheConfig::builder()
            .url("redis://u:hunter2@h:1")
            .password("hunter3")
            .l1_max_bytes(5u64);
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        for s in SETTINGS {
            assert!(
                shown.contains(s.builder),
                "{} missing from {shown}",
                s.builder
            );
        }
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        // Setting every variable to its documented default changes nothing.
        let base = [("REDIS_HOST", "h")];
        let mut with_defaults: Vec<(&str, &str)> = base.to_vec();
        for s in SETTINGS {
            if let DefaultValue::Value(v) = s.default {
                with_defaults.push((s.var, v));
            }
        }
        assert_eq!(vars(&with_defaults).unwrap(), vars(&base).unwrap());
        let embedded: Vec<(&str, &str)> = with_defaults
            .into_iter()
            .filter(|(k, _)| *k != "REDIS_HOST")
            .collect();
        assert_eq!(vars(&embedded).unwrap(), CacheConfig::default());
    }

    #[test]
    fn every_setting_has_a_builder_method_and_meaning() {
        let mut seen = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(seen.insert(s.var), "{} twice", s.var);
            assert!(!s.meaning.trim().is_empty(), "{} has no meaning", s.var);
            assert!(s
                .var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}

#[cfg(test)]
mod readme {
    /// The README's configuration table is the one the settings table renders.
    #[test]
    fn readme_configuration_table_matches_the_settings() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md next to the workspace");
        let expected = super::markdown_table();
        let start = readme
            .find("| variable | builder | meaning | default |")
            .expect("the README has a configuration table");
        let end = readme[start..]
            .find("\n\n")
            .map_or(readme.len(), |n| start + n + 1);
        assert!(
            readme[start..end] == expected,
            "README.md's configuration table is out of date; replace it with:\n\n{expected}"
        );
    }
}
