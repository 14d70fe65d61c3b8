//! Large values are read in ranges once seen (`REDIS_READ_RANGE`, standalone servers): the
//! value comes back whole and right, on a plain and a TLS server, with batching on and off;
//! a write, a delete or an expiry during a ranged read never yields a torn value; a server
//! refusing WATCH is read whole; a parked ranged read holds nobody; `0` reads whole.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::{Cache, CacheConfig};
use cache_tests::{command_calls as calls, RedisServer, TlsOptions};

/// Small ranges, so a value of a few hundred KiB takes dozens of round trips.
const RANGE: usize = 4096;
/// Above the size from which keys are remembered as large (256 KiB).
const LEN: usize = 300 * 1024;

fn cache_on(server: &RedisServer, range: usize, batch: bool) -> Arc<Cache> {
    let b = CacheConfig::builder()
        .url(server.url())
        .read_range(range)
        .batch_reads(batch)
        // Uncompressed: the point is hundreds of KiB on the wire.
        .compress_above(0);
    let b = if server.config().tls {
        b.ca_certs(server.ca_cert_path())
    } else {
        b
    };
    Arc::new(Cache::new(b.build().expect("config")).expect("cache"))
}

/// A value of one repeated character, so a torn read (two values mixed) shows.
fn value(c: char) -> String {
    c.to_string().repeat(LEN)
}

/// The first read is whole and marks the key; the next ones go in ranges.
async fn large_values_read_in_ranges_are_whole(server: &RedisServer, batch: bool) {
    let cache = cache_on(server, RANGE, batch);
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('a'), None).await.expect("set");
    ns.set("small", "tiny", None).await.expect("set small");
    for round in 0..5 {
        let got = ns.get::<String>("big").await.expect("get");
        assert_eq!(got.as_deref(), Some(value('a').as_str()), "round {round}");
        assert_eq!(
            ns.get::<String>("small")
                .await
                .expect("get small")
                .as_deref(),
            Some("tiny")
        );
    }
    let (ranges, _) = calls(server, "getrange");
    // Four ranged reads of LEN / RANGE ranges each (plus the envelope's few bytes).
    assert!(
        ranges >= 4 * (LEN / RANGE) as u64,
        "the reads after the first went in ranges ({ranges} GETRANGEs)"
    );
    let (ranged_reads, _) = calls(server, "strlen");
    assert_eq!(ranged_reads, 4, "only the large key is read in ranges");
    // A key that disappears is a miss, read in ranges as well.
    ns.delete("big").await.expect("delete");
    assert_eq!(ns.get::<String>("big").await.expect("get gone"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_in_ranges_on_a_plain_server() {
    large_values_read_in_ranges_are_whole(&RedisServer::plain(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_in_ranges_without_batching() {
    large_values_read_in_ranges_are_whole(&RedisServer::plain(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_in_ranges_over_tls() {
    cache_tests::install_crypto_provider();
    let server = RedisServer::tls(TlsOptions::default());
    large_values_read_in_ranges_are_whole(&server, true).await;
}

/// With an L1, reads of Redis carry the key's TTL (GET + PTTL): large values are read in
/// ranges there too, with their TTL. (The L1 here is too small to keep them, so every
/// read reaches Redis.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_read_in_ranges_with_an_l1() {
    let server = RedisServer::plain();
    let config = CacheConfig::builder()
        .url(server.url())
        .read_range(RANGE)
        .compress_above(0)
        .l1(true)
        .l1_max_bytes(64 * 1024)
        .build()
        .expect("config");
    let cache = Cache::new(config).expect("cache");
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('l'), Some(Duration::from_secs(600)))
        .await
        .expect("set");
    for round in 0..3 {
        let got = ns.get::<String>("big").await.expect("get");
        assert_eq!(got.as_deref(), Some(value('l').as_str()), "round {round}");
    }
    let (ranges, _) = calls(&server, "getrange");
    assert!(
        ranges >= 2 * (LEN / RANGE) as u64,
        "the L1's reads went in ranges ({ranges} GETRANGEs)"
    );
    assert!(calls(&server, "pttl").0 >= 3, "each read asked the TTL");
}

/// The ranged reads' kept connection dies with a server restart: the next large read
/// still answers (read whole through the pool, which reconnects), then reads in ranges on
/// a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_ranged_reads_costs_no_error() {
    let mut server = RedisServer::plain();
    let cache = cache_on(&server, RANGE, true);
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('r'), None).await.expect("set");
    for _ in 0..2 {
        // The first marks the key, the second reads in ranges and keeps its connection.
        ns.get::<String>("big").await.expect("read");
    }
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    // Until the pool has reconnected (its first requests may fail).
    let mut stored = false;
    for _ in 0..50 {
        if ns.set("big", &value('s'), None).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the pool reconnected after the restart");
    for round in 0..3 {
        let got = ns
            .get::<String>("big")
            .await
            .expect("no error after the restart");
        assert_eq!(got.as_deref(), Some(value('s').as_str()), "round {round}");
    }
    assert!(
        calls(&server, "getrange").0 > 0,
        "reads went in ranges again"
    );
}

/// Another process keeps replacing the value (and deleting it) while readers read it in
/// ranges: every read is one whole value or a miss, never two mixed. (The writer is a raw
/// connection: this process's own writes would fence its reads, which then miss.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_ranged_reads_never_tear_a_value() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, RANGE, true);
    let ns = cache.namespace("ranged").expect("namespace");
    let key = ns.key("big");
    let mut raw = cache_tests::raw_async_client(&server).await;
    // The stored bytes of three values, as this cache writes them.
    let mut stored = Vec::new();
    for c in ['a', 'b', 'c'] {
        ns.set("big", &value(c), None).await.expect("set");
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("GET");
        stored.push(bytes);
    }
    // Marks the key as large.
    ns.get::<String>("big").await.expect("first read");
    // WRITES writes, then the readers stop (a fixed number of reads could all fall in one
    // window where the key is deleted, on a loaded machine).
    const WRITES: u64 = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            for writes in 0..WRITES {
                let mut cmd = if writes % 7 == 6 {
                    redis::cmd("DEL")
                } else {
                    redis::cmd("SET")
                };
                cmd.arg(&key);
                if writes % 7 != 6 {
                    cmd.arg(&stored[(writes % 3) as usize]);
                }
                let () = cmd.query_async(&mut raw).await.expect("write");
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (cache, stop) = (Arc::clone(&cache), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let ns = cache.namespace("ranged").expect("namespace");
            let mut whole = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = ns.get::<String>("big").await.expect("read") {
                    let first = v.chars().next().expect("a non-empty value");
                    assert_eq!(v.len(), LEN, "a value of the right length");
                    assert!(v.chars().all(|c| c == first), "a torn value: {first}...");
                    whole += 1;
                }
            }
            whole
        }));
    }
    let mut whole = 0;
    for r in readers {
        whole += r.await.expect("reader");
    }
    writer.await.expect("writer");
    assert!(whole > 0, "some reads found a value");
    let (execs, _) = calls(&server, "exec");
    assert!(execs > 0, "reads went in ranges and checked their WATCH");
}

/// A key that expires during a ranged read is a miss or a whole value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_during_a_ranged_read_is_never_a_torn_value() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, RANGE, true);
    let ns = cache.namespace("ranged").expect("namespace");
    for i in 0..20 {
        ns.set("big", &value('e'), Some(Duration::from_millis(30)))
            .await
            .expect("set");
        for _ in 0..4 {
            if let Some(v) = ns.get::<String>("big").await.expect("read") {
                assert_eq!(v, value('e'), "round {i}");
            }
        }
    }
}

