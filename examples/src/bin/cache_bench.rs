//! Side-by-side benchmark: `#[cache_result]` against a hand-written baseline on raw
//! redis-rs (one `MultiplexedConnection`; a hit is GET + bincode decode, a miss GET, body,
//! encode, SET EX; keys `format!`ted by hand), for the same function and value, against a
//! `redis-server` and a 3-primary Redis Cluster started here. Every figure is printed next
//! to its baseline from the same run, with the ratio, as a Markdown table on stdout;
//! diagnostics go to stderr.
//!
//! ```text
//! cargo run --release -p cache-examples --bin cache-bench            # full run
//! cargo run -p cache-examples --bin cache-bench -- --smoke           # every row, small (CI)
//! ```
//!
//! Every measurement is checked: each body (ours and the baseline's) counts its runs, and a
//! hit phase must run none, raise our hit counter by exactly its calls, count no error,
//! leave the circuit closed and the server healthy; every call's value is checked. A row
//! that fails a check is marked INVALID and the program exits with 1. Timing targets are
//! only reported (`met`: yes / NO): the machine is shared and noisy. Any failure while
//! setting up (a server, DEBUG POPULATE, SCAN, a configuration) stops the program.
//!
//! Marginal instructions per hit, with callgrind (the warm-up and start-up cancel out):
//!
//! ```text
//! cargo build --release -p cache-examples --bin cache-bench
//! for side in ours raw l1 harness; do for n in 2000 4000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$side.$n \
//!     target/release/cache-bench --profile $side --calls $n
//! done; done
//! callgrind_annotate /tmp/cg.ours.2000 | grep 'PROGRAM TOTALS'   # I(2000); likewise 4000
//! # instructions per hit = (I(4000) - I(2000)) / 2000
//! ```
//!
//! The concurrent figure: the same with `--tasks 64` and N of 6400 and 32000 (the marginal
//! over 25,600 calls), for `ours`, `unbatched` and `raw`.
//!
//! `--profile ours|unbatched|raw|l1|harness --calls N [--tasks T]` starts the server, warms
//! the keys, makes N hits of that side only, sequential or by T tasks on disjoint keys (ours:
//! the global cache; unbatched: a second cache with `REDIS_BATCH_READS=false`, as in row b4;
//! l1: a second cache with `CACHE_L1=true`, through `with_cache`, as in row e; harness: a
//! call that does nothing, the measuring loop's own cost, which every other figure includes),
//! checks them like any row and prints one line. Under valgrind the L1's invalidation
//! heartbeat can miss its deadline, which turns the L1 off: the run then says INVALID and
//! exits with 1; run it again.

#[path = "cache_bench/cluster.rs"]
mod cluster;
#[path = "cache_bench/harness.rs"]
mod harness;
#[path = "cache_bench/setup.rs"]
mod setup;
#[path = "cache_bench/standalone.rs"]
mod standalone;
#[path = "cache_bench/workload.rs"]
mod workload;

use std::process::ExitCode;
use std::time::Instant;

use harness::{Checked, Load, Pattern, Side};
use setup::{us, Bench, Row, Sizes, FULL, SMOKE};

const USAGE: &str = "usage: cache-bench [--smoke] [--only ROWS] | cache-bench --profile ours|unbatched|raw|l1|harness --calls N
  --only ROWS   only the rows whose letters are given, e.g. --only b or --only abj
  --tasks T     (with --profile ours|unbatched|raw|harness) T concurrent tasks on disjoint keys, N calls in all";

/// Which side `--profile` runs.
#[derive(Clone, Copy, Debug)]
enum Profiled {
    Ours,
    /// Ours on a second cache with read batching off (row b4).
    Unbatched,
    Raw,
    L1,
    /// The harness alone (a call that does nothing): its instructions per call are in
    /// every other profile's figure.
    Harness,
}

impl Profiled {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Unbatched => "unbatched",
            Self::Raw => "raw",
            Self::L1 => "l1",
            Self::Harness => "harness",
        }
    }
}

/// The rows `--only` asks for (every row without it).
struct Only(Option<String>);

