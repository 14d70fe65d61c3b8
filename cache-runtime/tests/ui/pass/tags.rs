//! Tags built from parameters (skipped ones too), with literal braces.

use std::sync::Arc;

use cache_runtime::{cache_result, cache_user_specific, Cache};

#[cache_result(ttl = 60, namespace = "trading", tags = ["trades:{user_id}", "market", "{{literal}} {venue}"], skip(venue))]
async fn trades(user_id: String, venue: Arc<str>) -> Vec<u32> {
    vec![user_id.len() as u32, venue.len() as u32]
}

#[cache_user_specific(ttl = 60, data_type = "fills", tags = ["fills:{user_id}:{day}"])]
async fn fills(user_id: &str, day: u32) -> Result<u32, String> {
    Ok(user_id.len() as u32 + day)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cache_runtime::with_cache(Cache::in_memory(), async {
        assert_eq!(trades("u1".into(), Arc::from("xnas")).await, vec![2, 4]);
        assert_eq!(fills("u1", 3).await, Ok(5));
    }));
}
