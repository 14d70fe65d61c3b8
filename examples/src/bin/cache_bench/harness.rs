//! The measurement harness: a side (ours or the baseline) is a closure making one checked
//! call; `interleaved` times two sides call by call, `concurrent` runs one side on many
//! tasks, `alternate` alternates rounds of two; a `Ledger` checks what a phase did (bodies
//! run, counters, health), so a row can never silently measure something else.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_runtime::{with_cache, Cache};
use tokio::task::JoinHandle;

use crate::workload::{OURS, RAW};

/// What one call returns: `Err` when it failed or returned the wrong value.
pub type Outcome = Result<(), String>;

/// One checked call of a side, for key `id`: a cloneable closure returning a `'static`
/// future (so the same closure drives sequential loops and spawned tasks).
pub trait Call: Clone + Send + Sync + 'static {
    type Fut: Future<Output = Outcome> + Send + 'static;
    fn call(&self, id: u32) -> Self::Fut;
}

impl<F, Fut> Call for F
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    type Fut = Fut;
    fn call(&self, id: u32) -> Fut {
        self(id)
    }
}

/// A side of a comparison: its calls, and the cache its decorated calls use (`None`: the
/// global cache, or no cache at all for the baseline).
#[derive(Clone)]
pub struct Side<C> {
    pub name: &'static str,
    scope: Option<Cache>,
    call: C,
}

impl<C: Call> Side<C> {
    /// Calls through the global cache (or no cache: the baseline).
    pub fn global(name: &'static str, call: C) -> Self {
        Self {
            name,
            scope: None,
            call,
        }
    }

    /// Calls through `cache` (`with_cache`).
    pub fn on(name: &'static str, cache: &Cache, call: C) -> Self {
        Self {
            name,
            scope: Some(cache.clone()),
            call,
        }
    }

    /// One call, in this side's cache (a scope per call: for interleaving two caches).
    async fn once(&self, id: u32) -> Outcome {
        let call = self.call.call(id);
        match &self.scope {
            Some(cache) => with_cache(cache.clone(), call).await,
            None => call.await,
        }
    }

    /// A whole loop in this side's cache (one scope per task).
    async fn within<F: Future>(&self, f: F) -> F::Output {
        match &self.scope {
            Some(cache) => with_cache(cache.clone(), f).await,
            None => f.await,
        }
    }
}

/// Latencies and failures of a set of calls.
#[derive(Default)]
pub struct Samples {
    times: Vec<Duration>,
    sorted: bool,
    failed: u64,
    first_failure: Option<String>,
}

/// Percentiles and mean of [`Samples`].
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl Samples {
    fn with_capacity(n: usize) -> Self {
        Self {
            times: Vec::with_capacity(n.min(1 << 20)),
            ..Self::default()
        }
    }

    async fn time(&mut self, call: impl Future<Output = Outcome>) {
        let start = Instant::now();
        let outcome = call.await;
        self.times.push(start.elapsed());
        if let Err(e) = outcome {
            self.failed += 1;
            self.first_failure.get_or_insert(e);
        }
    }

    fn merge(&mut self, other: Samples) {
        self.times.extend(other.times);
        self.sorted = false;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    pub fn calls(&self) -> u64 {
        self.times.len() as u64
    }

    /// p50, p99 and mean (all zero without samples: [`Self::problems`] reports that).
    pub fn stats(&mut self) -> Stats {
        if !self.sorted {
            self.times.sort_unstable();
            self.sorted = true;
        }
        let at = |p: f64| {
            let last = self.times.len().saturating_sub(1);
            let i = ((last as f64) * p).round() as usize;
            self.times.get(i.min(last)).copied().unwrap_or_default()
        };
        let total: Duration = self.times.iter().sum();
        Stats {
            p50: at(0.50),
            p99: at(0.99),
            mean: total / u32::try_from(self.times.len().max(1)).unwrap_or(u32::MAX),
        }
    }

    /// Why these samples cannot be trusted, if they cannot.
    pub fn problems(&self, side: &str, out: &mut Vec<String>) {
        if self.times.is_empty() {
            out.push(format!("{side}: no call was measured"));
        }
        if self.failed > 0 {
            out.push(format!(
                "{side}: {} of {} calls failed, first: {}",
                self.failed,
                self.times.len(),
                self.first_failure.as_deref().unwrap_or("?")
            ));
        }
    }
}

/// Which key task `task` of `tasks` reads at step `step`.
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// Every task reads key `step % keys`: the same key at the same moment.
    Lockstep { keys: u32 },
    /// The same keys, task `t` starting at `t * keys / tasks`.
    Offset { keys: u32 },
    /// Task `t` reads only its own keys `t * per_task ..`.
    Disjoint { per_task: u32 },
    /// Always this id.
    Fixed(u32),
}

