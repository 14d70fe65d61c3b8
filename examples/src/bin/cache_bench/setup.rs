//! Sizes of a run, the servers and caches it uses, and the rows it prints. Every failure
//! here stops the program with a message: a benchmark on a half-set-up server measures
//! nothing.

use std::time::Duration;

use cache_runtime::{Cache, CacheConfig, CacheConfigBuilder};
use cache_tests::RedisServer;

use crate::workload::Raw;

/// How big each measurement is.
pub struct Sizes {
    pub mode: &'static str,
    /// Alternated rounds per side of the throughput rows (best of them is reported).
    pub rounds: usize,
    /// a, e, g: sequential calls, over `seq_keys` keys.
    pub seq_calls: usize,
    pub seq_keys: u32,
    /// b, h: tasks x calls per task, over `shared_keys` keys or `keys_per_task` each.
    pub tasks: usize,
    pub calls_per_task: usize,
    pub shared_keys: u32,
    pub keys_per_task: u32,
    /// c: distinct cold keys.
    pub misses: u32,
    /// d: concurrent calls on one cold key.
    pub stampede: usize,
    /// f: keys of the user cleared, and other keys in the database.
    pub user_keys: usize,
    pub other_keys: u64,
    /// i: keys of the namespace cleared.
    pub bulk_keys: usize,
    /// j: size of the large values, tasks fetching them, small-hit tasks and their calls,
    /// sequential large hits.
    pub large_len: u32,
    pub large_fetchers: usize,
    pub small_tasks: usize,
    pub small_calls: usize,
    pub large_hits: usize,
}

impl Sizes {
    /// Ids every hit row reads: warmed once on each side before any hit is timed.
    pub fn hot_span(&self) -> u32 {
        let disjoint = u32::try_from(self.tasks).unwrap_or(u32::MAX) * self.keys_per_task;
        self.seq_keys.max(self.shared_keys).max(disjoint)
    }
}

pub const FULL: Sizes = Sizes {
    mode: "full",
    rounds: 3,
    seq_calls: 20_000,
    seq_keys: 100,
    tasks: 64,
    calls_per_task: 2_000,
    shared_keys: 1_000,
    keys_per_task: 100,
    misses: 5_000,
    stampede: 64,
    user_keys: 100,
    other_keys: 1_000_000,
    bulk_keys: 100_000,
    large_len: 10 * 1024 * 1024,
    large_fetchers: 4,
    small_tasks: 8,
    small_calls: 250,
    large_hits: 20,
};

pub const SMOKE: Sizes = Sizes {
    mode: "smoke",
    rounds: 1,
    seq_calls: 400,
    seq_keys: 100,
    tasks: 16,
    calls_per_task: 50,
    shared_keys: 100,
    keys_per_task: 10,
    misses: 100,
    stampede: 64,
    user_keys: 100,
    other_keys: 10_000,
    bulk_keys: 2_000,
    large_len: 256 * 1024,
    large_fetchers: 4,
    small_tasks: 8,
    small_calls: 50,
    large_hits: 3,
};

/// Runs blocking set-up (the harness starts servers synchronously) off the runtime's
/// workers; a panic of the harness becomes an error.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("{what}: {e}"))
}

/// A cache on `url` (`l1`: with an L1), connected, and checked to be in `mode`
/// (`standalone` or `cluster`).
pub async fn connected_cache(url: &str, l1: bool, mode: &str) -> Result<Cache, String> {
    configured_cache(CacheConfig::builder().url(url).l1(l1), mode).await
}

/// A cache on the standalone server at `url` with read batching off
/// (`REDIS_BATCH_READS=false`), for the row that measures what batching gives.
pub async fn unbatched_cache(url: &str) -> Result<Cache, String> {
    configured_cache(
        CacheConfig::builder().url(url).batch_reads(false),
        "standalone",
    )
    .await
}

/// A cache like the global one (uncompressed) with large values read whole
/// (`REDIS_READ_RANGE=0`), for the row that measures what ranged reads give.
pub async fn whole_reads_cache(url: &str) -> Result<Cache, String> {
    configured_cache(
        CacheConfig::builder()
            .url(url)
            .compress_above(0)
            .read_range(0),
        "standalone",
    )
    .await
}

async fn configured_cache(builder: CacheConfigBuilder, mode: &str) -> Result<Cache, String> {
    let config = builder
        .build()
        .map_err(|e| format!("cache configuration: {e}"))?;
    let cache = Cache::new(config).map_err(|e| format!("cache: {e}"))?;
    checked(cache, mode).await
}

