//! One body run across processes (`distributed_lock`), on real servers: 4 processes x 50
//! concurrent callers on one cold key run the body once; a lock owner killed mid-body
//! delays the others by at most the lock's lease (2 s in `tests/src/bin/lock_probe.rs`).
//! On a standalone Redis and on a Redis Cluster.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cache_tests::{ClusterOptions, RedisCluster, RedisServer};

const LEASE: Duration = Duration::from_secs(2);

static CLUSTER: LazyLock<RedisCluster> =
    LazyLock::new(|| RedisCluster::start(ClusterOptions::default()));

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn probe(
    url: &str,
    prefix: &str,
    callers: usize,
    start_at: u64,
    body_ms: u64,
    mode: &str,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lock_probe"))
        .args([
            callers.to_string(),
            start_at.to_string(),
            body_ms.to_string(),
            mode.to_owned(),
        ])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", url)
        .env("REDIS_KEY_PREFIX", prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start lock_probe")
}

struct Outcome {
    values: Vec<u64>,
    elapsed: Duration,
    lock_waits: u64,
}

fn outcome(child: Child) -> Outcome {
    let out = child.wait_with_output().expect("lock_probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lock_probe failed: {text}");
    let line = text.lines().last().expect("a line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
    Outcome {
        values: v["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|x| x.as_u64().expect("u64"))
            .collect(),
        elapsed: Duration::from_millis(v["elapsed_ms"].as_u64().expect("elapsed")),
        lock_waits: v["lock_waits"].as_u64().expect("lock_waits"),
    }
}

fn runs(con: &mut dyn redis::ConnectionLike, prefix: &str) -> u64 {
    redis::cmd("GET")
        .arg(format!("{prefix}:lockstats:runs"))
        .query::<Option<u64>>(con)
        .expect("GET")
        .unwrap_or(0)
}

fn four_processes_run_a_cold_body_once(
    url: &str,
    con: &mut dyn redis::ConnectionLike,
    prefix: &str,
) {
    let start_at = unix_ms() + 1_500;
    let children: Vec<Child> = (0..4)
        .map(|_| probe(url, prefix, 50, start_at, 500, "normal"))
        .collect();
    let outcomes: Vec<Outcome> = children.into_iter().map(outcome).collect();
    for o in &outcomes {
        assert_eq!(o.values.len(), 50);
        assert!(o.values.iter().all(|v| *v == 42), "{:?}", o.values);
    }
    assert_eq!(
        runs(con, prefix),
        1,
        "one body run across 4 processes x 50 callers"
    );
    let waits: u64 = outcomes.iter().map(|o| o.lock_waits).sum();
    assert_eq!(
        waits, 3,
        "the three other processes waited for the owner's value"
    );
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    eprintln!("4 x 50 callers: 1 body run, slowest process done in {slowest:?} (body 500 ms)");
}

fn a_killed_owner_delays_the_others_by_at_most_the_lease(
    url: &str,
    con: &mut dyn redis::ConnectionLike,
    prefix: &str,
) {
    let mut owner = probe(url, prefix, 1, unix_ms(), 0, "hang");
    let stdout = owner.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(
        line.trim(),
        "HOLDING",
        "the owner runs the body, holding the lock"
    );
    owner.kill().expect("kill -9 the owner");
    let _ = owner.wait();
    let killed = Instant::now();

    let other = outcome(probe(url, prefix, 10, unix_ms(), 100, "normal"));
    let delay = killed.elapsed();
    assert!(other.values.iter().all(|v| *v == 42));
    assert_eq!(runs(con, prefix), 2, "the dead owner's run, then one more");
    eprintln!("after the owner was killed: the others were done in {delay:?} (lease {LEASE:?})");
    // The others wait out what is left of the lease, then run the body (100 ms) once;
    // process start-up is in the measure too.
    assert!(
        delay < LEASE + Duration::from_millis(1_500),
        "waited {delay:?}, more than the lease {LEASE:?} allows"
    );
}

#[test]
fn standalone() {
    let server = RedisServer::plain();
    let mut con = server.client().get_connection().expect("connection");
    four_processes_run_a_cold_body_once(&server.url(), &mut con, "once");
    a_killed_owner_delays_the_others_by_at_most_the_lease(&server.url(), &mut con, "killed");
}

#[test]
fn cluster() {
    let cluster = &*CLUSTER;
    let mut con = cluster
        .cluster_client()
        .get_connection()
        .expect("cluster connection");
    four_processes_run_a_cold_body_once(&cluster.url(), &mut con, "once");
    a_killed_owner_delays_the_others_by_at_most_the_lease(&cluster.url(), &mut con, "killed");
}
