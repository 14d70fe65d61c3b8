//! `cachectl top`, `inspect` and `keys` on a Redis Cluster (3 primaries, 1 replica each):
//! a namespace listing covers every primary, a user listing reads the index (one slot), and
//! `top` reads the processes' stats hash and the cluster's facts.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::cli::{self, Io, EXIT_OK};
use cache_runtime::{cache_result, cache_user_specific, with_cache, Cache, CacheConfig};
use cache_tests::{ClusterOptions, RedisCluster};
use serde_json::Value;

const PREFIX: &str = "clctl";

#[cache_result(namespace = "users", ttl = 600)]
async fn profile(id: u32) -> String {
    format!("user-{id}")
}

#[cache_user_specific(data_type = "reports", ttl = 600)]
async fn report(user_id: &str, kind: &str) -> String {
    format!("{kind} report of {user_id}")
}

fn config(cluster: &RedisCluster) -> CacheConfig {
    CacheConfig::builder()
        .url(cluster.url())
        .key_prefix(PREFIX)
        .socket_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .expect("valid configuration")
}

async fn run(cluster: &RedisCluster, args: &[&str]) -> (u8, Value) {
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| None;
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        let run = cli::run(
            args.iter().map(|s| (*s).to_owned()),
            Ok(config(cluster)),
            &mut io,
        );
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("cachectl {args:?} did not finish within 60 s"))
    };
    let out = String::from_utf8_lossy(&out).into_owned();
    let value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "cachectl {args:?}: not JSON ({e}): {out}\n{}",
            String::from_utf8_lossy(&err)
        )
    });
    (code, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_inspect_and_keys_on_a_cluster() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(ClusterOptions::default()));
    let cache = Cache::new(config(&cluster)).expect("cache");
    let ns = cache.namespace("catalog").expect("namespace");
    for i in 0..30u64 {
        ns.set(
            &format!("k{i}"),
            &format!("value {i}"),
            Some(Duration::from_secs(300)),
        )
        .await
        .expect("set");
    }
    with_cache(cache.clone(), async {
        for kind in ["daily", "weekly", "monthly"] {
            report("u1", kind).await;
        }
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let work = {
        let stop = Arc::clone(&stop);
        tokio::spawn(with_cache(cache.clone(), async move {
            let start = Instant::now();
            let mut i = 0u32;
            while !stop.load(SeqCst) && start.elapsed() < Duration::from_secs(120) {
                profile(i % 8).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }))
    };

    // A namespace: every key, whichever primary holds it.
    let (code, v) = run(&cluster, &["--json", "keys", "--namespace", "catalog"]).await;
    assert_eq!(code, EXIT_OK, "{v:#}");
    assert_eq!(
        (v["listed"].clone(), v["complete"].clone()),
        (30.into(), true.into()),
        "{v:#}"
    );
    let keys: Vec<String> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            let ttl = k["ttl_ms"].as_i64().expect("ttl");
            assert!(ttl > 0 && ttl <= 300_000, "{k}");
            k["key"].as_str().expect("key").to_owned()
        })
        .collect();
    let primaries: BTreeSet<u16> = keys.iter().map(|k| cluster.primary_for_key(k)).collect();
    assert_eq!(
        primaries.len(),
        3,
        "the keys span every primary: {primaries:?}"
    );

    // A user: the index and its members share a slot.
    let (code, v) = run(&cluster, &["--json", "keys", "--user", "u1"]).await;
    assert_eq!(code, EXIT_OK, "{v:#}");
    assert_eq!(
        (v["total"].clone(), v["listed"].clone()),
        (3.into(), 3.into()),
        "{v:#}"
    );

    let (code, v) = run(&cluster, &["--json", "inspect", &keys[0]]).await;
    assert_eq!(code, EXIT_OK, "{v:#}");
    assert_eq!(
        (v["form"].clone(), v["accepted"].clone()),
        ("envelope".into(), true.into()),
        "{v:#}"
    );

    // top: the process, its rates, the cluster's facts.
    let (code, frame) = run(&cluster, &["top", "--once", "--json"]).await;
    assert_eq!(code, EXIT_OK, "{frame:#}");
    assert_eq!(frame["processes"], 1, "{frame:#}");
    assert_eq!(frame["server"]["mode"], "cluster", "{frame:#}");
    let users = frame["namespaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["namespace"] == "users"))
        .unwrap_or_else(|| panic!("no users row: {frame:#}"));
    assert!(
        users["ops_per_sec"].as_f64().is_some_and(|v| v > 0.0),
        "{frame:#}"
    );
    assert!(
        users["hit_ratio"].as_f64().is_some_and(|v| v > 0.0),
        "{frame:#}"
    );

    stop.store(true, SeqCst);
    work.await.expect("workload");
}
