//! Behaviour of `#[cache_result]` and `#[cache_user_specific]` against the embedded store.
//!
//! Every test uses its own functions (the global cache is shared by the tests of this
//! binary, which run concurrently), and `init` runs once with the default configuration
//! (embedded store), so the environment (REDIS_URL) never matters here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Once;
use std::time::{Duration, Instant};

use cache_runtime::{cache_result, cache_user_specific, CacheConfig, CacheError};
use serde::{Deserialize, Serialize};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match cache_runtime::init(CacheConfig::default()) {
        Ok(_) | Err(CacheError::AlreadyInitialized) => {}
        Err(e) => panic!("cannot set up the embedded cache: {e}"),
    });
}

// ---------------------------------------------------------------- hit and miss

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 60, namespace = "analytics")]
async fn square(x: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, SeqCst);
    x * x
}

#[tokio::test]
async fn second_identical_call_is_a_hit_and_other_arguments_miss() {
    setup();
    assert_eq!(square(3).await, 9);
    assert_eq!(square(3).await, 9);
    assert_eq!(
        SQUARE_RUNS.load(SeqCst),
        1,
        "the second identical call must be served from the cache"
    );
    assert_eq!(square(4).await, 16);
    assert_eq!(
        SQUARE_RUNS.load(SeqCst),
        2,
        "other arguments are another entry"
    );
    assert_eq!(square(4).await, 16);
    assert_eq!(SQUARE_RUNS.load(SeqCst), 2);
}

// ---------------------------------------------------------------- Result / Option

static FALLIBLE_RUNS: AtomicUsize = AtomicUsize::new(0);
static FALLIBLE_FAILS: AtomicBool = AtomicBool::new(true);

#[cache_result(ttl = "1h")]
async fn fallible(id: u32) -> Result<String, String> {
    FALLIBLE_RUNS.fetch_add(1, SeqCst);
    if FALLIBLE_FAILS.load(SeqCst) {
        return Err("database down".to_owned());
    }
    let doubled: u32 = format!("{}", id * 2)
        .parse()
        .map_err(|_| "unreachable".to_owned())?;
    Ok(format!("row {doubled}"))
}

#[tokio::test]
async fn err_is_not_cached_ok_is() {
    setup();
    assert!(fallible(1).await.is_err());
    assert!(fallible(1).await.is_err());
    assert_eq!(FALLIBLE_RUNS.load(SeqCst), 2, "an Err must never be cached");
    FALLIBLE_FAILS.store(false, SeqCst);
    assert_eq!(fallible(1).await.as_deref(), Ok("row 2"));
    FALLIBLE_FAILS.store(true, SeqCst);
    assert_eq!(
        fallible(1).await.as_deref(),
        Ok("row 2"),
        "the Ok is served from the cache"
    );
    assert_eq!(FALLIBLE_RUNS.load(SeqCst), 3);
}

static ANYHOW_LIKE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// `Result<T>` aliases (`io::Result<T>`, `anyhow::Result<T>`) infer the error type.
#[cache_result]
async fn read_len(path: &str) -> std::io::Result<usize> {
    ANYHOW_LIKE_RUNS.fetch_add(1, SeqCst);
    if path.is_empty() {
        return Err(std::io::Error::other("empty path"));
    }
    Ok(path.len())
}

#[tokio::test]
async fn result_alias_works() {
    setup();
    assert_eq!(read_len("abc").await.ok(), Some(3));
    assert_eq!(read_len("abc").await.ok(), Some(3));
    assert!(read_len("").await.is_err());
    assert_eq!(ANYHOW_LIKE_RUNS.load(SeqCst), 2);
}

static MAYBE_RUNS: AtomicUsize = AtomicUsize::new(0);
static MAYBE_NONE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result]
async fn maybe(id: u32) -> Option<u32> {
    MAYBE_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id / 2)
}

#[cache_result(cache_none = true)]
async fn maybe_cache_none(id: u32) -> Option<u32> {
    MAYBE_NONE_RUNS.fetch_add(1, SeqCst);
    (id % 2 == 0).then_some(id / 2)
}

