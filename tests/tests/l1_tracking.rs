//! The L1 coherent with any writer (issue 13): server-assisted client tracking
//! (`backend/redis/tracking.rs`) drops a key from every process's L1 whoever changes it.
//!
//! - Two processes (`src/bin/l1_probe.rs`, each a cache with `CACHE_L1=true` reading the
//!   same keys through `ns.get`) and a third writer, a raw redis-rs connection in this test
//!   process, doing `SET`, `DEL`, `PEXPIRE 1`, `UNLINK` and `FLUSHDB` on keys both L1s
//!   hold: each process stops serving the old value within [`BOUND`] of the write's reply.
//!   The staleness is measured on one clock for every process (`CLOCK_MONOTONIC`): from the
//!   write's reply to the start of the last read that still returned the old value. The
//!   same on a 3-primary cluster, with keys in every primary's slots.
//! - Fallback: a server that refuses `CLIENT TRACKING` (renamed away, or an ACL user
//!   without `client`) puts the L1 on the pub/sub channel, health says `l1_mode: "pubsub"`,
//!   and this library's writes still reach the L1 (another client's do not: that is the
//!   fallback's limit).
//! - The tracking connection killed (`CLIENT KILL ID`, `CLIENT KILL TYPE pubsub`) while
//!   its reconnection is held: the L1 serves nothing, a write made meanwhile (whose push
//!   was lost with the connection) is never hidden by the L1, and the L1 comes back.
//! - This process's own writes are pushed back to it: measured (a fill lost now and then).
//!
//! Every case first shows the L1 serves (an L1 hit of the value about to change), so none
//! could pass with the L1 off.

mod reliability_support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cache_runtime::{Cache, CacheConfig};
use cache_tests::{
    l1_cache_at, raw_async_client, ClusterOptions, RedisCluster, RedisServer, ServerConfig,
};
use reliability_support::tap::TapProxy;
use tokio::sync::mpsc;

/// The coherence bound of issue 13: a write by any client is not served by an L1 longer
/// than this after it was made. Measured maxima are far below it (a few ms, see the
/// printed figures and RELIABILITY.md), so it is asserted as is, without slack.
const BOUND: Duration = Duration::from_millis(100);
/// Namespace of the manual keys read and written here.
const NS: &str = "l1t";
/// The keys' TTL: far longer than the test, so only an invalidation can drop them.
const TTL_SECS: u64 = 600;
/// How long a probe may take to report what it was waited for (a deadline, not a bound).
const WAIT: Duration = Duration::from_secs(5);

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn redis_key(key: &str) -> String {
    format!("tradistry:{NS}:{key}")
}

// ------------------------------------------------------------------ the probes

/// A value change one probe saw.
#[derive(Clone, Debug)]
struct Change {
    key: String,
    old: Option<u64>,
    new: Option<u64>,
    last_old_ns: u64,
    last_old_l1: bool,
    first_new_ns: u64,
}

#[derive(Debug)]
enum Event {
    Up(String),
    Down,
    Held(String, Option<u64>),
    Change(Change),
    Error(String),
}

fn value_of(text: &str) -> Option<u64> {
    if text == "-" {
        None
    } else {
        Some(text.parse().expect("a probe's value"))
    }
}

fn parse(line: &str) -> Option<Event> {
    let parts: Vec<&str> = line.split(' ').collect();
    Some(match parts.as_slice() {
        ["up", mode] => Event::Up((*mode).to_owned()),
        ["down"] => Event::Down,
        ["held", key, value] => Event::Held((*key).to_owned(), value_of(value)),
        ["change", key, old, new, last_old, l1, first_new] => Event::Change(Change {
            key: (*key).to_owned(),
            old: value_of(old),
            new: value_of(new),
            last_old_ns: last_old.parse().ok()?,
            last_old_l1: *l1 == "1",
            first_new_ns: first_new.parse().ok()?,
        }),
        ["error", ..] => Event::Error(line.to_owned()),
        _ => return None,
    })
}

/// What one probe reported so far.
#[derive(Default)]
struct Seen {
    mode: Option<String>,
    ups: usize,
    downs: usize,
    /// Key -> the value its L1 served last, while no change came since.
    held: HashMap<String, Option<u64>>,
    changes: Vec<Change>,
    errors: Vec<String>,
}

