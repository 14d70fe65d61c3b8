//! The expansion is clean under strict lints. trybuild compiles and runs this file, and it
//! is also the test target `expansion_lints` (Cargo.toml), so `cargo clippy --all-targets`
//! checks the generated code against clippy's pedantic lints too.
#![deny(warnings, unused_qualifications, missing_docs, unused_results)]
#![deny(clippy::all, clippy::pedantic)]
//! Fixture crate.

use cache_runtime::{cache_result, cache_user_specific};
use serde::{Deserialize, Serialize};

/// Metrics.
#[derive(Serialize, Deserialize)]
pub struct Metrics {
    total: u64,
}

/// An error.
#[derive(Debug)]
pub struct DbError;

/// A cached function.
///
/// # Errors
/// Never.
#[cache_result(ttl = 3600, namespace = "analytics")]
pub async fn metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
    Ok(Metrics {
        total: u64::from(user_id.len() == timeframe.len()),
    })
}

/// A per-user cached function.
#[cache_user_specific(ttl = 1800, data_type = "reports")]
pub async fn report(user_id: u64, kind: u8) -> Option<String> {
    Some(format!("{user_id}:{kind}"))
}

/// A generic one.
#[cache_result]
pub async fn generic<T: Serialize + Send + Sync>(value: &T, n: u32) -> u32 {
    let _ = value;
    n
}

/// A type.
#[derive(Serialize)]
pub struct Svc;

impl Svc {
    /// A method.
    #[cache_result(include(self), companions = true)]
    pub async fn method(&self, id: u32) -> Vec<u32> {
        vec![id]
    }
}

async fn run() {
    assert_eq!(metrics("ab", "cd").await.map(|m| m.total).ok(), Some(1));
    assert_eq!(report(1, 2).await.as_deref(), Some("1:2"));
    assert_eq!(generic(&1u8, 2).await, 2);
    assert_eq!(Svc.method(1).await, [1]);
    assert!(metrics_cache_key("ab", "cd").is_some());
    assert_eq!(metrics_invalidate("ab", "cd").await.ok(), Some(true));
    assert!(report_cache_key(&1, &2).is_some_and(|k| k.contains(":{user:1}:")));
    assert_eq!(report_invalidate(&1, &2).await.ok(), Some(true));
    assert!(generic_cache_key(&1u8, &2).is_some());
    assert_eq!(generic_invalidate(&1u8, &2).await.ok(), Some(true));
    assert!(Svc.method_cache_key(&1).is_some());
    assert_eq!(Svc.method_invalidate(&1).await.ok(), Some(true));
}

fn main() {
    // The embedded store (the environment is not read: explicit configuration).
    let _ = cache_runtime::init(cache_runtime::CacheConfig::default());
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => panic!("no runtime: {e}"),
    }
}