impl Pattern {
    pub fn id(self, task: usize, tasks: usize, step: usize) -> u32 {
        let id = match self {
            Self::Lockstep { keys } => step % keys as usize,
            Self::Offset { keys } => {
                let keys = keys as usize;
                (task * keys / tasks.max(1) + step) % keys
            }
            Self::Disjoint { per_task } => {
                let per_task = per_task as usize;
                task * per_task + step % per_task
            }
            Self::Fixed(id) => id as usize,
        };
        u32::try_from(id).unwrap_or(u32::MAX)
    }
}

/// `tasks` tasks making `calls` calls each along `pattern`.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub tasks: usize,
    pub calls: usize,
    pub pattern: Pattern,
}

/// One timed run of a load.
pub struct Run {
    pub elapsed: Duration,
    pub samples: Samples,
}

impl Run {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.samples.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Times two sides call by call on the same ids, alternating which goes first, so both see
/// the same machine noise.
async fn interleaved<A: Call, B: Call>(
    a: &Side<A>,
    b: &Side<B>,
    ids: impl IntoIterator<Item = u32>,
) -> (Samples, Samples) {
    let (mut sa, mut sb) = (Samples::default(), Samples::default());
    for (i, id) in ids.into_iter().enumerate() {
        if i % 2 == 0 {
            sa.time(a.once(id)).await;
            sb.time(b.once(id)).await;
        } else {
            sb.time(b.once(id)).await;
            sa.time(a.once(id)).await;
        }
    }
    (sa, sb)
}

/// The tasks of a load; each stops early when `stop` is set.
fn spawn_load<C: Call>(
    side: &Side<C>,
    load: Load,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Samples>> {
    (0..load.tasks)
        .map(|task| {
            let side = side.clone();
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut samples = Samples::with_capacity(load.calls);
                side.within(async {
                    for step in 0..load.calls {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = load.pattern.id(task, load.tasks, step);
                        samples.time(side.call.call(id)).await;
                    }
                })
                .await;
                samples
            })
        })
        .collect()
}

async fn join(name: &str, tasks: Vec<JoinHandle<Samples>>) -> Result<Samples, String> {
    let mut all = Samples::default();
    for task in tasks {
        let samples = task
            .await
            .map_err(|e| format!("a task of {name} failed: {e}"))?;
        all.merge(samples);
    }
    Ok(all)
}

/// Runs `load` on `side` and times the whole.
pub async fn concurrent<C: Call>(side: &Side<C>, load: Load) -> Result<Run, String> {
    let never = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks = spawn_load(side, load, &never);
    let samples = join(side.name, tasks).await?;
    Ok(Run {
        elapsed: start.elapsed(),
        samples,
    })
}

/// A load running until [`Background::stop`].
pub struct Background {
    name: &'static str,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Samples>>,
}

/// Starts `tasks` tasks calling `side` for `id` over and over.
pub fn background<C: Call>(side: &Side<C>, tasks: usize, id: u32) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        tasks,
        calls: usize::MAX,
        pattern: Pattern::Fixed(id),
    };
    Background {
        name: side.name,
        tasks: spawn_load(side, load, &stop),
        stop,
    }
}

impl Background {
    /// Stops the load (each task finishes its call in progress) and returns its samples.
    pub async fn stop(self) -> Result<Samples, String> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.name, self.tasks).await
    }
}

/// `rounds` rounds of `a` then `b` (at least one), so machine noise hits both; the results
/// of each side in order.
pub async fn alternate<TA, TB, FA, FB, RA, RB>(
    rounds: usize,
    mut a: FA,
    mut b: FB,
) -> Result<(Vec<TA>, Vec<TB>), String>
where
    FA: FnMut() -> RA,
    FB: FnMut() -> RB,
    RA: Future<Output = Result<TA, String>>,
    RB: Future<Output = Result<TB, String>>,
{
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        out_a.push(a().await?);
        out_b.push(b().await?);
    }
    Ok((out_a, out_b))
}

