//! Rows on the standalone server: hits (a, b), misses (c), stampede (d), L1 (e), user
//! clearing (f, its own server), large values (j) and tag invalidation (k, its own server).

use std::time::{Duration, Instant};

use cache_runtime::service::CacheService;
use cache_runtime::{with_cache, Cache};
use cache_tests::RedisServer;

use crate::harness::{
    alternate, background, best_p99, concurrent, runs_problems, sequential_pair, solo,
    throughput_pair, Call, Checked, Expect, Ledger, Load, Pattern, Run, Side,
};
use crate::setup::{
    blocking, connected_cache, count, dbsize, ms, ratio, raw_connection, size, unbatched_cache, us,
    whole_reads_cache, Bench, Goal, Row, Sizes, ADMIN_TIMEOUT,
};
use crate::workload::{ours_hit, ours_large_bytes, ours_large_text, ours_slow};

/// Cold ids of row c, far from every hot id.
const COLD_BASE: u32 = 10_000_000;
/// The cold id of row d.
const STAMPEDE_ID: u32 = 20_000_000;
/// How long the L1 may take to start serving.
const L1_START: Duration = Duration::from_secs(10);

fn ours() -> Side<impl Call> {
    Side::global("ours", ours_hit())
}

fn raw(b: &Bench) -> Side<impl Call> {
    Side::global("baseline", b.raw.hit())
}

/// Stores ids `0..span` on both sides (each call a miss): the hit rows then read them.
pub async fn warm(b: &Bench, span: u32) -> Result<(), String> {
    let n = u64::from(span);
    let caches = [("ours", &b.cache)];
    sequential_pair(&caches, &ours(), &raw(b), 0..span, Expect::misses(n, n))
        .await
        .setup("warming")?;
    Ok(())
}

/// a. Sequential hits, ours and the baseline call by call. Returns the rows and our p50.
pub async fn sequential_hits(b: &Bench) -> Result<(Vec<Row>, Duration), String> {
    let s = b.sizes;
    let ids = (0..s.seq_calls).map(|i| (i as u32) % s.seq_keys);
    let expect = Expect::hits(s.seq_calls as u64);
    let Checked {
        value: (mut o, mut r),
        problems,
        ..
    } = sequential_pair(&[("ours", &b.cache)], &ours(), &raw(b), ids, expect).await;
    let (o, r) = (o.stats(), r.stats());
    let what = format!(
        "{} calls over {} keys",
        count(s.seq_calls as u64),
        s.seq_keys
    );
    let rows = vec![
        Row::new(
            format!("a. sequential hits p50, {what}"),
            us(o.p50),
            us(r.p50),
            Some(ratio(o.p50, r.p50)),
            Goal::RatioAtMost(1.08),
            problems.clone(),
        ),
        Row::new(
            "a. sequential hits p99",
            us(o.p99),
            us(r.p99),
            Some(ratio(o.p99, r.p99)),
            Goal::Reported,
            problems,
        ),
    ];
    Ok((rows, o.p50))
}

