//! Errors of the runtime. Every message says what to do about it.

use std::time::Duration;

use crate::config::ConfigError;

/// An error from a cache operation.
///
/// Decorated functions never see these: they log and run the body instead. Manual
/// operations return them so the caller can decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis could not be reached (refused, DNS, timeout while connecting).
    #[error("cannot reach Redis at {endpoint}: {detail}; check REDIS_URL/REDIS_HOST and REDIS_PORT, that the server is running, that your IP is allow-listed, or raise REDIS_SOCKET_CONNECT_TIMEOUT")]
    Unreachable {
        /// host:port, never credentials.
        endpoint: String,
        /// What the driver said.
        detail: String,
    },
    /// The TLS handshake failed (certificate, CA, hostname, or a plain server on a TLS port).
    #[error("TLS handshake with {endpoint} failed: {detail}; check that the URL uses rediss:// on the TLS port, that REDIS_SSL_CA_CERTS points to the server's CA (Redis Cloud: redis_ca.pem), and that the certificate is valid for the host name")]
    Tls {
        /// host:port.
        endpoint: String,
        /// What the TLS layer said.
        detail: String,
    },
    /// The server refused the credentials (WRONGPASS, NOAUTH) or the ACL user lacks rights.
    #[error("Redis refused authentication or permission: {detail}; check REDIS_USERNAME (Redis Cloud: default) and REDIS_PASSWORD (percent-encode special characters in REDIS_URL), and the ACL rules of that user")]
    Auth {
        /// The server's message.
        detail: String,
    },
    /// The server did not answer within the socket timeout.
    #[error("Redis did not answer within {0:?}; the server may be overloaded or the network slow: raise REDIS_SOCKET_TIMEOUT or check the server")]
    Timeout(Duration),
    /// The cache is temporarily not used after repeated failures (circuit open).
    #[error(
        "the cache is temporarily bypassed after repeated Redis failures; it retries by itself"
    )]
    Unavailable,
    /// Any other error reported by Redis.
    #[error("Redis error: {0}")]
    Redis(String),
    /// A value could not be encoded.
    #[error("cannot encode the value with {codec}: {detail}")]
    Encode {
        /// Codec name.
        codec: &'static str,
        /// Encoder message.
        detail: String,
    },
    /// A stored value could not be decoded as the requested type.
    #[error("the value at this key is not a {codec} value of the requested type ({detail}); it is treated as a miss and will be overwritten by the next store")]
    Decode {
        /// Codec name.
        codec: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The encoded value is larger than `CACHE_MAX_VALUE_BYTES`.
    #[error("the encoded value is {size} bytes, above the limit of {limit} bytes (CACHE_MAX_VALUE_BYTES); it was not stored")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The key holds a value that is not a counter (INCRBY on a non-integer).
    #[error("the key does not hold an integer counter: {0}; delete it or use another key")]
    NotACounter(String),
    /// [`crate::init`] was called after the global cache was set up (by an earlier `init`
    /// or by first use).
    #[error("the global cache is already initialised; call cache_runtime::init once, at start-up, before any cached call")]
    AlreadyInitialized,
    /// A namespace name outside `[a-z0-9_-]{{1,64}}`.
    #[error("invalid namespace {0:?}: use 1 to 64 characters from a-z, 0-9, '_' and '-', not starting with '__' (reserved)")]
    InvalidNamespace(String),
}

impl CacheError {
    /// Whether the error is a connection-level fault (counts toward the circuit breaker).
    pub fn is_connection_fault(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Tls { .. } | Self::Timeout(_) | Self::Unavailable
        )
    }
}

/// Result of cache operations.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
