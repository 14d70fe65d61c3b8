//! Redis-backed caching for async Rust functions.
//!
//! ```ignore
//! use cache_runtime::{cache_result, cache_user_specific};
//!
//! #[cache_result(ttl = 3600, namespace = "analytics")]
//! async fn calculate_portfolio_metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> { … }
//!
//! #[cache_user_specific(ttl = 1800, data_type = "reports")]
//! async fn generate_user_report(user_id: &str, report_type: &str) -> Report { … }
//! ```
//!
//! With `REDIS_URL` (or `REDIS_HOST`) set, values live in Redis (TLS with `rediss://`);
//! otherwise in an embedded in-process store. Any cache failure is logged and the function
//! body runs: the cache never changes what a function returns.
//!
//! Manual operations go through a [`Cache`]: [`global()`] for the process-wide one, or
//! [`Cache::new`] for an independent one.
//!
//! Log targets (`RUST_LOG=cache_runtime=debug`): `cache_runtime::connection`,
//! `cache_runtime::store`.
#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod codec;
pub mod config;
pub mod error;
mod flight;
mod global;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod l1;
mod namespace;
pub mod service;
mod store;

#[doc(hidden)]
pub mod __private;

pub use backend::{KeyTtl, PoolStats};
pub use cache_macros::{cache_result, cache_user_specific};
pub use codec::CodecKind;
pub use config::{CacheConfig, CacheConfigBuilder, CertReqs, ConfigError};
pub use error::CacheError;
pub use global::{global, init};
pub use namespace::Namespace;
pub use store::{Cache, NamespaceCache, NamespaceCounters};
