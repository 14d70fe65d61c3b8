//! Free functions with every return shape.
#![allow(dead_code)]

use cache_runtime::cache_result;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Metrics {
    total: u64,
}

#[derive(Debug)]
struct DbError;

#[cache_result(ttl = 3600, namespace = "analytics")]
async fn calculate_portfolio_metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
    if user_id.is_empty() {
        return Err(DbError);
    }
    Ok(Metrics { total: timeframe.len() as u64 })
}

#[cache_result(ttl = "30m")]
async fn plain(x: u32) -> Vec<u32> {
    vec![x; 3]
}

#[cache_result(ttl = "1h30m", namespace = "trading")]
async fn maybe(symbol: String) -> Option<f64> {
    symbol.parse().ok()
}

#[cache_result(cache_none = true, version = 3)]
async fn maybe_cached(symbol: String) -> Option<f64> {
    symbol.parse().ok()
}

// `Result<T>` aliases: the error type is inferred.
#[cache_result(ttl = "1d")]
async fn io_alias(path: &str) -> std::io::Result<usize> {
    let len = path.len();
    if len == 0 {
        return Err(std::io::Error::other("empty"));
    }
    Ok(len)
}

mod app {
    #[derive(Debug)]
    pub struct AppError;
    impl From<std::num::ParseIntError> for AppError {
        fn from(_: std::num::ParseIntError) -> Self {
            AppError
        }
    }
    pub type Result<T, E = AppError> = std::result::Result<T, E>;
}

#[cache_result(ttl = "90s")]
async fn with_question_mark(raw: &str) -> app::Result<u32> {
    let n: u32 = raw.parse()?;
    Ok(n * 2)
}

#[cache_result]
async fn no_arguments() -> String {
    "constant".to_owned()
}

#[cache_result]
async fn ignored(_: u32, used: u32) -> u32 {
    used
}

#[cache_result]
async fn r#type(r#in: u32) -> u32 {
    r#in
}

fn main() {
    // Companions of free functions.
    let _: Option<String> = calculate_portfolio_metrics_cache_key("u", "30d");
    drop(plain_invalidate(&1));
    let _: Option<String> = maybe_cache_key(&"AAPL".to_owned());
    let _: Option<String> = type_cache_key(&1);
    let _: Option<String> = no_arguments_cache_key();
}
