//! The table of settings: one entry per variable (its builder field, type, parser, default
//! and meaning). The builder, the environment parsing, the redacted `Debug` of the builder,
//! [`SETTINGS`] (which the README's configuration table is checked against) and
//! [`super::VARIABLES`] are all generated from it, so a setting lives in one place.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::parse;
use super::{CertReqs, ClusterMode, NodeAddr, Password};
use crate::codec::CodecKind;
use crate::error::ConfigError;

/// What happens when a variable is not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefaultValue {
    /// The value used, written as the variable would be (`"6379"`); setting the variable
    /// to it changes nothing (a test checks this).
    Value(&'static str),
    /// There is no value; the text says what happens instead.
    Unset(&'static str),
}

impl fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => write!(f, "`{v}`"),
            Self::Unset(text) => f.write_str(text),
        }
    }
}

/// One configuration variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Setting {
    /// The environment (and `.env`) variable.
    pub var: &'static str,
    /// The [`CacheConfigBuilder`] method that sets it.
    pub builder: &'static str,
    /// What it means.
    pub meaning: &'static str,
    /// Its default.
    pub default: DefaultValue,
}

fn shown<T: fmt::Debug>(value: &Option<T>) -> String {
    format!("{value:?}")
}

fn shown_url(value: &Option<String>) -> String {
    format!("{:?}", value.as_deref().map(super::url::redact_url))
}

/// A builder method: `into` takes anything convertible (strings, paths), `value` takes the
/// type itself (so integer literals infer).
macro_rules! setter {
    (into, $field:ident, $ty:ty, $doc:expr) => {
        #[doc = $doc]
        #[must_use]
        pub fn $field(mut self, value: impl Into<$ty>) -> Self {
            self.$field = Some(value.into());
            self
        }
    };
    (value, $field:ident, $ty:ty, $doc:expr) => {
        #[doc = $doc]
        #[must_use]
        pub fn $field(mut self, value: $ty) -> Self {
            self.$field = Some(value);
            self
        }
    };
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty = $var:literal, $setter:ident, $parse:expr, $show:path, $default:expr;
    )*) => {
        /// Builds a [`CacheConfig`](super::CacheConfig) in code; [`build`](Self::build)
        /// validates like the environment does, and reports every invalid setting at once.
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
            $(pub(super) $field: Option<$ty>,)*
            /// Database number: from the URL path, or [`CacheConfigBuilder::db`].
            pub(super) db: Option<i64>,
        }

        impl CacheConfigBuilder {
            $(setter!($setter, $field, $ty, concat!("`", $var, "`:", $($doc),+));)*

            /// Sets the variable `var` from its text; `Ok(false)` when `var` is not a setting.
            pub(super) fn set_var(&mut self, var: &str, value: &str) -> Result<bool, ConfigError> {
                match var {
                    $($var => self.$field = Some(($parse)($var, value)?),)*
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }

        impl fmt::Debug for CacheConfigBuilder {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut s = f.debug_struct("CacheConfigBuilder");
                $(s.field(stringify!($field), &format_args!("{}", $show(&self.$field)));)*
                s.field("db", &self.db).finish()
            }
        }

        /// Every setting, in the order of the README's configuration table.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            var: $var,
            builder: stringify!($field),
            meaning: concat!($($doc),+),
            default: $default,
        },)*];

        /// The variables this crate reads.
        pub const VARIABLES: &[&str] = &[$($var,)*];
    };
}

use DefaultValue::{Unset, Value};

