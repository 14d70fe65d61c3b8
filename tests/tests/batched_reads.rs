//! Concurrent reads on a standalone server go out as MGETs (`REDIS_BATCH_READS`, on by
//! default): every reader still gets its own key's value, a server that refuses MGET (an
//! ACL user allowed GET only) is read one key at a time without an error, large values
//! come back whole, and the setting turns batching off.

use std::sync::Arc;

use cache_runtime::{Cache, CacheConfig};
use cache_tests::RedisServer;

const TASKS: usize = 64;
const KEYS_PER_TASK: usize = 8;
const ROUNDS: usize = 25;

/// How many MGETs the server ran and refused (`INFO commandstats`).
fn mget_stats(server: &RedisServer) -> (u64, u64) {
    let mut conn = server
        .admin_client()
        .get_connection()
        .expect("admin connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_mget:")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("rejected_calls="))
}

fn cache_on(server: &RedisServer, batch: bool) -> Arc<Cache> {
    let config = CacheConfig::builder()
        .url(server.url())
        .batch_reads(batch)
        .build()
        .expect("config");
    Arc::new(Cache::new(config).expect("cache"))
}

/// Stores `TASKS * KEYS_PER_TASK` values (one key in eight left absent), then reads them
/// from `TASKS` tasks at once, each its own keys, `ROUNDS` times; every answer is checked.
async fn concurrent_reads_are_each_their_own(cache: &Arc<Cache>, large: Option<usize>) {
    cache.connect().await.expect("connect");
    let ns = cache.namespace("batch").expect("namespace");
    for i in 0..TASKS * KEYS_PER_TASK {
        if i % 8 != 7 {
            ns.set(&format!("k{i}"), &(i as u64 * 7), None)
                .await
                .expect("set");
        }
    }
    if let Some(len) = large {
        ns.set("large", &vec![7u8; len], None)
            .await
            .expect("set large");
    }
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let cache = Arc::clone(cache);
        tasks.push(tokio::spawn(async move {
            let ns = cache.namespace("batch").expect("namespace");
            for round in 0..ROUNDS {
                for k in 0..KEYS_PER_TASK {
                    let i = t * KEYS_PER_TASK + (k + round) % KEYS_PER_TASK;
                    let got = ns.get::<u64>(&format!("k{i}")).await.expect("get");
                    let want = (i % 8 != 7).then_some(i as u64 * 7);
                    assert_eq!(got, want, "task {t} read k{i}");
                }
                if large.is_some() && t % 16 == 0 {
                    let got = ns.get::<Vec<u8>>("large").await.expect("get large");
                    assert_eq!(got.map(|v| v.len()), large, "task {t} read the large value");
                }
            }
        }));
    }
    // A failed read panics its task (`expect`): joining proves every read succeeded.
    for task in tasks {
        task.await.expect("reader task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_mgets() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, true);
    concurrent_reads_are_each_their_own(&cache, None).await;
    let (calls, rejected) = mget_stats(&server);
    assert!(calls > 0, "64 concurrent readers were batched into MGETs");
    assert_eq!(rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_come_back_whole_beside_batches() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, true);
    concurrent_reads_are_each_their_own(&cache, Some(2 * 1024 * 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_mget_is_read_key_by_key() {
    let server = RedisServer::with_acl_user("reader", "reader-pw", "~* &* +@all -mget");
    let cache = cache_on(&server, true);
    concurrent_reads_are_each_their_own(&cache, None).await;
    let (calls, rejected) = mget_stats(&server);
    assert_eq!(calls, 0, "no MGET ran");
    // One refusal stops batching; a few more may have been sent meanwhile by collectors
    // that stopped waiting for their turn (a loaded machine).
    assert!(
        (1..10).contains(&rejected),
        "batching stopped after the first refusals ({rejected} refused)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_false_sends_every_get_alone() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, false);
    concurrent_reads_are_each_their_own(&cache, None).await;
    assert_eq!(
        mget_stats(&server),
        (0, 0),
        "REDIS_BATCH_READS=false: no MGET"
    );
}