#[tokio::test]
async fn none_is_not_cached_unless_cache_none() {
    setup();
    assert_eq!(maybe(1).await, None);
    assert_eq!(maybe(1).await, None);
    assert_eq!(MAYBE_RUNS.load(SeqCst), 2, "None is not cached by default");
    assert_eq!(maybe(2).await, Some(1));
    assert_eq!(maybe(2).await, Some(1));
    assert_eq!(MAYBE_RUNS.load(SeqCst), 3, "Some is cached");

    assert_eq!(maybe_cache_none(1).await, None);
    assert_eq!(maybe_cache_none(1).await, None);
    assert_eq!(
        MAYBE_NONE_RUNS.load(SeqCst),
        1,
        "cache_none = true caches None"
    );
    assert_eq!(maybe_cache_none(2).await, Some(1));
    assert_eq!(maybe_cache_none(2).await, Some(1));
    assert_eq!(MAYBE_NONE_RUNS.load(SeqCst), 2);
}

// ---------------------------------------------------------------- no collisions

#[cache_result(namespace = "collide")]
async fn first(x: u32) -> String {
    format!("first {x}")
}

#[cache_result(namespace = "collide")]
async fn second(x: u32) -> String {
    format!("second {x}")
}

static JOIN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "collide")]
async fn join(a: &str, b: &str) -> String {
    JOIN_RUNS.fetch_add(1, SeqCst);
    format!("{a}|{b}")
}

#[tokio::test]
async fn functions_and_argument_boundaries_never_collide() {
    setup();
    assert_eq!(first(1).await, "first 1");
    assert_eq!(second(1).await, "second 1");
    assert_eq!(first(1).await, "first 1");
    assert_ne!(first_cache_key(&1), second_cache_key(&1));

    assert_eq!(join("a:b", "c").await, "a:b|c");
    assert_eq!(join("a", "b:c").await, "a|b:c");
    assert_eq!(JOIN_RUNS.load(SeqCst), 2);
    assert_ne!(join_cache_key("a:b", "c"), join_cache_key("a", "b:c"));
    assert_ne!(join_cache_key("ab", ""), join_cache_key("a", "b"));
}

// Generic functions: each instantiation is its own entry.
#[cache_result(namespace = "collide")]
async fn describe<T: Serialize + Send + std::fmt::Debug>(value: T) -> String {
    format!("{} {value:?}", std::any::type_name::<T>())
}

#[tokio::test]
async fn generic_instantiations_never_collide() {
    setup();
    assert_eq!(describe(1_u32).await, "u32 1");
    assert_eq!(describe(1_u64).await, "u64 1");
    assert_eq!(describe(1_u32).await, "u32 1");
    assert_ne!(describe_cache_key(&1_u32), describe_cache_key(&1_u64));
}

// ---------------------------------------------------------------- version bump

mod bump {
    use super::*;

    pub(super) static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[cache_result(namespace = "versions", version = 2)]
    pub(super) async fn lookup(x: u32) -> u32 {
        RUNS.fetch_add(1, SeqCst);
        x + 1000
    }

    /// What the macro generated for `lookup` before the bump: the same function path and
    /// signature, `version = 1`. (The equality of keys below proves the simulation is
    /// faithful: with version 2 this site renders exactly the macro's key.)
    pub(super) fn site(version: u32) -> &'static cache_runtime::__private::Site {
        Box::leak(Box::new(cache_runtime::__private::Site::new(
            "versions",
            concat!(module_path!(), "::lookup"),
            version,
            "cache_result;value;(x:u32)->u32",
            0,
        )))
    }
}

fn key_of_site(
    site: &'static cache_runtime::__private::Site,
    x: u32,
) -> cache_runtime::__private::CallKey {
    let mut k = cache_runtime::__private::KeyBuilder::new::<u32>(site);
    k.arg(&x);
    k.finish()
}

#[tokio::test]
async fn version_bump_never_reads_old_values() {
    setup();
    let (old, new) = (bump::site(1), bump::site(2));
    assert_eq!(
        cache_runtime::__private::key_of(new, &key_of_site(new, 7)),
        bump::lookup_cache_key(&7),
        "the hand-made site must render the macro's key"
    );
    // The old release stored a value for lookup(7).
    let stored =
        cache_runtime::__private::cached_value(old, key_of_site(old, 7), None, async { 1u32 })
            .await;
    assert_eq!(stored, 1);
    assert_eq!(
        cache_runtime::__private::cached_value(old, key_of_site(old, 7), None, async { 2u32 })
            .await,
        1
    );
    // The new release never sees it.
    assert_eq!(bump::lookup(7).await, 1007);
    assert_eq!(bump::RUNS.load(SeqCst), 1);
    let new_key = bump::lookup_cache_key(&7).unwrap_or_default();
    assert!(new_key.contains("::bump::lookup:v2:"), "{new_key}");
}