settings! {
    /// `redis://` or `rediss://[user[:password]@]host[:port][/db]`; wins over the parts.
    url: String = "REDIS_URL", into, parse::text, shown_url, Unset("unset: the parts below, else the embedded store");
    /// Host name or IP address of Redis.
    host: String = "REDIS_HOST", into, parse::text, shown, Unset("unset");
    /// TCP port of Redis.
    port: u16 = "REDIS_PORT", value, parse::port, shown, Value("6379");
    /// ACL user name.
    username: String = "REDIS_USERNAME", into, parse::text, shown, Unset("the server's default user");
    /// Password (percent-encode special characters inside `REDIS_URL`); never shown.
    password: Password = "REDIS_PASSWORD", into, parse::password, shown, Unset("none");
    /// TLS on; `redis://` with `REDIS_SSL=true` is an error, not a silent downgrade.
    ssl: bool = "REDIS_SSL", value, parse::boolean, shown, Unset("`false` (`true` for `rediss://`)");
    /// `required` (chain and host name), `optional` (chain only, warned), `none` (nothing, warned loudly).
    cert_reqs: CertReqs = "REDIS_SSL_CERT_REQS", value, parse::cert_reqs, shown, Value("required");
    /// PEM file of trusted CAs (Redis Cloud: `redis_ca.pem`).
    ca_certs: PathBuf = "REDIS_SSL_CA_CERTS", into, parse::path, shown, Unset("the system's roots");
    /// Client certificate for mutual TLS (with `REDIS_SSL_KEYFILE`).
    certfile: PathBuf = "REDIS_SSL_CERTFILE", into, parse::path, shown, Unset("none");
    /// Client key for mutual TLS (with `REDIS_SSL_CERTFILE`).
    keyfile: PathBuf = "REDIS_SSL_KEYFILE", into, parse::path, shown, Unset("none");
    /// `auto` (a node reporting `cluster_enabled:1` at connect switches to cluster mode), `true` (a Redis Cluster) or `false` (standalone; refused against a cluster).
    cluster: ClusterMode = "REDIS_CLUSTER", value, parse::cluster_mode, shown, Value("auto");
    /// More seed nodes of a cluster, `host:port,host:port`, with the same credentials and TLS settings.
    cluster_nodes: Vec<NodeAddr> = "REDIS_CLUSTER_NODES", value, parse::node_list, shown, Unset("none: `REDIS_URL`/`REDIS_HOST` is the seed");
    /// Most connections to Redis.
    pool_max_size: usize = "REDIS_CONNECTION_POOL_MAX_SIZE", value, parse::size::<1, 10_000>, shown, Value("50");
    /// Concurrent GETs on a standalone server: past 4 in flight, the next ones go out together as MGETs, each once 8 wait or a read completes (fewer round trips and server commands under load; a few concurrent reads are sent at once).
    batch_reads: bool = "REDIS_BATCH_READS", value, parse::boolean, shown, Value("true");
    /// Values seen to be 256 KiB or more are read in ranges of this many bytes on a connection of their own, one large value at a time per process and one range in flight while other requests are, so a single-threaded Redis never stalls other clients' requests while it copies one large reply (standalone servers; `0`: read them whole and at once).
    read_range: usize = "REDIS_READ_RANGE", value, parse::size::<0, 536_870_912>, shown, Value("262144");
    /// Seconds a command may take (fractions allowed).
    socket_timeout: Duration = "REDIS_SOCKET_TIMEOUT", value, parse::seconds, shown, Value("5");
    /// Seconds a connect may take (fractions allowed).
    connect_timeout: Duration = "REDIS_SOCKET_CONNECT_TIMEOUT", value, parse::seconds, shown, Value("10");
    /// TTL in seconds of namespace `general`, custom namespaces and calls without one.
    ttl_default: Duration = "REDIS_TTL_DEFAULT", value, parse::whole_seconds::<1, 4_294_967_295>, shown, Value("3600");
    /// First segment of every key: `[A-Za-z0-9_.-]{1,64}`.
    key_prefix: String = "REDIS_KEY_PREFIX", into, parse::text, shown, Value("tradistry");
    /// Value codec: `bincode` (compact), `json` (readable in redis-cli) or `json-plain` (bare JSON as Python writes it, shared with other services).
    codec: CodecKind = "CACHE_CODEC", value, parse::codec, shown, Value("bincode");
    /// Larger encoded values are not stored (the call still returns).
    max_value_bytes: usize = "CACHE_MAX_VALUE_BYTES", value, parse::size::<1, 536_870_912>, shown, Value("33554432");
    /// Envelope payloads larger than this many bytes are LZ4-compressed when that shrinks them (`0`: never). The size limit applies before compression.
    compress_above: usize = "CACHE_COMPRESS_ABOVE", value, parse::size::<0, 536_870_912>, shown, Value("65536");
    /// Most entries of the embedded store; past it, the least recently used are evicted (LRU).
    memory_max_entries: u64 = "CACHE_MEMORY_MAX_ENTRIES", value, parse::count::<1, { u64::MAX }>, shown, Value("100000");
    /// Most bytes (keys and values) of the embedded store; past it, the least recently used are evicted (LRU).
    memory_max_bytes: u64 = "CACHE_MEMORY_MAX_BYTES", value, parse::count::<1, { u64::MAX }>, shown, Value("268435456");
    /// An in-process L1 in front of Redis, coherent across processes.
    l1: bool = "CACHE_L1", value, parse::boolean, shown, Value("false");
    /// Most entries of the L1.
    l1_max_entries: u64 = "CACHE_L1_MAX_ENTRIES", value, parse::count::<1, { u64::MAX }>, shown, Value("10000");
    /// Most bytes of the L1 (keys, plus each value twice: its bytes and the decoded copy hits clone).
    l1_max_bytes: u64 = "CACHE_L1_MAX_BYTES", value, parse::count::<1, { u64::MAX }>, shown, Value("67108864");
    /// Longest an L1 entry is served, in seconds (never longer than its Redis TTL).
    l1_max_ttl: Duration = "CACHE_L1_MAX_TTL", value, parse::seconds, shown, Value("60");
    /// Default fail-safe window of decorated functions: how long past its TTL an entry is kept and served when the body fails (`0s`: off; the attribute's `fail_safe` overrides). Seconds or a duration (`2h`).
    fail_safe: Duration = "CACHE_FAIL_SAFE", value, parse::duration, shown, Value("0s");
    /// Decorated calls take a short lock in Redis on a miss, so a cold key's body runs once across processes (the attribute's `distributed_lock` overrides).
    distributed_lock: bool = "CACHE_DISTRIBUTED_LOCK", value, parse::boolean, shown, Value("false");
    /// Longest a distributed lock is held (its owner may die), and so the longest other processes wait for its value. Seconds or a duration.
    lock_lease: Duration = "CACHE_LOCK_LEASE", value, parse::duration, shown, Value("10s");
}

impl CacheConfigBuilder {
    /// Database number (the path of `REDIS_URL` otherwise).
    #[must_use]
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// `REDIS_SSL_CERTFILE` and `REDIS_SSL_KEYFILE`: a client certificate for mutual TLS.
    #[must_use]
    pub fn client_cert(self, certfile: impl Into<PathBuf>, keyfile: impl Into<PathBuf>) -> Self {
        self.certfile(certfile).keyfile(keyfile)
    }
}

/// The README's configuration table, rendered from [`SETTINGS`].
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | builder | meaning | default |\n|---|---|---|---|\n");
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | `.{}()` | {} | {} |\n",
            s.var,
            s.builder,
            s.meaning.trim(),
            s.default
        ));
    }
    out
}
