//! Errors of the runtime. Every message says what to do about it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    #[error("TLS handshake with {endpoint} failed: {detail}")]
    Tls {
        /// host:port.
        endpoint: String,
        /// The cause and what to do about it, then what the TLS layer said.
        detail: String,
    },
    /// The server refused the credentials (WRONGPASS, NOAUTH, AUTH at connect) or the ACL
    /// user lacks rights (NOPERM): see [`AuthCause`].
    #[error("Redis refused {}: {detail}; {}", .cause.what(), .cause.advice())]
    Auth {
        /// The server's message.
        detail: String,
        /// Credentials (every request fails: the circuit breaker opens) or one command or
        /// key (only those fail).
        cause: AuthCause,
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
    #[error("Redis replied with an error ({code}): {detail}")]
    Server {
        /// The server's error code (`ERR`, `READONLY`, …), empty when it gave none.
        code: String,
        /// The whole message.
        detail: String,
    },
    /// The key holds another Redis type (a hash, a list…) than the string this cache
    /// stores; reads treat it as a miss.
    #[error("the key holds another Redis type (WRONGTYPE); delete it or use another key")]
    WrongType,
    /// The configuration does not fit the server: a standalone configuration
    /// (`REDIS_CLUSTER=false`) pointed at a Redis Cluster, or a database number on one.
    #[error("{0}")]
    WrongTopology(String),
    /// A Redis operation was called outside a Tokio runtime.
    #[error("Redis operations need a Tokio runtime with I/O and timers enabled: call them from within #[tokio::main] or #[tokio::test], or a runtime built with enable_all(); the embedded store works anywhere")]
    NoRuntime,
    /// An argument the caller gave is unusable.
    #[error("{0}")]
    InvalidInput(String),
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
    /// The stored value was written for another shape of the requested type (a build where
    /// its fields, their types or its variants differed); it is treated as a miss and
    /// overwritten by the next store.
    #[error("the value at this key was written for another shape of the requested type (another build); it is treated as a miss and will be overwritten by the next store")]
    ShapeMismatch,
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
    /// A namespace name outside `[a-z0-9_-]{{1,64}}`, or starting with `__` (reserved).
    #[error("invalid namespace {name:?}: {reason}")]
    InvalidNamespace {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: cache_grammar::NameError,
    },
}

/// What an [`CacheError::Auth`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthCause {
    /// The credentials: a wrong or rotated password, an unknown or disabled user
    /// (WRONGPASS, AUTH refused at connect), or none given to a server that needs them
    /// (NOAUTH). Every request fails the same way until the configuration or the server
    /// changes.
    Credentials,
    /// The ACL user may not run this command or touch this key (NOPERM); other requests
    /// work.
    Permission,
}

impl AuthCause {
    fn what(self) -> &'static str {
        match self {
            Self::Credentials => "authentication",
            Self::Permission => "permission",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            Self::Credentials => "check REDIS_USERNAME (Redis Cloud: default) and REDIS_PASSWORD (percent-encode special characters in REDIS_URL); if the password was rotated, give this client the new one",
            Self::Permission => "the ACL rules of that user (REDIS_USERNAME) do not allow this command or key: grant it (ACL SETUSER) or use a user that has it",
        }
    }
}

impl CacheError {
    /// Whether Redis refused this client's credentials (WRONGPASS, NOAUTH, AUTH refused at
    /// connect): every request fails the same way until the password works. An ACL that
    /// refuses one command or key (NOPERM) is not one.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            Self::Auth {
                cause: AuthCause::Credentials,
                ..
            }
        )
    }

    /// Whether the error trips the circuit breaker: a connection fault or refused
    /// credentials, after which the next request would most likely fail the same way (so
    /// a store after a read that failed so is skipped too).
    pub fn trips_breaker(&self) -> bool {
        self.is_connection_fault() || self.is_authentication_failure()
    }

    /// Whether the error stays until the configuration or the server changes (refused
    /// credentials, a failed TLS handshake: a wrong CA, host name or port), so that it
    /// opens the breaker at once instead of after several in a row. The breaker logs it
    /// then, once, and answers bypassed requests with it.
    pub(crate) fn is_lasting(&self) -> bool {
        self.is_authentication_failure() || matches!(self, Self::Tls { .. })
    }

    /// Whether the circuit breaker reports this error (it logged it when it opened): a
    /// bypassed request, or a lasting fault, which opens the breaker at once. Callers that
    /// log every failed call leave these out, or a loop of calls would log each one.
    pub(crate) fn reported_by_breaker(&self) -> bool {
        matches!(self, Self::Unavailable) || self.is_lasting()
    }

    /// A copy of a lasting fault (see [`Self::is_lasting`]), to answer the requests it
    /// bypasses with; `None` for any other error.
    pub(crate) fn lasting_copy(&self) -> Option<Self> {
        self.is_lasting().then(|| self.copy())
    }

    /// The same fault for another request (one that shared this one's round trip, or one
    /// the breaker bypasses): the variants a request can fail with are copied; any other is
    /// passed on as its message.
    pub(crate) fn copy(&self) -> Self {
        match self {
            Self::Unreachable { endpoint, detail } => Self::Unreachable {
                endpoint: endpoint.clone(),
                detail: detail.clone(),
            },
            Self::Tls { endpoint, detail } => Self::Tls {
                endpoint: endpoint.clone(),
                detail: detail.clone(),
            },
            Self::Auth { detail, cause } => Self::Auth {
                detail: detail.clone(),
                cause: *cause,
            },
            Self::Timeout(after) => Self::Timeout(*after),
            Self::Unavailable => Self::Unavailable,
            Self::Server { code, detail } => Self::Server {
                code: code.clone(),
                detail: detail.clone(),
            },
            Self::WrongType => Self::WrongType,
            Self::WrongTopology(why) => Self::WrongTopology(why.clone()),
            Self::NoRuntime => Self::NoRuntime,
            other => Self::Server {
                code: String::new(),
                detail: other.to_string(),
            },
        }
    }

    /// Whether the error is a connection-level fault (counts toward the circuit breaker):
    /// a store after one would most likely fail the same way.
    pub fn is_connection_fault(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Tls { .. }
                | Self::Timeout(_)
                | Self::Unavailable
                | Self::NoRuntime
                | Self::WrongTopology(_)
        )
    }
}

/// Result of cache operations.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

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
    /// More than one setting is invalid: all of them, so they can be fixed in one go.
    #[error("{} settings are invalid:\n{}", .0.len(), Numbered(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The individual errors (one, or each of [`ConfigError::Several`]).
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            Self::Several(all) => all,
            one => std::slice::from_ref(one),
        }
    }

    /// One error, or [`ConfigError::Several`] for more; `None` for none.
    pub(crate) fn collect(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Self::Several(errors)),
        }
    }
}

struct Numbered<'a>(&'a [ConfigError]);

impl fmt::Display for Numbered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {}. {e}", i + 1)?;
        }
        Ok(())
    }
}

pub(crate) fn invalid(var: &'static str, value: &str, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        fix: fix.into(),
    }
}
