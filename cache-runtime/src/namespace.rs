//! Namespaces and their TTL strategy.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::error::CacheError;

/// The second key segment. The seed's five are constants; custom ones are validated.
///
/// ```
/// use cache_runtime::Namespace;
/// assert_eq!(Namespace::TRADING.as_str(), "trading");
/// assert!(Namespace::new("reports-v2").is_ok());
/// assert!(Namespace::new("Bad:Name").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(Cow<'static, str>);

impl Namespace {
    /// User profiles and preferences (TTL 1 hour).
    pub const USERS: Self = Self(Cow::Borrowed("users"));
    /// AI-generated responses (TTL 30 minutes, to allow for model improvements).
    pub const AI: Self = Self(Cow::Borrowed("ai"));
    /// Market data and quotes (TTL 15 minutes).
    pub const TRADING: Self = Self(Cow::Borrowed("trading"));
    /// Portfolio metrics and analytics (TTL 30 minutes).
    pub const ANALYTICS: Self = Self(Cow::Borrowed("analytics"));
    /// Anything else (TTL `REDIS_TTL_DEFAULT`).
    pub const GENERAL: Self = Self(Cow::Borrowed("general"));

    /// The five namespaces of the seed.
    pub const BUILT_IN: [Self; 5] = [
        Self::USERS,
        Self::AI,
        Self::TRADING,
        Self::ANALYTICS,
        Self::GENERAL,
    ];

    /// A namespace from 1 to 64 characters of `[a-z0-9_-]`, not starting with `__`: the
    /// grammar the attributes check at compile time (`cache_grammar::check_name`).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Result<Self, CacheError> {
        let name = name.into();
        match cache_grammar::check_name(&name) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(CacheError::InvalidNamespace {
                name: name.into_owned(),
                reason,
            }),
        }
    }

    /// The segment as it appears in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The seed's TTL strategy; `general` and custom namespaces use `default`.
    pub fn default_ttl(&self, default: Duration) -> Duration {
        ttl_for(self.as_str(), default)
    }
}

/// TTL strategy of the seed: users 3600, ai 1800, trading 900, analytics 1800, else `default`.
pub(crate) fn ttl_for(namespace: &str, default: Duration) -> Duration {
    match namespace {
        "users" => Duration::from_secs(3600),
        "ai" | "analytics" => Duration::from_secs(1800),
        "trading" => Duration::from_secs(900),
        _ => default,
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