// ---------------------------------------------------------------- single flight

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "flight")]
async fn slow(x: u32) -> u32 {
    SLOW_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    x * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_on_a_cold_key_run_the_body_once() {
    setup();
    let tasks: Vec<_> = (0..64).map(|_| tokio::spawn(slow(5))).collect();
    for task in tasks {
        assert_eq!(task.await.ok(), Some(50));
    }
    assert_eq!(SLOW_RUNS.load(SeqCst), 1);
}

static PANIC_NEXT: AtomicBool = AtomicBool::new(true);
static PANICKY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "flight")]
async fn panicky(x: u32) -> u32 {
    PANICKY_RUNS.fetch_add(1, SeqCst);
    assert!(!PANIC_NEXT.swap(false, SeqCst), "first call panics");
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_does_not_poison_the_key() {
    setup();
    let crashed = tokio::spawn(panicky(9)).await;
    assert!(crashed.is_err_and(|e| e.is_panic()));
    assert_eq!(panicky(9).await, 9);
    assert_eq!(panicky(9).await, 9);
    assert_eq!(
        PANICKY_RUNS.load(SeqCst),
        2,
        "the call after the panic runs and caches"
    );
}

static LEADER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "flight")]
async fn leader_fails(x: u32) -> Result<u32, String> {
    let run = LEADER_RUNS.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if run == 0 {
        Err("leader failed".to_owned())
    } else {
        Ok(x)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_err_in_the_leader_lets_followers_run() {
    setup();
    let tasks: Vec<_> = (0..8).map(|_| tokio::spawn(leader_fails(3))).collect();
    let mut errs = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(v)) => assert_eq!(v, 3),
            Ok(Err(_)) => errs += 1,
            Err(e) => panic!("task failed: {e}"),
        }
    }
    assert_eq!(errs, 1, "only the leader's own call sees its Err");
    assert!(
        LEADER_RUNS.load(SeqCst) >= 2,
        "followers ran the body themselves"
    );
}

// ---------------------------------------------------------------- companions

static PRICE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(namespace = "trading", ttl = "15m")]
async fn price(symbol: &str, venue: String) -> f64 {
    PRICE_RUNS.fetch_add(1, SeqCst);
    #[allow(clippy::cast_precision_loss)]
    let p = (symbol.len() + venue.len()) as f64;
    p
}

#[tokio::test]
async fn invalidation_companion_removes_one_entry() {
    setup();
    let venue = "NASDAQ".to_owned();
    assert!((price("AAPL", venue.clone()).await - 10.0).abs() < f64::EPSILON);
    assert!((price("MSFT", venue.clone()).await - 10.0).abs() < f64::EPSILON);
    let _ = price("AAPL", venue.clone()).await;
    assert_eq!(PRICE_RUNS.load(SeqCst), 2);

    assert!(matches!(price_invalidate("AAPL", &venue).await, Ok(true)));
    assert!(
        matches!(price_invalidate("AAPL", &venue).await, Ok(false)),
        "nothing left to remove"
    );
    let _ = price("AAPL", venue.clone()).await;
    assert_eq!(
        PRICE_RUNS.load(SeqCst),
        3,
        "the invalidated entry is computed again"
    );
    let _ = price("MSFT", venue.clone()).await;
    assert_eq!(PRICE_RUNS.load(SeqCst), 3, "other entries are untouched");
}

// ---------------------------------------------------------------- user-specific

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    user: String,
    kind: String,
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_user_specific(ttl = 1800, data_type = "reports")]
async fn generate_user_report(user_id: &str, report_type: &str) -> Report {
    REPORT_RUNS.fetch_add(1, SeqCst);
    Report {
        user: user_id.to_owned(),
        kind: report_type.to_owned(),
    }
}

#[cache_user_specific(data_type = "summaries", namespace = "ai", user = owner)]
async fn summary(owner: u64, topic: String) -> String {
    format!("{owner}:{topic}")
}