/// The best throughput of a set of runs.
fn best_rate(runs: &[Run]) -> f64 {
    runs.iter().map(Run::rate).fold(0.0, f64::max)
}

/// The best (lowest) p99 of a set of runs.
pub fn best_p99(runs: &mut [Run]) -> Duration {
    runs.iter_mut()
        .map(|r| r.samples.stats().p99)
        .min()
        .unwrap_or_default()
}

/// Calls made and why the runs cannot be trusted, if they cannot.
pub fn runs_problems(side: &str, runs: &[Run], out: &mut Vec<String>) -> u64 {
    for run in runs {
        run.samples.problems(side, out);
    }
    runs.iter().map(|r| r.samples.calls()).sum()
}

/// Counters of a cache summed over its namespaces.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    hits: u64,
    misses: u64,
    stores: u64,
    errors: u64,
    l1_hits: u64,
}

fn totals(cache: &Cache) -> Totals {
    cache
        .counters()
        .values()
        .fold(Totals::default(), |t, c| Totals {
            hits: t.hits + c.hits,
            misses: t.misses + c.misses,
            stores: t.stores + c.stores,
            errors: t.errors + c.errors,
            l1_hits: t.l1_hits + c.l1_hits,
        })
}

fn ours_bodies() -> u64 {
    OURS.iter().map(|b| b.runs()).sum()
}

/// What a phase must have done; `None` is not checked. Errors must always stay at 0.
/// Counter expectations apply to each cache of the [`Ledger`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    pub hits: Option<u64>,
    pub misses: Option<u64>,
    pub stores: Option<u64>,
    pub l1_hits: Option<u64>,
    pub ours_bodies: Option<u64>,
    pub raw_bodies: Option<u64>,
}

impl Expect {
    /// `calls` hits on each cache, nothing else: no body ran on either side.
    pub fn hits(calls: u64) -> Self {
        Self {
            hits: Some(calls),
            misses: Some(0),
            stores: Some(0),
            l1_hits: None,
            ours_bodies: Some(0),
            raw_bodies: Some(0),
        }
    }

    /// `calls` misses on the cache, each running and storing the body; `raw` baseline bodies.
    pub fn misses(calls: u64, raw: u64) -> Self {
        Self {
            hits: Some(0),
            misses: Some(calls),
            stores: Some(calls),
            l1_hits: None,
            ours_bodies: Some(calls),
            raw_bodies: Some(raw),
        }
    }

    /// No errors, a closed circuit, a healthy server; nothing counted.
    pub fn healthy() -> Self {
        Self::default()
    }
}

/// Bodies run during a phase.
#[derive(Clone, Copy, Debug)]
pub struct Delta {
    pub ours_bodies: u64,
    pub raw_bodies: u64,
}

