//! Compiles with a lowered `recursion_limit`: the runtime's futures must leave user code
//! room under rustc's default of 128, or ordinary code fails with "queries overflow the
//! depth limit!" (it did: a decorated call inside `with_cache` needed more than 128 while
//! Redis' future types were nested in every caller's; they are boxed at the backend seam
//! since). If this file stops compiling, a change made the runtime's futures deeper: box
//! the new layer (see `dispatch_async!` in `backend/mod.rs`), do not raise the limit.
#![recursion_limit = "100"]

use cache_runtime::{cache_result, service::CacheService, with_cache, Cache};

#[cache_result(namespace = "analytics", ttl = 60)]
async fn answer(x: u32) -> u32 {
    // A body with a network client of its own (its depth is not added to ours).
    if let Ok(client) = redis::Client::open("redis://127.0.0.1:1") {
        if let Ok(mut con) = client.get_multiplexed_async_connection().await {
            let _: Result<Option<String>, _> = redis::AsyncCommands::get(&mut con, "k").await;
        }
    }
    x + 1
}

async fn handler(x: u32) -> u32 {
    answer(x).await
}

#[tokio::test]
async fn deep_user_code_compiles_and_runs() {
    let cache = Cache::in_memory();
    assert_eq!(with_cache(cache.clone(), handler(41)).await, 42);
    assert_eq!(cache.counters()["analytics"].misses, 1);

    let ns = cache.namespace("general").unwrap();
    ns.set("k", &5u32, None).await.unwrap();
    assert_eq!(ns.get::<u32>("k").await.unwrap(), Some(5));
    assert_eq!(ns.increment("k", 1, None).await.unwrap(), 6);
    cache.ping().await.unwrap();

    let service = CacheService::new(cache.clone());
    service
        .cache_user_data("u1", "profile", "ada", None)
        .await
        .unwrap();
    assert_eq!(service.clear_all_user_cache("u1").await.unwrap(), 1);
}