#[tokio::test]
async fn user_specific_keys_carry_the_user_segment() {
    setup();
    let r = generate_user_report("123", "weekly").await;
    assert_eq!(
        r,
        Report {
            user: "123".into(),
            kind: "weekly".into()
        }
    );
    let _ = generate_user_report("123", "weekly").await;
    let _ = generate_user_report("456", "weekly").await;
    assert_eq!(REPORT_RUNS.load(SeqCst), 2, "one entry per user");

    let key = generate_user_report_cache_key("123", "weekly").unwrap_or_default();
    assert!(key.starts_with("tradistry:users:{user:123}:"), "{key}");
    assert!(key.contains("::generate_user_report:v1:"), "{key}");
    let hostile = generate_user_report_cache_key("a:b*", "weekly").unwrap_or_default();
    assert!(
        hostile.starts_with("tradistry:users:{user:a%3Ab%2A}:"),
        "the user id is escaped: {hostile}"
    );

    assert_eq!(summary(7, "rust".into()).await, "7:rust");
    let key = summary_cache_key(&7, &"rust".to_owned()).unwrap_or_default();
    assert!(key.starts_with("tradistry:ai:{user:7}:"), "{key}");
    assert!(matches!(
        summary_invalidate(&7, &"rust".to_owned()).await,
        Ok(true)
    ));
}

// ---------------------------------------------------------------- methods

#[derive(Serialize)]
struct Repo {
    shard: u32,
}

static REPO_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Repo {
    #[cache_result(namespace = "repo", include(self))]
    async fn by_shard(&self, id: u32) -> String {
        REPO_RUNS.fetch_add(1, SeqCst);
        format!("{}/{id}", self.shard)
    }

    #[cache_result(namespace = "repo", skip(self), companions = true)]
    async fn shared(&self, id: u32) -> String {
        REPO_RUNS.fetch_add(1, SeqCst);
        format!("{}/{id}", self.shard)
    }
}

#[tokio::test]
async fn methods_include_or_skip_self() {
    setup();
    let (a, b) = (Repo { shard: 1 }, Repo { shard: 2 });
    assert_eq!(a.by_shard(5).await, "1/5");
    assert_eq!(
        b.by_shard(5).await,
        "2/5",
        "include(self): another receiver is another entry"
    );
    assert_eq!(a.by_shard(5).await, "1/5");
    assert_eq!(REPO_RUNS.load(SeqCst), 2);
    assert_eq!(a.shared(5).await, "1/5");
    assert_eq!(
        b.shared(5).await,
        "1/5",
        "skip(self): every receiver shares the entry"
    );
    assert_eq!(REPO_RUNS.load(SeqCst), 3);
    assert!(matches!(b.shared_invalidate(&5).await, Ok(true)));
    assert_eq!(b.shared(5).await, "2/5");
}

// ---------------------------------------------------------------- expiry

static EPHEMERAL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_result(ttl = 1, namespace = "expiry")]
async fn ephemeral(x: u32) -> u32 {
    EPHEMERAL_RUNS.fetch_add(1, SeqCst);
    x
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    setup();
    let started = Instant::now();
    assert_eq!(ephemeral(1).await, 1);
    assert_eq!(ephemeral(1).await, 1);
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(EPHEMERAL_RUNS.load(SeqCst), 1, "still fresh");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Real time: tolerate a slow machine by polling a little longer.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let before = EPHEMERAL_RUNS.load(SeqCst);
        assert_eq!(ephemeral(1).await, 1);
        if EPHEMERAL_RUNS.load(SeqCst) > before {
            break;
        }
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- golden key

mod golden {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(super) struct Metrics {
        pub(super) total: u64,
    }

    #[derive(Debug)]
    pub(super) struct DbError;

    #[cache_runtime::cache_result(ttl = 3600, namespace = "analytics")]
    pub(super) async fn metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
        Ok(Metrics {
            total: (user_id.len() + timeframe.len()) as u64,
        })
    }
}

/// Pinned: a change here changes every stored key of decorated functions (the key layout,
/// the signature fingerprint, or the argument hash). Bump deliberately, never by accident.
const GOLDEN_METRICS_KEY: &str =
    "tradistry:analytics:macro_behaviour::golden::metrics:v1:ed3b9b4ab4962a2593d1c3d4889c09b7";

#[tokio::test]
async fn golden_key_vector() {
    setup();
    assert_eq!(
        golden::metrics("user_123", "30d")
            .await
            .map(|m| m.total)
            .ok(),
        Some(11)
    );
    assert_eq!(
        golden::metrics_cache_key("user_123", "30d").as_deref(),
        Some(GOLDEN_METRICS_KEY)
    );
}