/// The state before a phase, to check what the phase did.
pub struct Ledger {
    caches: Vec<(&'static str, Cache, Totals)>,
    ours: u64,
    raw: u64,
}

fn expect_eq(out: &mut Vec<String>, what: &str, got: u64, want: Option<u64>) {
    if let Some(want) = want {
        if got != want {
            out.push(format!("{what}: {got}, expected {want}"));
        }
    }
}

impl Ledger {
    pub fn open(caches: &[(&'static str, &Cache)]) -> Self {
        Self {
            caches: caches
                .iter()
                .map(|(name, cache)| (*name, (*cache).clone(), totals(cache)))
                .collect(),
            ours: ours_bodies(),
            raw: RAW.runs(),
        }
    }

    /// Checks the phase against `expect`, adding what is wrong to `out`.
    pub async fn close(self, expect: Expect, out: &mut Vec<String>) -> Delta {
        let delta = Delta {
            ours_bodies: ours_bodies() - self.ours,
            raw_bodies: RAW.runs() - self.raw,
        };
        if expect.ours_bodies.is_some_and(|n| n != delta.ours_bodies) {
            let ran: Vec<String> = OURS
                .iter()
                .map(|b| format!("{} {}", b.name, b.runs()))
                .collect();
            out.push(format!(
                "ours: bodies ran {} times, expected {} (totals so far: {})",
                delta.ours_bodies,
                expect.ours_bodies.unwrap_or_default(),
                ran.join(", ")
            ));
        }
        expect_eq(
            out,
            "baseline: bodies ran",
            delta.raw_bodies,
            expect.raw_bodies,
        );
        for (name, cache, before) in self.caches {
            let now = totals(&cache);
            let d = |f: fn(&Totals) -> u64| f(&now).saturating_sub(f(&before));
            expect_eq(out, &format!("{name}: hits"), d(|t| t.hits), expect.hits);
            expect_eq(
                out,
                &format!("{name}: misses"),
                d(|t| t.misses),
                expect.misses,
            );
            expect_eq(
                out,
                &format!("{name}: stores"),
                d(|t| t.stores),
                expect.stores,
            );
            expect_eq(
                out,
                &format!("{name}: L1 hits"),
                d(|t| t.l1_hits),
                expect.l1_hits,
            );
            expect_eq(out, &format!("{name}: errors"), d(|t| t.errors), Some(0));
            let health = cache.health().await;
            if health.circuit_open {
                out.push(format!("{name}: the circuit breaker is open"));
            }
            if health.status != "healthy" {
                out.push(format!(
                    "{name}: health is {}: {}",
                    health.status,
                    health.error.as_deref().unwrap_or("no reason given")
                ));
            }
        }
        delta
    }
}

/// What a checked phase measured, what is wrong with it, and the bodies it ran.
pub struct Checked<T> {
    pub value: T,
    pub problems: Vec<String>,
    pub bodies: Delta,
}

impl<T> Checked<T> {
    /// The value of a set-up phase, which must be flawless.
    pub fn setup(self, what: &str) -> Result<T, String> {
        if self.problems.is_empty() {
            Ok(self.value)
        } else {
            Err(format!("{what} failed: {}", self.problems.join("; ")))
        }
    }
}

/// [`interleaved`], checked on `caches` against `expect`.
pub async fn sequential_pair<A: Call, B: Call>(
    caches: &[(&'static str, &Cache)],
    a: &Side<A>,
    b: &Side<B>,
    ids: impl IntoIterator<Item = u32>,
    expect: Expect,
) -> Checked<(Samples, Samples)> {
    let ledger = Ledger::open(caches);
    let (sa, sb) = interleaved(a, b, ids).await;
    let mut problems = Vec::new();
    sa.problems(a.name, &mut problems);
    sb.problems(b.name, &mut problems);
    let bodies = ledger.close(expect, &mut problems).await;
    Checked {
        value: (sa, sb),
        problems,
        bodies,
    }
}

/// [`concurrent`] on one side, checked on `caches` against `expect` (`None`: every call
/// is a hit).
pub async fn solo<C: Call>(
    caches: &[(&'static str, &Cache)],
    side: &Side<C>,
    load: Load,
    expect: Option<Expect>,
) -> Result<Checked<Run>, String> {
    let ledger = Ledger::open(caches);
    let run = concurrent(side, load).await?;
    let mut problems = Vec::new();
    run.samples.problems(side.name, &mut problems);
    let expect = expect.unwrap_or(Expect::hits(run.samples.calls()));
    let bodies = ledger.close(expect, &mut problems).await;
    Ok(Checked {
        value: run,
        problems,
        bodies,
    })
}

/// Best throughput of each side over `rounds` alternated rounds of `load`, every call a
/// hit (each cache of `caches` serves one side; the baseline none).
pub async fn throughput_pair<A: Call, B: Call>(
    caches: &[(&'static str, &Cache)],
    a: &Side<A>,
    b: &Side<B>,
    load: Load,
    rounds: usize,
) -> Result<Checked<(f64, f64)>, String> {
    let ledger = Ledger::open(caches);
    let (ra, rb) = alternate(rounds, || concurrent(a, load), || concurrent(b, load)).await?;
    let mut problems = Vec::new();
    let calls = runs_problems(a.name, &ra, &mut problems);
    runs_problems(b.name, &rb, &mut problems);
    let bodies = ledger.close(Expect::hits(calls), &mut problems).await;
    Ok(Checked {
        value: (best_rate(&ra), best_rate(&rb)),
        problems,
        bodies,
    })
}
