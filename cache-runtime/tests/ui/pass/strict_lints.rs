//! The expansion is clean under strict lints (clippy's run over this file when clippy
//! checks the tests; rustc's lints are checked by trybuild).
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
    Ok(Metrics { total: u64::from(user_id.len() == timeframe.len()) })
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
    let _ = metrics("a", "b").await;
    let _ = report(1, 2).await;
    let _ = generic(&1u8, 2).await;
    let _ = Svc.method(1).await;
    let _ = metrics_cache_key("a", "b");
    let _ = metrics_invalidate("a", "b").await;
    let _ = report_cache_key(&1, &2);
    let _ = report_invalidate(&1, &2).await;
    let _ = generic_cache_key(&1u8, &2);
    let _ = generic_invalidate(&1u8, &2).await;
    let _ = Svc.method_cache_key(&1);
    let _ = Svc.method_invalidate(&1).await;
}

fn main() {
    drop(run());
}
