//! One process of the L1 coherence test (`tests/tests/l1_tracking.rs`): a cache with
//! `CACHE_L1=true` (configured from the environment, as an application's) that reads the
//! given keys of one namespace as `u64` in a loop through the public manual API
//! (`ns.get`), and reports on stdout what it served and when, so the test can tell how
//! long after another client's write this process still served the old value.
//!
//! Usage: `l1_probe NAMESPACE KEY[,KEY...]`; exits when its stdin closes (the test's end).
//! Lines (times are `CLOCK_MONOTONIC` nanoseconds, one clock for every process of the
//! machine; a value is a number or `-` for none):
//!
//! - `up MODE` / `down`: the L1 started / stopped serving (`MODE`: health's `l1_mode`);
//! - `held KEY VALUE`: a read of `KEY` was served by the L1 (once per value, and again
//!   after a `down`: the L1 restarts empty);
//! - `change KEY OLD NEW LAST_OLD_NS LAST_OLD_L1 FIRST_NEW_NS`: the value read changed;
//!   `LAST_OLD_NS` is when the last read that returned `OLD` started (`LAST_OLD_L1`: `1`
//!   if the L1 served it), `FIRST_NEW_NS` when the first read that returned `NEW` started;
//! - `error KEY MESSAGE`: a read failed.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

/// Pause between two passes over the keys: short, so a change is seen within about a
/// millisecond (tokio's timer resolution), without spinning a core of a 2-core machine.
const PASS_PAUSE: Duration = Duration::from_micros(200);

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn shown(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// What was last read of one key.
struct Seen {
    value: Option<u64>,
    /// When the last read of `value` started.
    last_ns: u64,
    /// Whether the L1 served that read.
    last_l1: bool,
    /// `held` was printed for `value`.
    held: bool,
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(namespace), Some(keys)) = (args.get(1).cloned(), args.get(2)) else {
        eprintln!("usage: l1_probe NAMESPACE KEY[,KEY...]");
        return ExitCode::FAILURE;
    };
    let keys: Vec<String> = keys.split(',').map(str::to_owned).collect();
    // The test ends this process by closing its stdin.
    std::thread::spawn(|| {
        for _ in std::io::stdin().lock().lines() {}
        std::process::exit(0);
    });
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let Some(cache) = cache_runtime::global() else {
            eprintln!("l1_probe: no cache (check REDIS_URL and CACHE_L1)");
            return ExitCode::FAILURE;
        };
        if let Err(e) = cache.connect().await {
            eprintln!("l1_probe: {e}");
            return ExitCode::FAILURE;
        }
        let ns = match cache.namespace(&namespace) {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("l1_probe: {e}");
                return ExitCode::FAILURE;
            }
        };
        let l1_hits = || cache.counters().get(&namespace).map_or(0, |c| c.l1_hits);
        let mut seen: Vec<Option<Seen>> = keys.iter().map(|_| None).collect();
        let mut active = false;
        loop {
            if cache.l1_active() != active {
                active = !active;
                if active {
                    let mode = cache.health().await.l1_mode.unwrap_or("none");
                    say(format!("up {mode}"));
                } else {
                    say("down".to_owned());
                    // It restarts empty: what it held is held again only once served again.
                    for s in seen.iter_mut().flatten() {
                        s.held = false;
                    }
                }
            }
            for (key, seen) in keys.iter().zip(seen.iter_mut()) {
                let before = l1_hits();
                let started = mono_ns();
                let value = match ns.get::<u64>(key).await {
                    Ok(v) => v,
                    Err(e) => {
                        say(format!("error {key} {e}"));
                        continue;
                    }
                };
                let l1 = l1_hits() > before;
                match seen {
                    Some(s) if s.value == value => {
                        s.last_ns = started;
                        s.last_l1 = l1;
                    }
                    Some(s) => {
                        say(format!(
                            "change {key} {} {} {} {} {started}",
                            shown(s.value),
                            shown(value),
                            s.last_ns,
                            u8::from(s.last_l1),
                        ));
                        *s = Seen {
                            value,
                            last_ns: started,
                            last_l1: l1,
                            held: false,
                        };
                    }
                    None => {
                        *seen = Some(Seen {
                            value,
                            last_ns: started,
                            last_l1: l1,
                            held: false,
                        });
                    }
                }
                if let Some(s) = seen.as_mut().filter(|s| l1 && !s.held) {
                    s.held = true;
                    say(format!("held {key} {}", shown(value)));
                }
            }
            tokio::time::sleep(PASS_PAUSE).await;
        }
    })
}
