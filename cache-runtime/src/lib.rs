//! Redis-backed caching for async Rust functions.
//!
//! ```
//! use cache_runtime::{cache_result, cache_user_specific};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Metrics { total_return: f64 }
//! #[derive(Debug)]
//! struct DbError;
//! #[derive(Serialize, Deserialize)]
//! struct Report { lines: Vec<String> }
//!
//! #[cache_result(ttl = 3600, namespace = "analytics")]
//! async fn calculate_portfolio_metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
//!     Ok(Metrics { total_return: 0.12 }) // only Ok values are cached
//! }
//!
//! #[cache_user_specific(ttl = "30m", data_type = "reports")]
//! async fn generate_user_report(user_id: &str, report_type: &str) -> Report {
//!     Report { lines: vec![format!("{report_type} for {user_id}")] }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // No REDIS_URL: the embedded store. The second call is a hit.
//! let first = calculate_portfolio_metrics("user_123", "30d").await.unwrap();
//! let again = calculate_portfolio_metrics("user_123", "30d").await.unwrap();
//! assert_eq!(first.total_return, again.total_return);
//! let report = generate_user_report("user_123", "monthly").await;
//! assert_eq!(report.lines, ["monthly for user_123"]);
//! # });
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

mod backend;
mod cache;
pub mod cli;
pub mod codec;
pub mod config;
mod counters;
mod engine;
pub mod error;
mod fasthash;
mod flight;
mod global;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod l1;
mod manual;
pub mod metrics;
mod namespace;
pub mod service;
mod shape;
mod stats_publisher;

#[doc(hidden)]
pub mod __private;

pub use backend::{KeyTtl, PoolStats};
pub use cache::Cache;
pub use cache_grammar::NameError;
pub use cache_macros::{cache_result, cache_user_specific};
pub use codec::CodecKind;
pub use config::{CacheConfig, CacheConfigBuilder, CertReqs, ClusterMode, ConfigError};
pub use counters::NamespaceCounters;
pub use error::CacheError;
pub use global::{global, init, with_cache};
pub use manual::NamespaceCache;
pub use namespace::Namespace;
