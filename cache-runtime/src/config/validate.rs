//! [`CacheConfigBuilder::build`]: every rule between settings, with every violation reported.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use super::url::parse_url;
use super::{
    BackendConfig, CacheConfig, CacheConfigBuilder, ClusterMode, L1Config, MemoryConfig,
    RedisConfig, ResilienceConfig, TlsConfig, DEFAULT_COMPRESS_ABOVE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEY_PREFIX, DEFAULT_L1_MAX_BYTES, DEFAULT_L1_MAX_ENTRIES, DEFAULT_L1_MAX_TTL,
    DEFAULT_LOCK_LEASE, DEFAULT_MAX_VALUE_BYTES, DEFAULT_MEMORY_MAX_BYTES,
    DEFAULT_MEMORY_MAX_ENTRIES, DEFAULT_POOL_MAX_SIZE, DEFAULT_READ_RANGE, DEFAULT_SOCKET_TIMEOUT,
    DEFAULT_TTL, MIN_READ_RANGE,
};
use crate::error::{invalid, ConfigError};

/// Collects violations; a rule that fails gives a placeholder so the others still run.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    fn nonzero_u64(&mut self, var: &'static str, value: Option<u64>, default: u64) -> NonZeroU64 {
        NonZeroU64::new(value.unwrap_or(default)).unwrap_or_else(|| {
            self.push(invalid(var, "0", "use at least 1"));
            NonZeroU64::MIN
        })
    }

    fn nonzero_usize(
        &mut self,
        var: &'static str,
        value: Option<usize>,
        default: usize,
    ) -> NonZeroUsize {
        NonZeroUsize::new(value.unwrap_or(default)).unwrap_or_else(|| {
            self.push(invalid(var, "0", "use at least 1"));
            NonZeroUsize::MIN
        })
    }

    fn positive(
        &mut self,
        var: &'static str,
        value: Option<Duration>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let d = value.unwrap_or(default);
        if d < min {
            self.push(invalid(
                var,
                &format!("{}", d.as_secs_f64()),
                format!("use at least {} seconds", min.as_secs_f64()),
            ));
        }
        d
    }
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl CacheConfigBuilder {
    /// Validates and builds; every invalid setting is reported (one error, or
    /// [`ConfigError::Several`]).
    pub fn build(&self) -> Result<CacheConfig, ConfigError> {
        let mut errors = Errors::default();
        let key_prefix = self
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        if !valid_prefix(&key_prefix) {
            errors.push(invalid(
                "REDIS_KEY_PREFIX",
                &key_prefix,
                "use 1 to 64 characters from A-Z, a-z, 0-9, '_', '-' and '.' (no ':')",
            ));
        }
        let ttl_default = errors.positive(
            "REDIS_TTL_DEFAULT",
            self.ttl_default,
            DEFAULT_TTL,
            Duration::from_secs(1),
        );
        let max_value_bytes = errors.nonzero_usize(
            "CACHE_MAX_VALUE_BYTES",
            self.max_value_bytes,
            DEFAULT_MAX_VALUE_BYTES,
        );
        let backend = if self.url.is_some()
            || self.host.is_some()
            || self.cluster_nodes.as_ref().is_some_and(|n| !n.is_empty())
        {
            BackendConfig::Redis(self.redis(&mut errors))
        } else {
            BackendConfig::Memory(MemoryConfig {
                max_entries: errors.nonzero_u64(
                    "CACHE_MEMORY_MAX_ENTRIES",
                    self.memory_max_entries,
                    DEFAULT_MEMORY_MAX_ENTRIES,
                ),
                max_bytes: errors.nonzero_u64(
                    "CACHE_MEMORY_MAX_BYTES",
                    self.memory_max_bytes,
                    DEFAULT_MEMORY_MAX_BYTES,
                ),
            })
        };
        let l1 = (self.l1 == Some(true)).then(|| L1Config {
            max_entries: errors.nonzero_u64(
                "CACHE_L1_MAX_ENTRIES",
                self.l1_max_entries,
                DEFAULT_L1_MAX_ENTRIES,
            ),
            max_bytes: errors.nonzero_u64(
                "CACHE_L1_MAX_BYTES",
                self.l1_max_bytes,
                DEFAULT_L1_MAX_BYTES,
            ),
            max_ttl: errors.positive(
                "CACHE_L1_MAX_TTL",
                self.l1_max_ttl,
                DEFAULT_L1_MAX_TTL,
                Duration::from_millis(1),
            ),
        });
        let resilience = ResilienceConfig {
            fail_safe: self.fail_safe.unwrap_or(Duration::ZERO),
            distributed_lock: self.distributed_lock.unwrap_or(false),
            lock_lease: errors.positive(
                "CACHE_LOCK_LEASE",
                self.lock_lease,
                DEFAULT_LOCK_LEASE,
                Duration::from_millis(10),
            ),
        };
        let config = CacheConfig {
            backend,
            key_prefix,
            ttl_default,
            codec: self.codec.unwrap_or_default(),
            max_value_bytes,
            compress_above: self.compress_above.unwrap_or(DEFAULT_COMPRESS_ABOVE),
            l1,
            resilience,
        };
        match ConfigError::collect(errors.0) {
            Some(e) => Err(e),
            None => Ok(config),
        }
    }

    fn redis(&self, errors: &mut Errors) -> RedisConfig {
        let mut cfg = RedisConfig {
            host: String::new(),
            port: self.port.unwrap_or(6379),
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db.unwrap_or(0),
            tls: None,
            pool_max_size: errors.nonzero_usize(
                "REDIS_CONNECTION_POOL_MAX_SIZE",
                self.pool_max_size,
                DEFAULT_POOL_MAX_SIZE,
            ),
            batch_reads: self.batch_reads.unwrap_or(true),
            read_range: match self.read_range.unwrap_or(DEFAULT_READ_RANGE) {
                n @ (0 | MIN_READ_RANGE..) => n,
                n => {
                    errors.push(invalid(
                        "REDIS_READ_RANGE",
                        &n.to_string(),
                        format!(
                            "use 0 (read large values whole) or at least {MIN_READ_RANGE} bytes"
                        ),
                    ));
                    DEFAULT_READ_RANGE
                }
            },
            socket_timeout: errors.positive(
                "REDIS_SOCKET_TIMEOUT",
                self.socket_timeout,
                DEFAULT_SOCKET_TIMEOUT,
                Duration::from_micros(1),
            ),
            connect_timeout: errors.positive(
                "REDIS_SOCKET_CONNECT_TIMEOUT",
                self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
                Duration::from_micros(1),
            ),
            cluster: self.cluster.unwrap_or_default(),
            cluster_nodes: self.cluster_nodes.clone().unwrap_or_default(),
        };
        let tls_from_scheme = if let Some(url) = &self.url {
            match parse_url(url) {
                Ok(parsed) => {
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
                }
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        } else if self.host.is_none() && !cfg.cluster_nodes.is_empty() {
            // Only REDIS_CLUSTER_NODES: the first node is the seed.
            let first = cfg.cluster_nodes.remove(0);
            cfg.host = first.host;
            cfg.port = first.port;
            None
        } else {
            let host = self.host.clone().unwrap_or_default();
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                errors.push(invalid(
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
                errors.push(ConfigError::Conflict(
                    "REDIS_SSL=true but REDIS_URL starts with redis:// (plain TCP); use rediss:// for TLS, or set REDIS_SSL=false"
                        .to_owned(),
                ));
                false
            }
            (Some(true), Some(false)) => {
                errors.push(ConfigError::Conflict(
                    "REDIS_SSL=false but REDIS_URL starts with rediss:// (TLS); remove REDIS_SSL or use a redis:// URL"
                        .to_owned(),
                ));
                true
            }
            (Some(tls), _) => tls,
            (None, ssl) => ssl.unwrap_or(false),
        };
        let cluster_nodes_given = self.cluster_nodes.as_ref().is_some_and(|n| !n.is_empty());
        if cfg.cluster == ClusterMode::Disabled && cluster_nodes_given {
            errors.push(ConfigError::Conflict(
                "REDIS_CLUSTER_NODES is set but REDIS_CLUSTER=false; remove one of them (a cluster needs REDIS_CLUSTER=auto or true)".to_owned(),
            ));
        }
        if cluster_nodes_given && cfg.cluster == ClusterMode::Auto {
            // Several seed nodes only make sense for a cluster.
            cfg.cluster = ClusterMode::Enabled;
        }
        if cfg.cluster == ClusterMode::Enabled && cfg.db != 0 {
            errors.push(ConfigError::Conflict(format!(
                "a Redis Cluster has only database 0, but database {} is configured; remove the /{} of REDIS_URL",
                cfg.db, cfg.db
            )));
        }
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
                if let Some(Err(e)) = path.as_deref().map(|p| check_readable(var, p)) {
                    errors.push(e);
                }
            }
            if tls_cfg.certfile.is_some() != tls_cfg.keyfile.is_some() {
                errors.push(ConfigError::Conflict(
                    "REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together: set both for mutual TLS, or neither"
                        .to_owned(),
                ));
            }
            cfg.tls = Some(tls_cfg);
        } else if self.ca_certs.is_some() || self.certfile.is_some() || self.keyfile.is_some() {
            errors.push(ConfigError::Conflict(
                "REDIS_SSL_CA_CERTS/CERTFILE/KEYFILE are set but TLS is off; use a rediss:// URL or REDIS_SSL=true"
                    .to_owned(),
            ));
        }
        cfg
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
