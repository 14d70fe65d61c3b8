//! Generic functions: each type parameter is mixed into the key.
#![allow(dead_code)]

use std::fmt::Debug;

use cache_runtime::cache_result;
use serde::Serialize;

#[cache_result(namespace = "general")]
async fn describe<T>(value: T) -> String
where
    T: Serialize + Debug + Send,
{
    format!("{value:?}")
}

#[cache_result]
async fn first_n<T: Serialize + Clone + Send + Sync, const N: usize>(items: &[T]) -> usize {
    items.iter().take(N).count()
}

#[cache_result]
async fn decode<'a, T: serde::de::DeserializeOwned + Serialize>(raw: &'a str) -> Option<T> {
    serde_json::from_str(raw).ok()
}

fn main() {
    let _ = describe_cache_key(&1u8);
    let _ = first_n_cache_key::<u8, 2>(&[1u8, 2, 3]);
    let _ = decode_cache_key::<u32>("1");
}
