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
    cache_tests::command_calls(server, "mget")
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

/// A read future that is kept but no longer polled (parked in a `select!` loop, a slow
/// `buffer_unordered` consumer) while it waits to collect a batch holds nobody else's
/// read: the others go alone once it is past the stall bound, and every one succeeds
/// within a socket timeout short enough to fail them if they waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_reader_holds_no_other_read() {
    let server = RedisServer::plain();
    let config = CacheConfig::builder()
        .url(server.url())
        .socket_timeout(std::time::Duration::from_millis(500))
        .build()
        .expect("config");
    let cache = Arc::new(Cache::new(config).expect("cache"));
    cache.connect().await.expect("connect");
    let ns = cache.namespace("batch").expect("namespace");
    for i in 0..64u64 {
        ns.set(&format!("k{i}"), &i, None).await.expect("set");
    }
    // Reads in flight (as many as go alone, 4) and one waiting to collect the next batch,
    // each polled once and then parked for the rest of the test.
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    let mut parked: Vec<_> = keys.iter().map(|k| Box::pin(ns.get::<u64>(k))).collect();
    for (i, read) in parked.iter_mut().enumerate() {
        // On a loaded machine the reply may arrive within the one poll (the connection's
        // driver runs on another worker): that read is not parked, so park a new one.
        let mut tries = 0;
        while !poll_once(read.as_mut()) {
            tries += 1;
            assert!(tries < 100, "k{i} never waits for its reply or its turn");
            *read = Box::pin(ns.get::<u64>(&keys[i]));
        }
    }
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 5..64u64 {
            let cache = Arc::clone(&cache);
            tasks.push(tokio::spawn(async move {
                let ns = cache.namespace("batch").expect("namespace");
                (i, ns.get::<u64>(&format!("k{i}")).await)
            }));
        }
        for task in tasks {
            let (i, got) = task.await.expect("reader task");
            assert_eq!(
                got.expect("read beside a parked reader"),
                Some(i),
                "round {round}"
            );
        }
    }
    // The parked reads still finish when polled again.
    for (i, read) in parked.into_iter().enumerate() {
        assert_eq!(read.await.expect("parked read"), Some(i as u64));
    }
}

/// Polls `f` once, here; whether it is still pending (it is woken by nobody: the test
/// awaits it later, which registers a real waker).
fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.poll(&mut cx).is_pending()
}

/// A NOPERM for one key (an ACL by key pattern) fails that read only: the batch's other
/// reads are answered, and batching stays on for later reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_acl_denies_fails_alone_and_batching_stays_on() {
    let server = RedisServer::with_acl_user("reader", "reader-pw", "~tradistry:batch:k* &* +@all");
    let mut admin = server.admin_client().get_connection().expect("admin");
    let _: () = redis::cmd("SET")
        .arg("tradistry:batch:secret")
        .arg("x")
        .query(&mut admin)
        .expect("SET secret");
    let cache = cache_on(&server, true);
    cache.connect().await.expect("connect");
    let ns = cache.namespace("batch").expect("namespace");
    for i in 0..64u64 {
        ns.set(&format!("k{i}"), &i, None).await.expect("set");
    }
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let cache = Arc::clone(&cache);
        tasks.push(tokio::spawn(async move {
            let ns = cache.namespace("batch").expect("namespace");
            for round in 0..20u64 {
                if (t + round) % 8 == 0 {
                    let denied = ns.get::<String>("secret").await;
                    assert!(denied.is_err(), "task {t}: the denied key is refused");
                } else {
                    let got = ns.get::<u64>(&format!("k{t}")).await.expect("allowed read");
                    assert_eq!(got, Some(t), "task {t}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
    let (before, refused) = mget_stats(&server);
    assert!(refused > 0, "some batches held the denied key");
    concurrent_reads_of(&cache, 0..64).await;
    let (after, _) = mget_stats(&server);
    assert!(
        after > before,
        "reads are still batched ({before} -> {after} MGETs)"
    );
}

/// 64 tasks reading `ids` at once, each its own key, checked.
async fn concurrent_reads_of(cache: &Arc<Cache>, ids: std::ops::Range<u64>) {
    let mut tasks = Vec::new();
    for i in ids {
        let cache = Arc::clone(cache);
        tasks.push(tokio::spawn(async move {
            let ns = cache.namespace("batch").expect("namespace");
            for _ in 0..20 {
                assert_eq!(
                    ns.get::<u64>(&format!("k{i}")).await.expect("read"),
                    Some(i)
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
}
