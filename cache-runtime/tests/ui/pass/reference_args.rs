//! Arguments by reference: `&str`, `&[T]`, `&Struct`, explicit lifetimes, `mut` bindings.
#![allow(dead_code)]

use cache_runtime::cache_result;
use serde::Serialize;

#[derive(Serialize)]
struct Query {
    symbol: String,
    limit: u32,
}

#[cache_result(namespace = "trading")]
async fn search(query: &Query, tags: &[String], raw: &str) -> Vec<String> {
    tags.iter().map(|t| format!("{}:{t}:{raw}:{}", query.symbol, query.limit)).collect()
}

#[cache_result]
async fn borrowed<'a>(name: &'a str, pairs: &'a [(u32, u32)]) -> usize {
    name.len() + pairs.len()
}

#[cache_result]
async fn mutable(mut count: u32, nested: Vec<Option<&str>>) -> u32 {
    count += nested.len() as u32;
    count
}

fn main() {
    let q = Query { symbol: "AAPL".into(), limit: 3 };
    let _ = search_cache_key(&q, &["a".to_owned()], "x");
    let _ = borrowed_cache_key("n", &[(1, 2)]);
    let _ = mutable_cache_key(&1, &vec![Some("a")]);
}