// ---------------------------------------------------------------- trait impls

#[async_trait::async_trait]
trait Loader {
    async fn load(&self, id: u32) -> Result<String, String>;
}

trait NativeLoader {
    async fn load_native(&self, id: u32) -> Option<String>;
}

struct Db;

static ASYNC_TRAIT_RUNS: AtomicUsize = AtomicUsize::new(0);
static NATIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[async_trait::async_trait]
impl Loader for Db {
    #[cache_result(skip(self), namespace = "traits")]
    async fn load(&self, id: u32) -> Result<String, String> {
        ASYNC_TRAIT_RUNS.fetch_add(1, SeqCst);
        if id == 0 {
            return Err("no row 0".to_owned());
        }
        Ok(format!("row {id}"))
    }
}

impl NativeLoader for Db {
    #[cache_result(skip(self), namespace = "traits")]
    async fn load_native(&self, id: u32) -> Option<String> {
        NATIVE_RUNS.fetch_add(1, SeqCst);
        Some(format!("row {id}"))
    }
}

#[tokio::test]
async fn trait_impl_methods_are_cached() {
    setup();
    assert_eq!(Db.load(1).await.as_deref(), Ok("row 1"));
    assert_eq!(Db.load(1).await.as_deref(), Ok("row 1"));
    assert!(Db.load(0).await.is_err());
    assert!(Db.load(0).await.is_err());
    assert_eq!(
        ASYNC_TRAIT_RUNS.load(SeqCst),
        3,
        "#[async_trait]: Ok cached, Err not"
    );

    assert_eq!(Db.load_native(1).await.as_deref(), Some("row 1"));
    assert_eq!(Db.load_native(1).await.as_deref(), Some("row 1"));
    assert_eq!(
        NATIVE_RUNS.load(SeqCst),
        1,
        "native async fn in a trait impl"
    );
}

mod invalidated_during_run {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use tokio::sync::Notify;

    pub(super) static SOURCE: AtomicU32 = AtomicU32::new(1);
    pub(super) static RUNS: AtomicUsize = AtomicUsize::new(0);
    /// The first run has read its source (a permit is stored for the test).
    pub(super) static FIRST_READ: Notify = Notify::const_new();
    /// Lets the first run finish.
    pub(super) static FIRST_MAY_FINISH: Notify = Notify::const_new();

    /// Reads its source of truth, then takes a while (as a database query would): the
    /// first run until the test lets it finish, later runs not at all.
    #[cache_result(namespace = "invalidation")]
    pub(super) async fn slow_read(x: u32) -> u32 {
        let v = SOURCE.load(SeqCst);
        if RUNS.fetch_add(1, SeqCst) == 0 {
            FIRST_READ.notify_one();
            FIRST_MAY_FINISH.notified().await;
        }
        v * 1000 + x
    }
}

/// An invalidation while a call is running ends that call's flight: a later call runs its
/// body (sees the new data) instead of joining it, and the old call does not store its
/// now stale result.
///
/// No sleeps: the old call is held inside its body (after reading the old data) until
/// the invalidation and the new call are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_running_call_is_not_undone_by_it() {
    use invalidated_during_run::{
        slow_read, slow_read_invalidate, FIRST_MAY_FINISH, FIRST_READ, RUNS, SOURCE,
    };
    setup();
    let old = tokio::spawn(slow_read(7));
    // The old call is inside its body and has read the old data.
    FIRST_READ.notified().await;
    SOURCE.store(2, SeqCst);
    assert_eq!(slow_read_invalidate(&7).await.ok(), Some(false));
    // Does not join the old flight (which would wait for the old call, held until below):
    // runs the body and reads the new data.
    let new = tokio::time::timeout(Duration::from_secs(10), slow_read(7)).await;
    assert_eq!(
        new.ok(),
        Some(2007),
        "a call after the invalidation joined the flight that predates it"
    );
    FIRST_MAY_FINISH.notify_one();
    assert_eq!(
        old.await.ok(),
        Some(1007),
        "the old caller still gets its own result"
    );
    assert_eq!(RUNS.load(SeqCst), 2);
    // The old flight did not overwrite the fresh entry with its stale value.
    assert_eq!(slow_read(7).await, 2007);
    assert_eq!(RUNS.load(SeqCst), 2, "the fresh entry is a hit");
}
