//! Rows on a Redis Cluster (3 primaries, 1 replica each), ours on the cluster against ours
//! on the standalone server in the same run: sequential hits (g), concurrent hits (h) and
//! `clear_namespace` (i).

use std::time::{Duration, Instant};

use cache_runtime::Cache;
use cache_tests::{ClusterOptions, RedisCluster};

use crate::harness::{
    sequential_pair, solo, throughput_pair, Call, Checked, Expect, Ledger, Load, Pattern, Side,
};
use crate::setup::{
    blocking, connected_cache, count, dbsize, ms, ratio, raw_connection, us, Bench, Goal, Row,
    ADMIN_TIMEOUT,
};
use crate::standalone::patterns;
use crate::workload::ours_hit;

/// The namespace row i fills and clears.
const BULK: &str = "bench_bulk";
/// Tasks writing the keys of row i.
const WRITERS: usize = 16;

/// The cluster, our cache on it, and a connection to each primary (to count keys).
struct Cluster {
    cache: Cache,
    primaries: Vec<redis::aio::MultiplexedConnection>,
    _cluster: RedisCluster,
}

async fn start() -> Result<Cluster, String> {
    let (cluster, ports) = blocking("starting the Redis Cluster", || {
        let cluster = RedisCluster::start(ClusterOptions::default());
        let ports = cluster.primaries();
        (cluster, ports)
    })
    .await?;
    if ports.len() != 3 {
        return Err(format!("the cluster has {} primaries, not 3", ports.len()));
    }
    // One node's URL: the cache finds the others (and cluster mode) by itself.
    let cache = connected_cache(&cluster.url(), false, "cluster").await?;
    let mut primaries = Vec::new();
    for port in ports {
        primaries.push(raw_connection(&format!("redis://127.0.0.1:{port}/"), ADMIN_TIMEOUT).await?);
    }
    Ok(Cluster {
        cache,
        primaries,
        _cluster: cluster,
    })
}

/// g, h and i.
pub async fn rows(b: &Bench) -> Result<Vec<Row>, String> {
    let cluster = start().await?;
    warm(&cluster.cache, b.sizes.hot_span()).await?;
    let mut rows = vec![sequential_hits(b, &cluster.cache).await?];
    rows.extend(concurrent_hits(b, &cluster.cache).await?);
    rows.push(clear_namespace(b, &cluster).await?);
    Ok(rows)
}

fn on_cluster(cache: &Cache) -> Side<impl Call> {
    Side::on("ours cluster", cache, ours_hit())
}

fn on_standalone(b: &Bench) -> Side<impl Call> {
    Side::on("ours standalone", &b.cache, ours_hit())
}

/// Stores ids `0..span` on the cluster (the standalone server has them already).
async fn warm(cache: &Cache, span: u32) -> Result<(), String> {
    let load = Load {
        tasks: 1,
        calls: span as usize,
        pattern: Pattern::Lockstep { keys: span },
    };
    let expect = Expect::misses(u64::from(span), 0);
    solo(
        &[("ours cluster", cache)],
        &on_cluster(cache),
        load,
        Some(expect),
    )
    .await?
    .setup("warming the cluster")?;
    Ok(())
}

/// g. Sequential hits on the cluster and on the standalone server, call by call.
async fn sequential_hits(b: &Bench, cache: &Cache) -> Result<Row, String> {
    let s = b.sizes;
    let caches = [("ours cluster", cache), ("ours standalone", &b.cache)];
    let ids = (0..s.seq_calls).map(|i| (i as u32) % s.seq_keys);
    let expect = Expect::hits(s.seq_calls as u64);
    let (cluster, standalone) = (on_cluster(cache), on_standalone(b));
    let Checked {
        value: (mut c, mut a),
        problems,
        ..
    } = sequential_pair(&caches, &cluster, &standalone, ids, expect).await;
    let (c, a) = (c.stats().p50, a.stats().p50);
    Ok(Row::new(
        format!(
            "g. cluster (3 primaries) sequential hits p50, {} calls; baseline: ours on the standalone server",
            count(s.seq_calls as u64)
        ),
        us(c),
        us(a),
        Some(ratio(c, a)),
        Goal::Reported,
        problems,
    ))
}

