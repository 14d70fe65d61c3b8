//! `cache = path` names the cache a function uses instead of the global one.
use std::sync::LazyLock;

use cache_runtime::{cache_result, cache_user_specific, Cache};

static ANALYTICS: LazyLock<Cache> = LazyLock::new(Cache::in_memory);

fn analytics() -> &'static Cache {
    &ANALYTICS
}

mod caches {
    pub fn reports() -> &'static cache_runtime::Cache {
        super::analytics()
    }
}

#[cache_result(namespace = "analytics", cache = analytics)]
async fn metrics(x: u32) -> u32 {
    x * 2
}

#[cache_user_specific(data_type = "reports", cache = caches::reports)]
async fn report(user_id: &str) -> String {
    format!("report of {user_id}")
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(metrics(2).await, 4);
        assert_eq!(metrics(2).await, 4);
        assert_eq!(report("u1").await, "report of u1");
        let counters = analytics().counters();
        assert_eq!(counters["analytics"].hits, 1, "the hit went to ANALYTICS");
        assert_eq!(counters["users"].misses, 1);
        assert!(metrics_cache_key(&2).is_some());
        assert_eq!(metrics_invalidate(&2).await.ok(), Some(true));
    });
}