/// `cache` connected and in `mode`.
pub async fn checked(cache: Cache, mode: &str) -> Result<Cache, String> {
    cache
        .connect()
        .await
        .map_err(|e| format!("connecting the cache: {e}"))?;
    let health = cache.health().await;
    let got = health.info.server.mode.as_deref().unwrap_or("unknown");
    if got != mode || health.status != "healthy" {
        return Err(format!(
            "the cache is {} in mode {got}, expected healthy in mode {mode} ({})",
            health.status,
            health.error.as_deref().unwrap_or("no error")
        ));
    }
    Ok(cache)
}

/// Response timeout of the baseline's connection: our default `REDIS_SOCKET_TIMEOUT`.
pub const BASELINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Response timeout of set-up connections (DEBUG POPULATE of a million keys takes seconds).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A raw connection to `url`, each response awaited up to `timeout`.
pub async fn raw_connection(
    url: &str,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis client: {e}"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("raw connection to {url}: {e}"))
}

/// `DBSIZE` of one server.
pub async fn dbsize(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, String> {
    redis::cmd("DBSIZE")
        .query_async(conn)
        .await
        .map_err(|e| format!("DBSIZE: {e}"))
}

/// The standalone server, its global cache (default configuration) and the baseline.
pub struct Bench {
    pub sizes: &'static Sizes,
    pub url: String,
    pub cache: Cache,
    pub raw: Raw,
    /// A connection for set-up and checks, not the baseline's.
    pub admin: redis::aio::MultiplexedConnection,
    _server: RedisServer,
}

impl Bench {
    pub async fn start(sizes: &'static Sizes) -> Result<Self, String> {
        let server = blocking("starting redis-server", RedisServer::plain).await?;
        let url = server.url();
        // Uncompressed: rows j move synthetic periodic values, which LZ4 would shrink to
        // nothing; compression has its own row (l), on a realistic value.
        let config = CacheConfig::builder()
            .url(&url)
            .compress_above(0)
            .build()
            .map_err(|e| format!("cache configuration: {e}"))?;
        let cache = cache_runtime::init(config).map_err(|e| format!("global cache: {e}"))?;
        let cache = checked(cache, "standalone").await?;
        Ok(Self {
            sizes,
            raw: Raw::new(raw_connection(&url, BASELINE_TIMEOUT).await?),
            admin: raw_connection(&url, ADMIN_TIMEOUT).await?,
            cache,
            url,
            _server: server,
        })
    }
}

/// What a row is judged against.
pub enum Goal {
    /// ratio <= x.
    RatioAtMost(f64),
    /// ratio >= x.
    RatioAtLeast(f64),
    /// Printed, not judged.
    Reported,
    /// A target of its own: its text and whether it is met.
    Own(String, bool),
}

/// One line of the table.
pub struct Row {
    pub measure: String,
    pub ours: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    /// `None`: not judged.
    pub met: Option<bool>,
    /// Why the measurement cannot be trusted; empty when it can.
    pub problems: Vec<String>,
}

impl Row {
    /// A throughput row: calls per second of ours and of the baseline, and their ratio.
    pub fn throughput(
        measure: impl Into<String>,
        ours: f64,
        baseline: f64,
        goal: Goal,
        problems: Vec<String>,
    ) -> Self {
        Self::new(
            measure,
            rate(ours),
            rate(baseline),
            Some(ours / baseline.max(1e-9)),
            goal,
            problems,
        )
    }

    pub fn new(
        measure: impl Into<String>,
        ours: String,
        baseline: String,
        ratio: Option<f64>,
        goal: Goal,
        problems: Vec<String>,
    ) -> Self {
        let (target, met) = match goal {
            Goal::RatioAtMost(x) => (format!("≤ {x:.2}x"), ratio.map(|r| r <= x)),
            Goal::RatioAtLeast(x) => (format!("≥ {x:.1}x"), ratio.map(|r| r >= x)),
            Goal::Reported => ("(reported)".to_owned(), None),
            Goal::Own(text, met) => (text, Some(met)),
        };
        Self {
            measure: measure.into(),
            ours,
            baseline,
            ratio,
            target,
            met,
            problems,
        }
    }
}

/// Microseconds: three decimals below 10 µs, one above.
pub fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.3} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// A ratio with three significant decimals, however small.
pub fn times(x: f64) -> String {
    if x >= 0.01 {
        format!("{x:.3}x")
    } else {
        format!("{x:.5}x")
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn rate(calls_per_s: f64) -> String {
    format!("{:.0}k calls/s", calls_per_s / 1e3)
}

/// `10 MB`, `256 KB` (binary units).
pub fn size(bytes: u32) -> String {
    if bytes >= 1 << 20 {
        format!("{} MB", bytes >> 20)
    } else {
        format!("{} KB", bytes >> 10)
    }
}

/// `a / b` of two durations.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-12)
}

/// `1,000,000`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let head = digits.len() % 3;
    let mut out = digits[..head].to_owned();
    for start in (head..digits.len()).step_by(3) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&digits[start..start + 3]);
    }
    out
}
