//! Stacks with `#[tracing::instrument]` in both orders.
#![allow(dead_code)]

use cache_runtime::cache_result;

#[tracing::instrument]
#[cache_result(namespace = "analytics")]
async fn instrumented_outside(user_id: &str, days: u32) -> Result<u64, String> {
    tracing::info!("computing");
    Ok(u64::from(days) + user_id.len() as u64)
}

#[cache_result(namespace = "analytics")]
#[tracing::instrument(skip(secret))]
async fn instrumented_inside(user_id: &str, secret: &str) -> Option<u64> {
    let _ = secret;
    Some(user_id.len() as u64)
}

fn main() {
    let _ = instrumented_inside_cache_key("u", "s");
}