/// A ranged read kept but no longer polled (parked in a `select!` loop) holds the stream,
/// and never moves: the other reads of large values go whole after a few stall bounds,
/// not after the socket timeout (5 s here; each read below must end within 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_ranged_read_holds_no_other_read() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, RANGE, true);
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('p'), None).await.expect("set");
    ns.set("other", &value('q'), None).await.expect("set");
    // Whole reads mark both keys as large.
    ns.get::<String>("big").await.expect("first read");
    ns.get::<String>("other").await.expect("first read");
    let mut parked = Box::pin(ns.get::<String>("big"));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Pending: it holds the stream (on a loaded machine a poll could get its reply within
    // it, the driver running on another worker: then park a new one).
    let mut tries = 0;
    while parked.as_mut().poll(&mut cx).is_ready() {
        tries += 1;
        assert!(tries < 100, "the read never waits: it cannot be parked");
        parked = Box::pin(ns.get::<String>("big"));
    }
    for round in 0..5 {
        let read = tokio::time::timeout(Duration::from_secs(1), ns.get::<String>("other"));
        let got = read
            .await
            .expect("read within 1 s beside a parked one")
            .expect("read");
        assert_eq!(got.as_deref(), Some(value('q').as_str()), "round {round}");
    }
    assert_eq!(
        parked.await.expect("parked read").as_deref(),
        Some(value('p').as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_watch_reads_large_values_whole() {
    let server = RedisServer::with_acl_user("reader", "reader-pw", "~* &* +@all -watch");
    let cache = cache_on(&server, RANGE, true);
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('w'), None).await.expect("set");
    for _ in 0..4 {
        let got = ns.get::<String>("big").await.expect("get");
        assert_eq!(got.as_deref(), Some(value('w').as_str()));
    }
    // The first refusal turns ranges off: the ranged reader never gets past WATCH again.
    let (_, refused) = calls(&server, "watch");
    assert_eq!(
        refused, 1,
        "WATCH was tried once, then large values were read whole"
    );
    // (The refused pipeline's GETRANGE ran once.)
    assert!(
        calls(&server, "getrange").0 <= 1,
        "no ranged read went on without a WATCH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_range_zero_reads_large_values_whole() {
    let server = RedisServer::plain();
    let cache = cache_on(&server, 0, true);
    let ns = cache.namespace("ranged").expect("namespace");
    ns.set("big", &value('z'), None).await.expect("set");
    for _ in 0..3 {
        let got = ns.get::<String>("big").await.expect("get");
        assert_eq!(got.as_deref(), Some(value('z').as_str()));
    }
    assert_eq!(calls(&server, "getrange").0, 0);
}

#[test]
fn read_range_below_the_minimum_is_refused_with_the_fix() {
    let err = CacheConfig::builder()
        .url("redis://127.0.0.1:6390")
        .read_range(100)
        .build()
        .expect_err("100 bytes is too small a range");
    let msg = err.to_string();
    assert!(msg.contains("REDIS_READ_RANGE"), "{msg}");
    assert!(msg.contains("at least 4096"), "{msg}");
}
