//! Every resilience option, with the shapes they accept.

use std::sync::Arc;

use cache_runtime::{cache_result, cache_user_specific, Cache};

#[cache_result(ttl = 60, namespace = "trading", fail_safe = "2h", soft_timeout = "300ms", refresh_ahead = 0.8, distributed_lock = true, skip(db))]
async fn quote(symbol: String, db: Arc<String>) -> Result<f64, String> {
    let _ = (&symbol, &db);
    Ok(1.5)
}

#[cache_result(ttl = "1h", fail_safe = false, distributed_lock = "30s")]
async fn borrowed_is_fine_without_background(symbol: &str) -> Option<u32> {
    Some(symbol.len() as u32)
}

#[cache_user_specific(ttl = 60, fail_safe = "1d", distributed_lock = false)]
async fn report(user_id: &str, kind: &str) -> Result<String, std::io::Error> {
    Ok(format!("{user_id}/{kind}"))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cache_runtime::with_cache(Cache::in_memory(), async {
        assert_eq!(quote("AAPL".into(), Arc::new("db".into())).await, Ok(1.5));
        assert_eq!(borrowed_is_fine_without_background("ab").await, Some(2));
        assert_eq!(report("u1", "monthly").await.unwrap(), "u1/monthly");
    }));
}
