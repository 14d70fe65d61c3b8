//! Native `async fn` in a trait implementation (no companions there: a trait impl only
//! holds the trait's items, and methods get none by default).
#![allow(dead_code)]

use cache_runtime::cache_result;

trait Quotes {
    async fn quote(&self, symbol: &str) -> Option<f64>;
    async fn list(market: u32) -> Vec<String>;
}

struct Feed;

impl Quotes for Feed {
    #[cache_result(skip(self), namespace = "trading", ttl = "15m")]
    async fn quote(&self, symbol: &str) -> Option<f64> {
        Some(symbol.len() as f64)
    }

    // An associated function in a trait impl needs `companions = false`.
    #[cache_result(companions = false)]
    async fn list(market: u32) -> Vec<String> {
        vec![market.to_string()]
    }
}

struct Generic<T>(T);

impl<T: Send + Sync> Quotes for Generic<T> {
    #[cache_result(skip(self))]
    async fn quote(&self, symbol: &str) -> Option<f64> {
        Some(symbol.len() as f64)
    }

    #[cache_result(companions = false)]
    async fn list(market: u32) -> Vec<String> {
        vec![market.to_string()]
    }
}

fn main() {}
