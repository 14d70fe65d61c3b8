//! The per-user index (a sorted set scored by expiry) does not grow with a user's history:
//! members whose keys expired long ago are pruned by the next write, members of live keys
//! never are, and clearing uses the index.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache_runtime::service::CacheService;
use cache_runtime::{Cache, CacheConfig};
use cache_tests::{raw_client, RedisServer};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn members(server: &RedisServer, index: &str) -> Vec<String> {
    let mut m: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(0)
        .arg(-1)
        .query(&mut raw_client(server))
        .expect("ZRANGE");
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_members_are_pruned_and_live_ones_kept() {
    let server = RedisServer::plain();
    let cache = Cache::new(CacheConfig::builder().url(server.url()).build().unwrap()).unwrap();
    let service = CacheService::new(cache.clone());
    let index = "tradistry:__index:{user:u1}";

    // History: prompts answered long ago (their keys expired two and ten minutes ago).
    for (member, age_ms) in [
        ("tradistry:ai:{user:u1}:prompt:old1", 120_000u64),
        ("tradistry:ai:{user:u1}:prompt:old2", 600_000),
    ] {
        redis::cmd("ZADD")
            .arg(index)
            .arg(now_ms() - age_ms)
            .arg(member)
            .exec(&mut raw_client(&server))
            .unwrap();
    }
    // A key that expired a moment ago stays listed (clock-skew grace), as do live keys.
    redis::cmd("ZADD")
        .arg(index)
        .arg(now_ms() - 1_000)
        .arg("tradistry:ai:{user:u1}:prompt:recent")
        .exec(&mut raw_client(&server))
        .unwrap();
    service
        .cache_ai_response("u1", "live", "answer", Some(Duration::from_secs(60)))
        .await
        .unwrap();

    assert_eq!(
        members(&server, index),
        [
            "tradistry:ai:{user:u1}:prompt:live",
            "tradistry:ai:{user:u1}:prompt:recent"
        ]
    );
    // The index expires with its longest-lived member.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(index)
        .query(&mut raw_client(&server))
        .unwrap();
    assert!((50_000..=60_000).contains(&pttl), "PTTL {pttl}");

    // Clearing goes through the index: the live key goes, the stale member is harmless.
    assert_eq!(service.clear_all_user_cache("u1").await.unwrap(), 1);
    assert!(members(&server, index).is_empty());
}