/// `l1_probe` processes and what they said.
struct Probes {
    children: Vec<Child>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    seen: Vec<Seen>,
}

impl Probes {
    fn spawn(n: usize, url: &str, keys: &[String]) -> Probes {
        let (tx, events) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(env!("CARGO_BIN_EXE_l1_probe"))
                .args([NS.to_owned(), keys.join(",")])
                .current_dir(std::env::temp_dir())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("REDIS_URL", url)
                .env("CACHE_L1", "true")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start l1_probe");
            let stdout = child.stdout.take().expect("probe stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    match parse(&line) {
                        Some(event) => {
                            if tx.send((i, event)).is_err() {
                                return;
                            }
                        }
                        None => eprintln!("l1_probe {i}: {line}"),
                    }
                }
            });
            children.push(child);
        }
        Probes {
            children,
            events,
            seen: (0..n).map(|_| Seen::default()).collect(),
        }
    }

    fn apply(&mut self, (i, event): (usize, Event)) {
        let seen = &mut self.seen[i];
        match event {
            Event::Up(mode) => {
                seen.mode = Some(mode);
                seen.ups += 1;
            }
            Event::Down => {
                seen.downs += 1;
                // The L1 restarts empty.
                seen.held.clear();
            }
            Event::Held(key, value) => {
                seen.held.insert(key, value);
            }
            Event::Change(change) => {
                seen.held.remove(&change.key);
                seen.changes.push(change);
            }
            Event::Error(e) => seen.errors.push(e),
        }
    }

    /// Applies events until `done` holds for every probe; panics with `what` after [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&Seen) -> bool) {
        self.until_each(what, |_, s| done(s)).await;
    }

    /// [`until`](Self::until), told which probe it is.
    async fn until_each(&mut self, what: &str, done: impl Fn(usize, &Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.seen.iter().enumerate().all(|(i, s)| done(i, s)) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => panic!("the probes exited while waiting for {what}"),
                Err(_) => panic!(
                    "no probe reported {what} within {WAIT:?}; held: {:?}; errors: {:?}",
                    self.seen.iter().map(|s| &s.held).collect::<Vec<_>>(),
                    self.seen.iter().map(|s| &s.errors).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits until every probe's L1 served `value` for each of `keys`.
    async fn held(&mut self, keys: &[(&str, u64)]) {
        let what = format!("L1 hits of {keys:?}");
        self.until(&what, |s| {
            keys.iter().all(|(k, v)| s.held.get(*k) == Some(&Some(*v)))
        })
        .await;
    }

    /// Each probe's change of `key` from `old` to `new` whose first new read began after
    /// `sent`.
    async fn changed(
        &mut self,
        key: &str,
        old: Option<u64>,
        new: Option<u64>,
        sent: u64,
    ) -> Vec<Change> {
        let find = |s: &Seen| {
            s.changes
                .iter()
                .find(|c| c.key == key && c.new == new && c.first_new_ns >= sent)
                .cloned()
        };
        self.until(&format!("{key}: {old:?} -> {new:?}"), |s| find(s).is_some())
            .await;
        let found: Vec<Change> = self.seen.iter().filter_map(find).collect();
        for c in &found {
            assert_eq!(c.old, old, "{key} changed from another value: {c:?}");
        }
        found
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Closing stdin ends a probe; the kill is for one that does not.
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------ the writers

/// The third writer: a raw redis-rs connection, not this library.
enum Writer {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster {
        conn: redis::cluster_async::ClusterConnection,
        /// For `FLUSHDB`, which a cluster runs per node.
        primaries: Vec<redis::aio::MultiplexedConnection>,
    },
}

impl Writer {
    async fn try_run(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<()> {
        let done: redis::RedisResult<redis::Value> = match self {
            Writer::Standalone(conn) => cmd.query_async(conn).await,
            Writer::Cluster { conn, .. } => cmd.query_async(conn).await,
        };
        done.map(drop)
    }

    async fn run(&mut self, cmd: &redis::Cmd) {
        if let Err(e) = self.try_run(cmd).await {
            panic!("the writer's {cmd:?} failed: {e}");
        }
    }

    async fn flushdb(&mut self) {
        match self {
            Writer::Standalone(conn) => {
                let _: () = redis::cmd("FLUSHDB")
                    .query_async(conn)
                    .await
                    .expect("FLUSHDB");
            }
            Writer::Cluster { primaries, .. } => {
                for conn in primaries {
                    let _: () = redis::cmd("FLUSHDB")
                        .query_async(conn)
                        .await
                        .expect("FLUSHDB on a primary");
                }
            }
        }
    }
}

/// A writer's operation on one key, and what a reader then finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Set,
    Del,
    Pexpire,
    Unlink,
    /// No operation of its own: the key waits for the round's `FLUSHDB`.
    Keep,
    Flushdb,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Set => "SET",
            Op::Del => "DEL",
            Op::Pexpire => "PEXPIRE 1",
            Op::Unlink => "UNLINK",
            Op::Keep => "-",
            Op::Flushdb => "FLUSHDB",
        }
    }
}

const KEY_OPS: [Op; 5] = [Op::Set, Op::Del, Op::Pexpire, Op::Unlink, Op::Keep];

/// One probe's view of one write.
struct Sample {
    /// From the write's reply to the start of the last read that returned the old value
    /// (zero when none started after the reply).
    stale_ns: u64,
    /// From the write's reply to the start of the first read that returned the new one.
    seen_after_ns: u64,
    /// The L1 served that last old read (it held the value until it was invalidated).
    old_from_l1: bool,
}

fn sample(change: &Change, committed: u64) -> Sample {
    Sample {
        stale_ns: change.last_old_ns.saturating_sub(committed),
        seen_after_ns: change.first_new_ns.saturating_sub(committed),
        old_from_l1: change.last_old_l1,
    }
}

/// A cache without an L1 in this process: this library as a writer.
fn library_writer(url: &str) -> Cache {
    let config = CacheConfig::builder()
        .url(url)
        .connect_timeout(Duration::from_secs(3))
        .socket_timeout(Duration::from_secs(3))
        .build()
        .expect("valid config");
    Cache::new(config).expect("cache")
}

/// Two probes reading `keys` through `url`, both serving in tracking mode.
async fn tracking_probes(url: &str, keys: &[String]) -> Probes {
    let mut probes = Probes::spawn(2, url, keys);
    probes.until("the L1 serving", |s| s.mode.is_some()).await;
    for s in &probes.seen {
        assert_eq!(
            s.mode.as_deref(),
            Some("tracking"),
            "Redis 7 allows tracking: it is the mode"
        );
    }
    probes
}

/// The body shared by the standalone and cluster cases: both probes hold `keys` in their
/// L1s; each round the library writes them, then the raw `writer` changes each (every
/// key gets every operation over the rounds), then flushes. Returns the samples per
/// operation; asserts the bound.
async fn any_writer_reaches_both_l1s(
    probes: &mut Probes,
    url: &str,
    keys: &[String],
    writer: &mut Writer,
    rounds: u64,
) -> BTreeMap<Op, Vec<Sample>> {
    let library = library_writer(url);
    let ns = library.namespace(NS).expect("namespace");
    let mut samples: BTreeMap<Op, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        let base = round * 10 + 1;
        // A change is looked for from here: a probe's read that started just before a
        // write was sent may reach the server after it (a loaded machine) and see the new
        // value; this round's values are its own, so the change is still the write's.
        let round_start = mono_ns();
        for key in keys {
            ns.set(key, &base, Some(Duration::from_secs(TTL_SECS)))
                .await
                .expect("library write");
        }
        // Served by both L1s (the library's write reached them too: they hold `base`).
        let held: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), base)).collect();
        probes.held(&held).await;

        let mut left = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let op = KEY_OPS[(i + round as usize) % KEY_OPS.len()];
            let k = redis_key(key);
            let (cmd, new) = match op {
                Op::Set => {
                    let mut c = redis::cmd("SET");
                    c.arg(&k).arg(base + 1).arg("EX").arg(TTL_SECS);
                    (c, Some(base + 1))
                }
                Op::Del => {
                    let mut c = redis::cmd("DEL");
                    c.arg(&k);
                    (c, None)
                }
                Op::Pexpire => {
                    let mut c = redis::cmd("PEXPIRE");
                    c.arg(&k).arg(1);
                    (c, None)
                }
                Op::Unlink => {
                    let mut c = redis::cmd("UNLINK");
                    c.arg(&k);
                    (c, None)
                }
                Op::Keep | Op::Flushdb => {
                    left.push((key.as_str(), base));
                    continue;
                }
            };
            writer.run(&cmd).await;
            let committed = mono_ns();
            let changes = probes.changed(key, Some(base), new, round_start).await;
            let out = samples.entry(op).or_default();
            out.extend(changes.iter().map(|c| sample(c, committed)));
            if let Some(v) = new {
                left.push((key.as_str(), v));
            }
        }
        // What is left is held again (the SET's new value refilled from Redis), then
        // flushed.
        probes.held(&left).await;
        writer.flushdb().await;
        let committed = mono_ns();
        for (key, v) in &left {
            let changes = probes.changed(key, Some(*v), None, round_start).await;
            let out = samples.entry(Op::Flushdb).or_default();
            out.extend(changes.iter().map(|c| sample(c, committed)));
        }
    }
    let downs: Vec<usize> = probes.seen.iter().map(|s| s.downs).collect();
    let errors: Vec<&Vec<String>> = probes.seen.iter().map(|s| &s.errors).collect();
    assert!(
        errors.iter().all(|e| e.is_empty()),
        "probe reads failed: {errors:?}"
    );
    report_and_check(&samples, &downs);
    samples
}

