//! Cache operations that complete without waiting (a fail-fast while the breaker is open, an
//! embedded-store hit) still give the scheduler its turn: a task looping over them must not
//! starve the other tasks of its worker (their timers, their I/O). Found when 64 tasks of
//! load, all failing fast during a cluster failover, kept the breaker's probes from running.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::{Cache, CacheConfig};

/// Runs a task looping over reads of `cache` on a single-threaded runtime, and a 20 ms
/// timer next to it: the timer must fire within `bound` (it cannot while the loop hogs the
/// only thread; with the breaker open, only its next probe, every 500 ms, would let it).
fn assert_not_starved(cache: Cache, bound: Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_loop = Arc::clone(&stop);
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let looping = tokio::spawn(async move {
                let ns = cache.namespace("coop").unwrap();
                let mut n = 0u64;
                while !stop_loop.load(SeqCst) {
                    let _ = ns.get::<u64>(&format!("k{}", n % 10)).await;
                    n += 1;
                }
                n
            });
            // Let the loop get going, then ask for the timer.
            tokio::task::yield_now().await;
            let asked = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = done_tx.send(asked.elapsed());
            stop.store(true, SeqCst);
            looping.await.unwrap()
        })
    });
    let fired = done_rx.recv_timeout(Duration::from_secs(10)).expect(
        "a task looping over cache calls starved its worker: a 20 ms timer did not fire in 10 s",
    );
    println!("a 20 ms timer next to the loop fired after {fired:?}");
    assert!(
        fired < bound,
        "the timer fired after {fired:?}, beyond {bound:?}"
    );
    let iterations = runner.join().unwrap();
    assert!(iterations > 0);
}

#[test]
fn a_loop_of_fail_fast_calls_yields_while_the_breaker_is_open() {
    // Nothing listens on this port: the breaker opens after a few refused connects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = Cache::new(
        CacheConfig::builder()
            .url(format!("redis://127.0.0.1:{port}"))
            .socket_timeout(Duration::from_millis(200))
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .unwrap();
    // Open the breaker first.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ns = cache.namespace("coop").unwrap();
        while !cache.health().await.circuit_open {
            let _ = ns.get::<u64>("k").await;
        }
    });
    drop(rt);
    // Well below the 500 ms between probes, well above a loaded machine's scheduling.
    assert_not_starved(cache, Duration::from_millis(300));
}

#[test]
fn a_loop_of_embedded_store_hits_yields() {
    let cache = Cache::in_memory();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ns = cache.namespace("coop").unwrap();
        for k in 0..10 {
            ns.set(&format!("k{k}"), &k, None).await.unwrap();
        }
    });
    assert_not_starved(cache, Duration::from_secs(2));
}