impl Only {
    fn any(&self, letters: &str) -> bool {
        self.0
            .as_deref()
            .is_none_or(|only| letters.chars().any(|c| only.contains(c)))
    }
}

enum Mode {
    Table(&'static Sizes, Only),
    Profile(Profiled, usize, usize),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Mode, String> {
    let mut smoke = false;
    let mut profile = None;
    let mut calls = None;
    let mut only = None;
    let mut tasks = 1;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--only" => {
                let rows = args.next().unwrap_or_default();
                if rows.is_empty() || !rows.chars().all(|c| ('a'..='l').contains(&c)) {
                    return Err(format!(
                        "--only takes row letters a to l (e.g. --only ab), not {rows:?}"
                    ));
                }
                only = Some(rows);
            }
            "--profile" => {
                profile = Some(match args.next().as_deref() {
                    Some("ours") => Profiled::Ours,
                    Some("unbatched") => Profiled::Unbatched,
                    Some("raw") => Profiled::Raw,
                    Some("l1") => Profiled::L1,
                    Some("harness") => Profiled::Harness,
                    other => {
                        return Err(format!(
                            "--profile takes ours, unbatched, raw, l1 or harness, not {other:?}"
                        ))
                    }
                });
            }
            "--tasks" => {
                let n = args.next().and_then(|n| n.parse::<usize>().ok());
                tasks = n
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or("--tasks takes a number from 1 to 1024")?;
            }
            "--calls" => {
                let n = args.next().and_then(|n| n.parse::<usize>().ok());
                calls = Some(
                    n.filter(|n| *n > 0)
                        .ok_or("--calls takes a positive number")?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if only.is_some() && profile.is_some() {
        return Err("--only and --profile do not go together".to_owned());
    }
    if tasks > 1
        && !matches!(
            profile,
            Some(Profiled::Ours | Profiled::Unbatched | Profiled::Raw | Profiled::Harness)
        )
    {
        return Err("--tasks goes with --profile ours, unbatched, raw or harness".to_owned());
    }
    match (profile, calls, smoke) {
        (Some(_), Some(n), false) if n % tasks != 0 => Err(format!(
            "--calls {n} does not split evenly among --tasks {tasks}"
        )),
        (Some(side), Some(n), false) => Ok(Mode::Profile(side, n, tasks)),
        (None, None, _) => Ok(Mode::Table(if smoke { &SMOKE } else { &FULL }, Only(only))),
        (Some(_), None, _) => Err("--profile needs --calls N".to_owned()),
        (None, Some(_), _) => Err("--calls goes with --profile".to_owned()),
        (Some(_), Some(_), true) => Err("--profile and --smoke do not go together".to_owned()),
    }
}

/// Every row, in order; each stage's time on stderr.
async fn all_rows(sizes: &'static Sizes, only: &Only) -> Result<Vec<Row>, String> {
    let started = Instant::now();
    let stage = |name: &str| {
        eprintln!(
            "cache-bench: {name} ({:.1} s)",
            started.elapsed().as_secs_f64()
        )
    };
    let b = Bench::start(sizes).await?;
    standalone::warm(&b, sizes.hot_span()).await?;
    stage("set up and warmed");
    let mut rows = Vec::new();
    // Row e is compared with a's Redis hit.
    if only.any("ae") {
        let (a, redis_p50) = standalone::sequential_hits(&b).await?;
        if only.any("a") {
            rows.extend(a);
        }
        stage("a");
        if only.any("e") {
            rows.push(standalone::l1_hits(&b, redis_p50).await?);
            stage("e");
        }
    }
    if only.any("b") {
        rows.extend(standalone::concurrent_hits(&b).await?);
        stage("b");
    }
    if only.any("c") {
        rows.push(standalone::misses(&b).await?);
    }
    if only.any("d") {
        rows.push(standalone::stampede(&b).await?);
        stage("c, d");
    }
    if only.any("f") {
        rows.push(standalone::clear_user(sizes).await?);
    }
    if only.any("k") {
        rows.push(standalone::invalidate_tag(sizes).await?);
        stage("f, k");
    }
    if only.any("ghi") {
        rows.extend(cluster::rows(&b).await?);
        stage("g, h, i");
    }
    if only.any("jl") {
        rows.extend(standalone::large_values(&b).await?);
        stage("j, l");
    }
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!("| measure | ours | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let met = match (r.problems.is_empty(), r.met) {
            (false, _) => "INVALID",
            (true, Some(true)) => "yes",
            (true, Some(false)) => "NO",
            (true, None) => "-",
        };
        let ratio = r.ratio.map_or("-".to_owned(), setup::times);
        println!(
            "| {} | {} | {} | {ratio} | {} | {met} |",
            r.measure, r.ours, r.baseline, r.target
        );
        for p in &r.problems {
            eprintln!("INVALID {}: {p}", r.measure);
        }
    }
}

/// N hits of one side, checked, sequential or (`tasks` > 1) by concurrent tasks on
/// disjoint keys (row b3's pattern); the summary line.
async fn profile(
    side: Profiled,
    calls: usize,
    tasks: usize,
) -> Result<(String, Vec<String>), String> {
    let b = Bench::start(&FULL).await?;
    let (keys, pattern) = if tasks == 1 {
        let keys = FULL.seq_keys;
        (keys, Pattern::Lockstep { keys })
    } else {
        let per_task = FULL.keys_per_task;
        let keys = per_task * u32::try_from(tasks).map_err(|e| e.to_string())?;
        (keys, Pattern::Disjoint { per_task })
    };
    let load = Load {
        tasks,
        calls: calls / tasks,
        pattern,
    };
    standalone::warm(&b, keys).await?;
    let Checked {
        value: mut run,
        problems,
        ..
    } = match side {
        Profiled::Ours => {
            let ours = Side::global("ours", workload::ours_hit());
            harness::solo(&[("ours", &b.cache)], &ours, load, None).await?
        }
        Profiled::Unbatched => {
            let cache = setup::unbatched_cache(&b.url).await?;
            let ours = Side::on("ours, unbatched", &cache, workload::ours_hit());
            harness::solo(&[("ours, unbatched", &cache)], &ours, load, None).await?
        }
        Profiled::Raw => {
            let raw = Side::global("baseline", b.raw.hit());
            harness::solo(&[], &raw, load, None).await?
        }
        Profiled::L1 => {
            let cache = standalone::l1_cache(&b, keys).await?;
            standalone::l1_run(&cache, calls, keys).await?
        }
        Profiled::Harness => {
            let nothing = Side::global("harness", |id: u32| async move {
                std::hint::black_box(id);
                Ok(())
            });
            harness::solo(&[], &nothing, load, None).await?
        }
    };
    let stats = run.samples.stats();
    let line = format!(
        "profile {}: {calls} {} over {keys} warmed keys, p50 {}, mean {}, {}",
        side.name(),
        if tasks == 1 {
            "sequential hits".to_owned()
        } else {
            format!("hits by {tasks} tasks on disjoint keys")
        },
        us(stats.p50),
        us(stats.mean),
        if problems.is_empty() {
            "valid"
        } else {
            "INVALID"
        }
    );
    Ok((line, problems))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let invalid = match mode {
        Mode::Table(sizes, only) => match runtime.block_on(all_rows(sizes, &only)) {
            Ok(rows) => {
                print_table(&rows);
                let invalid = rows.iter().filter(|r| !r.problems.is_empty()).count();
                println!(
                    "\n{} mode, {} build, {:.1} s, {} cores; {invalid} invalid rows",
                    sizes.mode,
                    if cfg!(debug_assertions) {
                        "debug"
                    } else {
                        "release"
                    },
                    started.elapsed().as_secs_f64(),
                    cores()
                );
                invalid > 0
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Mode::Profile(side, calls, tasks) => match runtime.block_on(profile(side, calls, tasks)) {
            Ok((line, problems)) => {
                println!("{line}");
                for p in &problems {
                    eprintln!("INVALID profile: {p}");
                }
                !problems.is_empty()
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if invalid {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