fn report_and_check(samples: &BTreeMap<Op, Vec<Sample>>, downs: &[usize]) {
    let mut worst = 0u64;
    for (op, list) in samples {
        let mut seen: Vec<u64> = list.iter().map(|s| s.seen_after_ns).collect();
        seen.sort_unstable();
        let Some(&seen_max) = seen.last() else {
            continue;
        };
        let stale = list.iter().map(|s| s.stale_ns).max().unwrap_or(0);
        let stale_reads = list.iter().filter(|s| s.stale_ns > 0).count();
        // Who served the stalest read: the L1, or Redis itself (after PEXPIRE 1 the key
        // lives one more millisecond).
        let stale_l1 = list
            .iter()
            .filter(|s| s.old_from_l1)
            .map(|s| s.stale_ns)
            .max()
            .unwrap_or(0);
        let from_l1 = list.iter().filter(|s| s.old_from_l1).count();
        worst = worst.max(stale);
        eprintln!(
            "{:>9}: {} samples; max staleness {:.3} ms (by the L1: {:.3} ms; {stale_reads} \
             with a stale read after the reply); new value seen after p50 {:.3} ms, max \
             {:.3} ms; old value served by the L1 until the change in {from_l1}",
            op.name(),
            list.len(),
            ms(stale),
            ms(stale_l1),
            ms(seen[seen.len() / 2]),
            ms(seen_max),
        );
        assert!(
            Duration::from_nanos(stale) < BOUND,
            "{}: an L1 served the old value {:.3} ms after the write (bound {BOUND:?})",
            op.name(),
            ms(stale)
        );
        // Stricter: the process served the new value (so no longer the old one) within
        // the bound; this includes the probe's pause between two reads (about 1 ms).
        assert!(
            Duration::from_nanos(seen_max) < BOUND,
            "{}: an L1 served the new value only {:.3} ms after the write (bound {BOUND:?})",
            op.name(),
            ms(seen_max)
        );
        // Proof that the L1 was serving up to the write (else the figures prove nothing;
        // with the L1 off this is 0): after PEXPIRE 1, Redis itself may still return the
        // value for a millisecond, and a fill dropped because an invalidation raced it (of
        // this key, or of one sharing its stripe) leaves that key's last reads to Redis
        // (5 of 48 FLUSHDB samples on a loaded cluster run): three in four, not nine in ten.
        if *op != Op::Pexpire {
            assert!(
                from_l1 * 4 >= list.len() * 3,
                "{}: only {from_l1} of {} old values were served by the L1 (downs {downs:?})",
                op.name(),
                list.len()
            );
        }
    }
    eprintln!(
        "worst staleness over every write: {:.3} ms (bound {BOUND:?}); L1 down events per \
         probe: {downs:?}",
        ms(worst)
    );
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_writer_reaches_two_processes_l1_within_100ms() {
    let server = RedisServer::plain();
    let keys = keys(5);
    let mut writer = Writer::Standalone(raw_async_client(&server).await);
    let mut probes = tracking_probes(&server.url(), &keys).await;
    let samples =
        any_writer_reaches_both_l1s(&mut probes, &server.url(), &keys, &mut writer, 12).await;
    for op in [Op::Set, Op::Del, Op::Pexpire, Op::Unlink, Op::Flushdb] {
        assert!(
            samples.get(&op).is_some_and(|s| s.len() >= 2 * 12),
            "{} measured too rarely",
            op.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_writer_reaches_two_processes_l1_on_a_cluster() {
    if !cache_tests::cluster::redis_cli_available() {
        panic!("{}", cache_tests::cluster::REDIS_CLI_MISSING);
    }
    let cluster = RedisCluster::start(ClusterOptions::default());
    let keys = keys(12);
    // Keys in every primary's slots (a key's push comes from the node holding it).
    let mut by_primary: BTreeMap<u16, usize> = BTreeMap::new();
    for k in &keys {
        *by_primary
            .entry(cluster.primary_for_key(redis_key(k)))
            .or_default() += 1;
    }
    assert_eq!(
        by_primary.len(),
        cluster.primaries().len(),
        "keys on every primary: {by_primary:?}"
    );
    let conn = cluster
        .cluster_client()
        .get_async_connection()
        .await
        .expect("cluster connection");
    let mut primaries = Vec::new();
    for port in cluster.primaries() {
        primaries.push(
            cluster
                .node_client(port)
                .get_multiplexed_async_connection()
                .await
                .expect("node connection"),
        );
    }
    let mut writer = Writer::Cluster { conn, primaries };
    let url = cluster.url();
    let mut probes = tracking_probes(&url, &keys).await;
    let samples = any_writer_reaches_both_l1s(&mut probes, &url, &keys, &mut writer, 5).await;
    assert!(samples.get(&Op::Set).is_some_and(|s| s.len() >= 2 * 12));

    // The primaries change (a manual failover: the old primary stays up, as a replica):
    // a write to the promoted node's slots right after it reaches both L1s within the
    // bound, before the listeners' next read of the node list (about 1 s) tracks the new
    // primary, because the demoted node, still tracked, replays the write and pushes it.
    let library = library_writer(&url);
    let ns = library.namespace(NS).unwrap();
    for key in &keys {
        ns.set(key, &1000u64, Some(Duration::from_secs(TTL_SECS)))
            .await
            .unwrap();
    }
    let held: Vec<(&str, u64)> = keys.iter().map(|k| (k.as_str(), 1000)).collect();
    probes.held(&held).await;
    let old_primary = cluster.primary_for_key(redis_key(&keys[0]));
    let moving: Vec<String> = keys
        .iter()
        .filter(|k| cluster.primary_for_key(redis_key(k)) == old_primary)
        .cloned()
        .collect();
    let replica = *cluster
        .replicas_of(old_primary)
        .first()
        .expect("a replica of that primary");
    let ups_before: Vec<usize> = probes.seen.iter().map(|s| s.ups).collect();
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut cluster.admin_connection(replica))
        .expect("CLUSTER FAILOVER");
    let promoted = within(Duration::from_secs(10), async || {
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut cluster.admin_connection(replica))
            .expect("ROLE");
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
    })
    .await
    .expect("the replica is promoted");
    let (right_after, right_after_l1) =
        foreign_sets(&mut probes, &mut writer, &moving, 1000, 1001).await;
    // Once the listeners have read the new node list (they restart their L1s, empty),
    // the promoted primary is tracked itself.
    probes
        .until_each("the L1 restarted on the new primaries", |i, s| {
            s.ups > ups_before[i]
        })
        .await;
    let held: Vec<(&str, u64)> = moving.iter().map(|k| (k.as_str(), 1001)).collect();
    probes.held(&held).await;
    let (re_tracked, re_tracked_l1) =
        foreign_sets(&mut probes, &mut writer, &moving, 1001, 1002).await;
    eprintln!(
        "manual failover ({promoted:?} to promote {replica}), {} keys of its slots: a write \
         right after it served by both L1s after at most {:.3} ms ({right_after_l1}); after \
         the listeners re-tracked the primaries, {:.3} ms ({re_tracked_l1}); L1 down events \
         per probe: {:?}",
        moving.len(),
        ms(right_after),
        ms(re_tracked),
        probes.seen.iter().map(|s| s.downs).collect::<Vec<_>>()
    );
    for worst in [right_after, re_tracked] {
        assert!(
            Duration::from_nanos(worst) < BOUND,
            "a write after the failover reached an L1 only after {:.3} ms",
            ms(worst)
        );
    }
}

/// A raw `SET` of each of `keys` from `old` to `new` (retried while the cluster connection
/// follows a new slot owner): the longest any probe took to serve the new value, in ns,
/// and in how many of the probes' changes the L1 had served the old value up to it.
async fn foreign_sets(
    probes: &mut Probes,
    writer: &mut Writer,
    keys: &[String],
    old: u64,
    new: u64,
) -> (u64, String) {
    let (mut worst, mut from_l1, mut changes) = (0, 0, 0);
    for key in keys {
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key)).arg(new).arg("EX").arg(TTL_SECS);
        let sent = mono_ns();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match writer.try_run(&cmd).await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("SET after the failover: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("SET after the failover: {e}"),
            }
        }
        let committed = mono_ns();
        for c in probes.changed(key, Some(old), Some(new), sent).await {
            let s = sample(&c, committed);
            worst = worst.max(s.seen_after_ns).max(s.stale_ns);
            from_l1 += usize::from(s.old_from_l1);
            changes += 1;
        }
    }
    (
        worst,
        format!("old value from the L1 in {from_l1} of {changes}"),
    )
}