/// The three key patterns of the concurrent rows, with their labels.
pub fn patterns(s: &Sizes) -> [(&'static str, Pattern); 3] {
    [
        (
            "lockstep (the same key at the same step)",
            Pattern::Lockstep {
                keys: s.shared_keys,
            },
        ),
        (
            "offset (the same keys, each task from its own offset)",
            Pattern::Offset {
                keys: s.shared_keys,
            },
        ),
        (
            "disjoint (each task its own keys)",
            Pattern::Disjoint {
                per_task: s.keys_per_task,
            },
        ),
    ]
}

/// b. Concurrent hits in the three patterns, ours against the baseline; then b3's pattern
/// with batching off.
pub async fn concurrent_hits(b: &Bench) -> Result<Vec<Row>, String> {
    let s = b.sizes;
    let load = |pattern| Load {
        tasks: s.tasks,
        calls: s.calls_per_task,
        pattern,
    };
    let shape = format!(
        "{} tasks x {} calls",
        s.tasks,
        count(s.calls_per_task as u64)
    );
    let mut rows = Vec::new();
    for (n, (label, pattern)) in patterns(s).into_iter().enumerate() {
        let keys = match pattern {
            Pattern::Disjoint { per_task } => format!("{per_task} keys per task"),
            _ => format!("{} keys", count(u64::from(s.shared_keys))),
        };
        let measure = format!("b{}. concurrent hits, {shape}, {keys}, {label}", n + 1);
        let caches = [("ours", &b.cache)];
        rows.push(
            concurrent_row(
                b,
                &caches,
                &ours(),
                load(pattern),
                measure,
                Goal::RatioAtLeast(1.0),
            )
            .await?,
        );
    }
    // b4: what batching concurrent GETs into MGETs gives.
    let cache = unbatched_cache(&b.url).await?;
    let caches = [("ours, unbatched", &cache)];
    let unbatched = Side::on("ours, unbatched", &cache, ours_hit());
    let disjoint = Pattern::Disjoint {
        per_task: s.keys_per_task,
    };
    let measure = format!("b4. as b3 with REDIS_BATCH_READS=false, {shape}");
    rows.push(
        concurrent_row(
            b,
            &caches,
            &unbatched,
            load(disjoint),
            measure,
            Goal::Reported,
        )
        .await?,
    );
    Ok(rows)
}

/// One concurrent-hits row: `ours` (on `caches`) against the baseline.
async fn concurrent_row<C: Call>(
    b: &Bench,
    caches: &[(&'static str, &Cache)],
    ours: &Side<C>,
    load: Load,
    measure: String,
    goal: Goal,
) -> Result<Row, String> {
    let Checked {
        value: (o, r),
        problems,
        ..
    } = throughput_pair(caches, ours, &raw(b), load, b.sizes.rounds).await?;
    Ok(Row::throughput(measure, o, r, goal, problems))
}

/// c. Misses: distinct cold keys, ours against GET + body + SET EX.
pub async fn misses(b: &Bench) -> Result<Row, String> {
    let s = b.sizes;
    let n = u64::from(s.misses);
    let ids = COLD_BASE..COLD_BASE + s.misses;
    let Checked {
        value: (mut o, mut r),
        problems,
        ..
    } = sequential_pair(
        &[("ours", &b.cache)],
        &ours(),
        &raw(b),
        ids,
        Expect::misses(n, n),
    )
    .await;
    let (o, r) = (o.stats().mean, r.stats().mean);
    Ok(Row::new(
        format!("c. misses, {} distinct cold keys, mean", count(n)),
        us(o),
        us(r),
        Some(ratio(o, r)),
        Goal::RatioAtMost(1.10),
        problems,
    ))
}

/// d. Stampede: concurrent calls on one cold key with a slow body; how often it ran.
pub async fn stampede(b: &Bench) -> Result<Row, String> {
    let s = b.sizes;
    let load = Load {
        tasks: s.stampede,
        calls: 1,
        pattern: Pattern::Fixed(STAMPEDE_ID),
    };
    // Any number of body runs is accepted by the ledger; the row judges them below.
    let expect = Expect {
        stores: Some(1),
        raw_bodies: Some(0),
        ..Expect::healthy()
    };
    let caches = [("ours", &b.cache)];
    let ours = solo(
        &caches,
        &Side::global("ours", ours_slow()),
        load,
        Some(expect),
    )
    .await?;
    let raw = Side::global("baseline", b.raw.slow());
    let raw = solo(&[], &raw, load, Some(Expect::healthy())).await?;
    let (ours_runs, raw_runs) = (ours.bodies.ours_bodies, raw.bodies.raw_bodies);
    let mut problems = [ours.problems, raw.problems].concat();
    if ours_runs != 1 {
        problems.push(format!(
            "single flight broken: our body ran {ours_runs} times for one key"
        ));
    }
    if raw_runs != s.stampede as u64 {
        problems.push(format!(
            "the baseline body ran {raw_runs} times, not {}: the calls did not overlap",
            s.stampede
        ));
    }
    Ok(Row::new(
        format!(
            "d. stampede: {} concurrent calls, one cold key, {} ms body: body runs",
            s.stampede,
            crate::workload::SLOW_BODY.as_millis()
        ),
        ours_runs.to_string(),
        raw_runs.to_string(),
        None,
        Goal::Own("exactly 1".to_owned(), ours_runs == 1),
        problems,
    ))
}

/// A second cache with an L1 on the same server, serving, and filled with `0..keys`.
pub async fn l1_cache(b: &Bench, keys: u32) -> Result<Cache, String> {
    let cache = connected_cache(&b.url, true, "standalone").await?;
    // The L1 starts its invalidation listener on first use and serves once it is up.
    let start = Instant::now();
    while !cache.l1_active() {
        if start.elapsed() > L1_START {
            return Err(format!("the L1 did not start serving within {L1_START:?}"));
        }
        with_cache(cache.clone(), ours_hit().call(0)).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fill it from Redis: every key read once (the values were stored by `warm`).
    with_cache(cache.clone(), async {
        for id in 0..keys {
            ours_hit().call(id).await?;
        }
        Ok::<(), String>(())
    })
    .await?;
    Ok(cache)
}

/// Sequential hits on an L1 cache: one task, every call checked to be an L1 hit.
pub async fn l1_run(cache: &Cache, calls: usize, keys: u32) -> Result<Checked<Run>, String> {
    let load = Load {
        tasks: 1,
        calls,
        pattern: Pattern::Lockstep { keys },
    };
    let side = Side::on("ours L1", cache, ours_hit());
    let expect = Expect {
        l1_hits: Some(calls as u64),
        ..Expect::hits(calls as u64)
    };
    let mut checked = solo(&[("ours L1", cache)], &side, load, Some(expect)).await?;
    if !cache.l1_active() {
        checked
            .problems
            .push("the L1 stopped serving during the run".to_owned());
    }
    Ok(checked)
}

/// e. L1 hits against our Redis hits of row a.
pub async fn l1_hits(b: &Bench, redis_p50: Duration) -> Result<Row, String> {
    let s = b.sizes;
    let cache = l1_cache(b, s.seq_keys).await?;
    let Checked {
        value: mut run,
        mut problems,
        ..
    } = l1_run(&cache, s.seq_calls, s.seq_keys).await?;
    // How the L1 was kept coherent (health's `l1_mode`): Redis 7 allows client tracking,
    // the default, whose hits must cost no more than the pub/sub mode's 0.8 µs (issue 13).
    let mode = cache.health().await.l1_mode.unwrap_or("none");
    if mode != "tracking" {
        problems.push(format!("the L1 ran in mode {mode}, not tracking"));
    }
    let p50 = run.samples.stats().p50;
    let target = Duration::from_nanos(500);
    let tracking_target = Duration::from_nanos(800);
    Ok(Row::new(
        format!("e. L1 hits (`CACHE_L1=true`, l1_mode {mode}) p50, vs our Redis hit (a)"),
        us(p50),
        us(redis_p50),
        Some(ratio(p50, redis_p50)),
        Goal::Own(
            format!(
                "≤ 0.5 µs (≤ 0.8 µs with tracking: {})",
                if p50 <= tracking_target { "yes" } else { "NO" }
            ),
            p50 <= target,
        ),
        problems,
    ))
}

/// A server of its own holding `other_keys` keys that are not ours (rows f and k), its URL
/// and an admin connection; a population that falls short stops the program.
async fn populated_server(
    s: &'static Sizes,
) -> Result<(RedisServer, String, redis::aio::MultiplexedConnection), String> {
    let server = blocking("starting redis-server", RedisServer::plain).await?;
    let url = server.url();
    let mut admin = raw_connection(&url, ADMIN_TIMEOUT).await?;
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(s.other_keys)
        .arg("other")
        .query_async::<()>(&mut admin)
        .await
        .map_err(|e| format!("DEBUG POPULATE: {e}"))?;
    let populated = dbsize(&mut admin).await?;
    if populated != s.other_keys {
        return Err(format!(
            "DEBUG POPULATE left {populated} keys, not {}",
            s.other_keys
        ));
    }
    Ok((server, url, admin))
}

/// f. `clear_user_cache` of one user among many keys, against a SCAN MATCH (own server).
pub async fn clear_user(s: &'static Sizes) -> Result<Row, String> {
    let (_server, url, mut admin) = populated_server(s).await?;
    let cache = connected_cache(&url, false, "standalone").await?;
    let service = CacheService::new(cache.clone());
    for user in ["bench_user_0", "bench_user_1"] {
        for i in 0..s.user_keys {
            service
                .cache_user_data(user, &format!("item{i}"), &i, None)
                .await
                .map_err(|e| format!("cache_user_data: {e}"))?;
        }
    }
    let mut problems = Vec::new();
    let ledger = Ledger::open(&[("ours", &cache)]);
    let start = Instant::now();
    let cleared = service.clear_user_cache("bench_user_0").await;
    let ours = start.elapsed();
    match cleared {
        Ok(n) if n == s.user_keys as u64 => {}
        Ok(n) => problems.push(format!("clear_user_cache cleared {n}, not {}", s.user_keys)),
        Err(e) => problems.push(format!("clear_user_cache failed: {e}")),
    }
    ledger.close(Expect::healthy(), &mut problems).await;
    let start = Instant::now();
    let found = scan_and_unlink(&mut admin, "tradistry:users:{user:bench_user_1}:*").await?;
    let scan = start.elapsed();
    if found != s.user_keys {
        problems.push(format!(
            "SCAN MATCH found {found} keys, not {}",
            s.user_keys
        ));
    }
    let left = dbsize(&mut admin).await?;
    // The other keys, and the index sets (emptied ones are deleted with their last member).
    if left < s.other_keys || left > s.other_keys + 2 {
        problems.push(format!(
            "{left} keys left, expected {} (+ indexes)",
            s.other_keys
        ));
    }
    Ok(Row::new(
        format!(
            "f. `clear_user_cache`, {} keys among {} others",
            s.user_keys,
            count(s.other_keys)
        ),
        ms(ours),
        format!("{} (SCAN MATCH + UNLINK)", ms(scan)),
        Some(ratio(ours, scan)),
        Goal::Own("≤ 5 ms".to_owned(), ours <= Duration::from_millis(5)),
        problems,
    ))
}

/// k. `invalidate_tag` of a tag with `user_keys` entries among `other_keys` others (own
/// server), against finding the same entries by SCAN MATCH on their shared prefix.
pub async fn invalidate_tag(s: &'static Sizes) -> Result<Row, String> {
    let (_server, url, mut admin) = populated_server(s).await?;
    let cache = connected_cache(&url, false, "standalone").await?;
    // Two namespaces with the same keys: one tagged (ours), one found by SCAN (baseline).
    let tagged = cache
        .namespace("tagbench")
        .map_err(|e| format!("namespace: {e}"))?
        .with_tags(["trades:bench_user_0"]);
    let scanned = cache
        .namespace("scanbench")
        .map_err(|e| format!("namespace: {e}"))?;
    for i in 0..s.user_keys {
        let key = format!("item{i}");
        tagged
            .set(&key, &i, None)
            .await
            .map_err(|e| format!("set: {e}"))?;
        scanned
            .set(&key, &i, None)
            .await
            .map_err(|e| format!("set: {e}"))?;
    }
    let mut problems = Vec::new();
    let ledger = Ledger::open(&[("ours", &cache)]);
    let start = Instant::now();
    let invalidated = cache.invalidate_tag("trades:bench_user_0").await;
    let ours = start.elapsed();
    match invalidated {
        Ok(n) if n == s.user_keys as u64 => {}
        Ok(n) => problems.push(format!("invalidate_tag removed {n}, not {}", s.user_keys)),
        Err(e) => problems.push(format!("invalidate_tag failed: {e}")),
    }
    ledger.close(Expect::healthy(), &mut problems).await;
    let start = Instant::now();
    let found = scan_and_unlink(&mut admin, "tradistry:scanbench:*").await?;
    let scan = start.elapsed();
    if found != s.user_keys {
        problems.push(format!(
            "SCAN MATCH found {found} keys, not {}",
            s.user_keys
        ));
    }
    let left = dbsize(&mut admin).await?;
    // The other keys only: the tag's set goes with its last member.
    if left != s.other_keys {
        problems.push(format!("{left} keys left, expected {}", s.other_keys));
    }
    Ok(Row::new(
        format!(
            "k. `invalidate_tag`, {} entries among {} others",
            s.user_keys,
            count(s.other_keys)
        ),
        ms(ours),
        format!("{} (SCAN MATCH + UNLINK)", ms(scan)),
        Some(ratio(ours, scan)),
        Goal::Own("≤ 5 ms".to_owned(), ours <= Duration::from_millis(5)),
        problems,
    ))
}

/// The seed's way of clearing a user: SCAN the keyspace with MATCH, UNLINK what it finds.
async fn scan_and_unlink(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Result<usize, String> {
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| format!("SCAN: {e}"))?;
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if !found.is_empty() {
        redis::cmd("UNLINK")
            .arg(&found)
            .query_async::<u64>(conn)
            .await
            .map_err(|e| format!("UNLINK: {e}"))?;
    }
    Ok(found.len())
}

/// j. Large values: small-hit p99 while other tasks fetch large values, and the hit time
/// of one large value against the baseline.
pub async fn large_values(b: &Bench) -> Result<Vec<Row>, String> {
    let s = b.sizes;
    let len = s.large_len;
    let bytes = Side::global("ours Vec<u8>", ours_large_bytes());
    let text = Side::global("ours String", ours_large_text());
    let raw_bytes = Side::global("baseline Vec<u8>", b.raw.large_bytes());
    let raw_text = Side::global("baseline String", b.raw.large_text());
    warm_large(b, &bytes, &raw_bytes).await?;
    warm_large(b, &text, &raw_text).await?;
    let mb = size(len);
    let caches = [("ours", &b.cache)];
    let goal = Goal::RatioAtMost(3.0);
    let mut rows = vec![small_hits_under_load(b, &caches, &ours(), &bytes, &text, "", goal).await?];
    // What ranged reads give: the same load on a cache reading large values whole.
    let whole = whole_reads_cache(&b.url).await?;
    let caches = [("ours, whole reads", &whole)];
    let small = Side::on("ours, whole reads", &whole, ours_hit());
    let whole_bytes = Side::on("ours Vec<u8>, whole reads", &whole, ours_large_bytes());
    let whole_text = Side::on("ours String, whole reads", &whole, ours_large_text());
    let label = "as above with REDIS_READ_RANGE=0 (large values read whole): ";
    let goal = Goal::Reported;
    rows.push(
        small_hits_under_load(b, &caches, &small, &whole_bytes, &whole_text, label, goal).await?,
    );
    let measure = format!("j. one {mb} `Vec<u8>` hit, p50");
    rows.push(large_hit(b, &measure, &bytes, &raw_bytes).await?);
    let measure = format!("j. one {mb} `String` hit, p50");
    rows.push(large_hit(b, &measure, &text, &raw_text).await?);
    rows.push(compression(b).await?);
    Ok(rows)
}

/// A trade as an API returns it: the realistic, JSON-like value of row l.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Trade {
    id: u64,
    symbol: String,
    side: String,
    price: f64,
    quantity: u32,
    venue: String,
    note: Option<String>,
}

fn trades(n: u64) -> Vec<Trade> {
    (0..n)
        .map(|i| Trade {
            id: 1_000_000 + i,
            symbol: ["AAPL", "MSFT", "NVDA", "TSLA"][(i % 4) as usize].to_owned(),
            side: if i % 3 == 0 { "sell" } else { "buy" }.to_owned(),
            price: 100.0 + (i % 997) as f64 * 0.25,
            quantity: (i % 50) as u32 * 10,
            venue: "XNAS".to_owned(),
            note: (i % 10 == 0).then(|| format!("rebalance batch {}", i / 10)),
        })
        .collect()
}

/// l. Compression (`CACHE_COMPRESS_ABOVE`, default 64 KiB) of a JSON-like value: bytes in
/// Redis and write + hit time, against the same cache type with compression off.
async fn compression(b: &Bench) -> Result<Row, String> {
    let zipped = {
        let config = cache_runtime::CacheConfig::builder()
            .url(&b.url)
            .build()
            .map_err(|e| format!("cache configuration: {e}"))?;
        crate::setup::checked(
            Cache::new(config).map_err(|e| format!("cache: {e}"))?,
            "standalone",
        )
        .await?
    };
    let n = (b.sizes.large_len / 100).max(1_000) as u64;
    let value = trades(n);
    let mut problems = Vec::new();
    let time = |cache: &Cache, key: &'static str| {
        let cache = cache.clone();
        let value = &value;
        async move {
            let ns = cache
                .namespace("zipbench")
                .map_err(|e| format!("namespace: {e}"))?;
            let start = Instant::now();
            ns.set(key, value, None)
                .await
                .map_err(|e| format!("set: {e}"))?;
            let write = start.elapsed();
            let mut hits = Vec::with_capacity(20);
            for _ in 0..20 {
                let start = Instant::now();
                let back: Option<Vec<Trade>> =
                    ns.get(key).await.map_err(|e| format!("get: {e}"))?;
                hits.push(start.elapsed());
                if back.as_ref() != Some(value) {
                    return Err(format!("{key}: wrong value read back"));
                }
            }
            hits.sort();
            Ok::<_, String>((write, hits[hits.len() / 2], ns.key(key)))
        }
    };
    let (zw, zh, zkey) = time(&zipped, "zipped").await?;
    let (pw, ph, pkey) = time(&b.cache, "plain").await?;
    let mut admin = raw_connection(&b.url, ADMIN_TIMEOUT).await?;
    let mut strlen = async |key: &str| -> Result<u64, String> {
        redis::cmd("STRLEN")
            .arg(key)
            .query_async(&mut admin)
            .await
            .map_err(|e| format!("STRLEN: {e}"))
    };
    let (zb, pb) = (strlen(&zkey).await?, strlen(&pkey).await?);
    if zb >= pb {
        problems.push(format!("compressed {zb} bytes, not less than {pb}"));
    }
    let mb = pb as f64 / 1e6;
    eprintln!(
        "cache-bench: l: {n} trades, {pb} B plain, {zb} B compressed; write {} vs {}, hit {} vs {} ({:.2} ms/MB more per write)",
        ms(zw), ms(pw), ms(zh), ms(ph),
        (zw.as_secs_f64() - pw.as_secs_f64()) * 1e3 / mb
    );
    Ok(Row::new(
        format!(
            "l. {n} JSON-like trades ({} bincode), compressed to {:.0}% of the bytes: hit p50, vs compression off",
            size(pb as u32),
            100.0 * zb as f64 / pb as f64
        ),
        ms(zh),
        ms(ph),
        Some(ratio(zh, ph)),
        Goal::Reported,
        problems,
    ))
}

async fn warm_large<A: Call, B: Call>(
    b: &Bench,
    ours: &Side<A>,
    raw: &Side<B>,
) -> Result<(), String> {
    let caches = [("ours", &b.cache)];
    let ids = [b.sizes.large_len];
    sequential_pair(&caches, ours, raw, ids, Expect::misses(1, 1))
        .await
        .setup("storing the large values")?;
    Ok(())
}

/// Small hits from `small_tasks` tasks, alone and while `large_fetchers` tasks fetch the
/// large values (half `Vec<u8>`, half `String`); best p99 of alternated rounds each. All
/// sides call through `caches` (one cache), whose counters are checked.
async fn small_hits_under_load<S: Call, A: Call, B: Call>(
    b: &Bench,
    caches: &[(&'static str, &Cache)],
    small: &Side<S>,
    bytes: &Side<A>,
    text: &Side<B>,
    label: &str,
    goal: Goal,
) -> Result<Row, String> {
    let s = b.sizes;
    let load = Load {
        tasks: s.small_tasks,
        calls: s.small_calls,
        pattern: Pattern::Offset { keys: s.seq_keys },
    };
    let mut large_calls = 0;
    let mut problems = Vec::new();
    let ledger = Ledger::open(caches);
    let loaded = || async {
        let half = s.large_fetchers / 2;
        let fetch_bytes = background(bytes, half, s.large_len);
        let fetch_text = background(text, s.large_fetchers - half, s.large_len);
        let run = concurrent(small, load).await;
        let fetched = [fetch_bytes.stop().await?, fetch_text.stop().await?];
        Ok::<_, String>((run?, fetched))
    };
    let (mut alone, loaded) = alternate(s.rounds, || concurrent(small, load), loaded).await?;
    let mut under_load = Vec::with_capacity(loaded.len());
    for (run, fetched) in loaded {
        for (side, f) in [bytes.name, text.name].into_iter().zip(&fetched) {
            f.problems(side, &mut problems);
            large_calls += f.calls();
        }
        under_load.push(run);
    }
    let small_calls = runs_problems("ours small", &alone, &mut problems)
        + runs_problems("ours small under load", &under_load, &mut problems);
    if large_calls == 0 {
        problems.push("no large value was fetched while the small hits ran".to_owned());
    }
    ledger
        .close(Expect::hits(small_calls + large_calls), &mut problems)
        .await;
    eprintln!(
        "cache-bench: j: {label}connections after the large fetches: {:?}",
        caches.first().and_then(|(_, c)| c.pool_stats())
    );
    let (loaded_p99, alone_p99) = (best_p99(&mut under_load), best_p99(&mut alone));
    Ok(Row::new(
        format!(
            "j. {label}small-hit p99, {} tasks, while {} tasks fetch {} values ({large_calls} fetches), vs alone",
            s.small_tasks,
            s.large_fetchers,
            size(s.large_len)
        ),
        us(loaded_p99),
        us(alone_p99),
        Some(ratio(loaded_p99, alone_p99)),
        goal,
        problems,
    ))
}

/// Sequential hits of one large value, ours and the baseline interleaved.
async fn large_hit<A: Call, B: Call>(
    b: &Bench,
    measure: &str,
    ours: &Side<A>,
    raw: &Side<B>,
) -> Result<Row, String> {
    let s = b.sizes;
    let ids = std::iter::repeat_n(s.large_len, s.large_hits);
    let expect = Expect::hits(s.large_hits as u64);
    let Checked {
        value: (mut o, mut r),
        problems,
        ..
    } = sequential_pair(&[("ours", &b.cache)], ours, raw, ids, expect).await;
    let (o, r) = (o.stats().p50, r.stats().p50);
    Ok(Row::new(
        format!("{measure} ({} calls), vs raw GET + decode", s.large_hits),
        ms(o),
        ms(r),
        Some(ratio(o, r)),
        Goal::Reported,
        problems,
    ))
}