/// h. Concurrent hits on the cluster and on the standalone server (offset and disjoint).
async fn concurrent_hits(b: &Bench, cache: &Cache) -> Result<Vec<Row>, String> {
    let s = b.sizes;
    let caches = [("ours cluster", cache), ("ours standalone", &b.cache)];
    let mut rows = Vec::new();
    for (label, pattern) in patterns(s) {
        if matches!(pattern, Pattern::Lockstep { .. }) {
            continue;
        }
        let load = Load {
            tasks: s.tasks,
            calls: s.calls_per_task,
            pattern,
        };
        let (cluster, standalone) = (on_cluster(cache), on_standalone(b));
        let Checked {
            value: (c, a),
            problems,
            ..
        } = throughput_pair(&caches, &cluster, &standalone, load, s.rounds).await?;
        rows.push(Row::throughput(
            format!(
                "h. cluster concurrent hits, {} tasks x {} calls, {label}; baseline: standalone",
                s.tasks,
                count(s.calls_per_task as u64)
            ),
            c,
            a,
            Goal::Reported,
            problems,
        ));
    }
    Ok(rows)
}

/// Writes `n` keys into namespace [`BULK`] through `cache`.
async fn populate(cache: &Cache, n: usize) -> Result<(), String> {
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let ns = cache.namespace(BULK).map_err(|e| e.to_string())?;
                for i in (w..n).step_by(WRITERS) {
                    ns.set(&format!("k{i}"), &i, Some(Duration::from_secs(3600)))
                        .await
                        .map_err(|e| format!("writing {BULK}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for w in writers {
        w.await.map_err(|e| format!("a writer failed: {e}"))??;
    }
    Ok(())
}

/// Keys on these servers (the primaries of a cluster, or one standalone server).
async fn keys_on(servers: &[redis::aio::MultiplexedConnection]) -> Result<u64, String> {
    let mut total = 0;
    for conn in servers {
        total += dbsize(&mut conn.clone()).await?;
    }
    Ok(total)
}

/// Fills [`BULK`] through `cache`, clears it, and checks that exactly its keys went away
/// from `servers`.
async fn timed_clear(
    name: &str,
    cache: &Cache,
    servers: &[redis::aio::MultiplexedConnection],
    n: usize,
    problems: &mut Vec<String>,
) -> Result<Duration, String> {
    populate(cache, n).await?;
    let before = keys_on(servers).await?;
    let start = Instant::now();
    let cleared = cache.clear_namespace(BULK).await;
    let took = start.elapsed();
    let gone = before.saturating_sub(keys_on(servers).await?);
    match cleared {
        Ok(c) if c == n as u64 && gone == n as u64 => {}
        Ok(c) => problems.push(format!(
            "{name}: clear_namespace reported {c} keys and {gone} went away, not {n}"
        )),
        Err(e) => problems.push(format!("{name}: clear_namespace failed: {e}")),
    }
    Ok(took)
}

/// i. `clear_namespace` of many keys on the cluster and on the standalone server.
async fn clear_namespace(b: &Bench, cluster: &Cluster) -> Result<Row, String> {
    let n = b.sizes.bulk_keys;
    let mut problems = Vec::new();
    let caches = [
        ("ours cluster", &cluster.cache),
        ("ours standalone", &b.cache),
    ];
    let ledger = Ledger::open(&caches);
    let on_cluster = timed_clear(
        "cluster",
        &cluster.cache,
        &cluster.primaries,
        n,
        &mut problems,
    )
    .await?;
    let standalone = [b.admin.clone()];
    let on_standalone = timed_clear("standalone", &b.cache, &standalone, n, &mut problems).await?;
    ledger.close(Expect::healthy(), &mut problems).await;
    Ok(Row::new(
        format!(
            "i. cluster `clear_namespace`, {} keys; baseline: standalone",
            count(n as u64)
        ),
        ms(on_cluster),
        ms(on_standalone),
        Some(ratio(on_cluster, on_standalone)),
        Goal::Reported,
        problems,
    ))
}