// ------------------------------------------------------------------ in-process cases

/// Polls `check` until it holds or `limit` passes; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn wait_active(cache: &Cache) {
    let ns = cache.namespace(NS).expect("namespace");
    // The listener starts on first use.
    let _ = ns.get::<u64>("warm-up").await;
    within(Duration::from_secs(5), async || cache.l1_active())
        .await
        .expect("the L1 comes up");
}

fn l1_hits(cache: &Cache) -> u64 {
    cache.counters().get(NS).map_or(0, |c| c.l1_hits)
}

/// Reads `key` until the L1 serves `expected`; panics if it does not within 2 s.
async fn until_l1_hit(cache: &Cache, key: &str, expected: u64) {
    let ns = cache.namespace(NS).unwrap();
    let hit = within(Duration::from_secs(2), async || {
        let before = l1_hits(cache);
        let value = ns.get::<u64>(key).await.expect("read");
        value == Some(expected) && l1_hits(cache) > before
    })
    .await;
    assert!(
        hit.is_some(),
        "{key}={expected} never served from the L1: {:?}",
        cache.counters()
    );
}

async fn foreign_set(raw: &mut redis::aio::MultiplexedConnection, key: &str, value: u64) {
    let _: () = redis::cmd("SET")
        .arg(redis_key(key))
        .arg(value)
        .arg("EX")
        .arg(TTL_SECS)
        .query_async(raw)
        .await
        .expect("foreign SET");
}

/// On a server that refuses tracking: the L1 listens to the pub/sub channel, health says
/// so, this library's writes reach it within the bound, and (the fallback's limit) a raw
/// client's write does not.
async fn falls_back_to_pubsub(server: &RedisServer) {
    let (a, b) = (l1_cache_at(server.url()), l1_cache_at(server.url()));
    wait_active(&a).await;
    wait_active(&b).await;
    for c in [&a, &b] {
        let health = c.health().await;
        assert_eq!(health.l1_mode, Some("pubsub"), "health: {health:?}");
        assert_eq!(health.l1_active, Some(true));
    }
    let (na, nb) = (a.namespace(NS).unwrap(), b.namespace(NS).unwrap());
    na.set("k", &1u64, Some(Duration::from_secs(TTL_SECS)))
        .await
        .unwrap();
    until_l1_hit(&b, "k", 1).await;
    na.set("k", &2u64, Some(Duration::from_secs(TTL_SECS)))
        .await
        .unwrap();
    let seen = within(BOUND, async || nb.get::<u64>("k").await.unwrap() == Some(2)).await;
    let Some(seen) = seen else {
        panic!("a library write did not reach the pub/sub L1 within {BOUND:?}");
    };
    eprintln!("pubsub mode: a library write seen by the other L1 after {seen:?}");
    // Another client's write is not announced: B's L1 goes on serving 2 (until its entry
    // expires). This is what the tracking mode fixes.
    until_l1_hit(&b, "k", 2).await;
    let mut raw = raw_async_client(server).await;
    foreign_set(&mut raw, "k", 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = l1_hits(&b);
    assert_eq!(nb.get::<u64>("k").await.unwrap(), Some(2));
    assert_eq!(l1_hits(&b), before + 1, "still the L1's copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_renamed_away_falls_back_to_pubsub() {
    let server = RedisServer::start(ServerConfig {
        extra_config: vec!["rename-command CLIENT \"\"".to_owned()],
        ..ServerConfig::default()
    });
    falls_back_to_pubsub(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_without_client_falls_back_to_pubsub() {
    let server = RedisServer::with_acl_user("app", "app-secret", "~* &* +@all -client");
    falls_back_to_pubsub(&server).await;
}

/// How the tracking connection is killed.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// `CLIENT KILL ID` of the client that has tracking on (`flags` `t`, broadcast `B`).
    ById,
    /// `CLIENT KILL TYPE pubsub` (the connection subscribes a marker channel for this).
    TypePubsub,
}

/// B (an L1 cache reaching Redis through a proxy that can hold its re-subscription) holds
/// a key; its tracking connection is killed and its reconnection held for `HOLD`; a raw
/// client changes the key right after the kill (that push is lost with the connection).
/// The L1 stops serving at once, serves nothing while held, and comes back with the new
/// value; no read returns the old value later than [`BOUND`] after the write.
async fn a_killed_tracking_connection(kill: Kill) {
    const HOLD: Duration = Duration::from_secs(1);
    let server = RedisServer::plain();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = TapProxy::start("127.0.0.1:0", upstream).await;
    let b = l1_cache_at(format!("redis://{}", proxy.addr()));
    wait_active(&b).await;
    assert_eq!(b.health().await.l1_mode, Some("tracking"));
    assert_eq!(proxy.subscribers(), 1, "B's tracking connection is proxied");
    let mut raw = raw_async_client(&server).await;
    foreign_set(&mut raw, "k", 1).await;
    until_l1_hit(&b, "k", 1).await;

    // A reader in a loop, from before the kill to after the recovery.
    let reads: Arc<Mutex<Vec<(Instant, u64, bool)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, reads, stop) = (b.clone(), Arc::clone(&reads), Arc::clone(&stop));
        tokio::spawn(async move {
            let ns = b.namespace(NS).unwrap();
            while !stop.load(SeqCst) {
                let before = l1_hits(&b);
                let started = Instant::now();
                let value = ns.get::<u64>("k").await.expect("B's reads reach Redis");
                let l1 = l1_hits(&b) > before;
                reads.lock().unwrap_or_else(PoisonError::into_inner).push((
                    started,
                    value.expect("k is there"),
                    l1,
                ));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    proxy.hold_new_subscribers();
    let killed_at = Instant::now();
    let killed: u64 = match kill {
        Kill::ById => {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut raw)
                .await
                .unwrap();
            let ids: Vec<&str> = list
                .lines()
                .filter(|l| {
                    l.split(' ')
                        .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('t')))
                })
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
                .collect();
            assert_eq!(ids.len(), 1, "one tracking client: {list}");
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(ids[0])
                .query_async(&mut raw)
                .await
                .unwrap()
        }
        Kill::TypePubsub => redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut raw)
            .await
            .unwrap(),
    };
    assert_eq!(killed, 1, "{kill:?} killed the tracking connection");
    foreign_set(&mut raw, "k", 2).await;
    let committed = Instant::now();

    within(Duration::from_secs(1), async || !b.l1_active())
        .await
        .expect("the L1 stops when its tracking connection is killed");
    // An upper bound: the first check comes after the write's round trip.
    let down_at = Instant::now();
    let noticed = down_at - killed_at;
    let health = b.health().await;
    assert_eq!(health.l1_active, Some(false));
    assert_eq!(
        health.l1_mode,
        Some("tracking"),
        "still tracking, reconnecting"
    );
    let hits = l1_hits(&b);
    tokio::time::sleep_until((killed_at + HOLD).into()).await;
    assert!(
        !b.l1_active(),
        "the L1 came back while its tracking could not"
    );
    assert_eq!(
        l1_hits(&b),
        hits,
        "the L1 served while its tracking was down"
    );

    proxy.release_subscribers();
    let lifted = Instant::now();
    let back = within(Duration::from_secs(10), async || b.l1_active())
        .await
        .expect("the L1 comes back with its tracking");
    until_l1_hit(&b, "k", 2).await;
    stop.store(true, SeqCst);
    reader.await.expect("reader");

    let reads = reads.lock().unwrap_or_else(PoisonError::into_inner);
    let stale = reads
        .iter()
        .filter(|(started, value, _)| *value == 1 && *started > committed)
        .map(|(started, ..)| *started - committed)
        .max()
        .unwrap_or_default();
    let from_l1_while_down = reads
        .iter()
        .filter(|(started, _, l1)| *l1 && *started > down_at && *started < lifted)
        .count();
    eprintln!(
        "{kill:?}: L1 off within {noticed:?} of the kill, back {back:?} after the hold was lifted; \
         {} reads, worst staleness of the write made meanwhile {stale:?}",
        reads.len()
    );
    assert!(
        stale < BOUND,
        "the old value was served {stale:?} after the write"
    );
    assert_eq!(from_l1_while_down, 0, "L1 hits while its tracking was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_connection_killed_by_id_stops_the_l1_until_it_is_back() {
    a_killed_tracking_connection(Kill::ById).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_connection_killed_as_pubsub_stops_the_l1_until_it_is_back() {
    a_killed_tracking_connection(Kill::TypePubsub).await;
}

/// This process's own write is pushed back to it: a read right after the write may lose
/// its fill (the push lands between its ticket and its fill) or the filled entry (the push
/// lands after). Measured: how many Redis reads it takes, after an own write, until the L1
/// serves; the push is invalidating a value that was never in the L1 (fills come from
/// reads only), so no fresh entry is dropped except in that short window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_cost_at_most_a_lost_fill() {
    const WRITES: u64 = 200;
    let server = RedisServer::plain();
    let a = l1_cache_at(server.url());
    wait_active(&a).await;
    assert_eq!(a.health().await.l1_mode, Some("tracking"));
    let ns = a.namespace(NS).unwrap();
    let mut extra_reads: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..WRITES {
        ns.set("own", &i, Some(Duration::from_secs(TTL_SECS)))
            .await
            .unwrap();
        // Reads until one is an L1 hit; the first is always a Redis read (no fill from
        // local writes).
        let mut redis_reads = 0u64;
        let start = Instant::now();
        loop {
            let before = l1_hits(&a);
            assert_eq!(ns.get::<u64>("own").await.unwrap(), Some(i));
            if l1_hits(&a) > before {
                break;
            }
            redis_reads += 1;
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "never served from the L1"
            );
        }
        *extra_reads.entry(redis_reads - 1).or_default() += 1;
    }
    eprintln!(
        "own writes: extra Redis reads before the first L1 hit after a write -> how many of \
         {WRITES} writes: {extra_reads:?}"
    );
    // The push of a write lands once: it costs one fill at most.
    assert!(
        extra_reads.keys().all(|extra| *extra <= 1),
        "a write cost more than one lost fill: {extra_reads:?}"
    );
    assert!(a.l1_active());
}
