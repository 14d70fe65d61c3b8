//! Rolling deploys: two builds of the same functions (`deploy_old`, `deploy_new`; see
//! `tests/src/deploy/`) against one real Redis, where every scenario's type changed in one
//! way between the builds (field reorder, `f64` to `u64`, a field added, removed, renamed,
//! an enum variant added and reordered, `T` to `Option<T>`, a nested struct changed,
//! `Vec<u8>` to `String`) except the control, which is the same shape under other type
//! names and modules.
//!
//! The order is a rolling deploy's: old, new, old again, new again. Each probe run does,
//! per scenario, one decorated call and one typed manual get-or-set, and reports whether it
//! hit and whether the value equals what its own body computes.
//!
//! What must hold, for every codec:
//! - never a wrong value (a hit decoded from another shape);
//! - decorated calls: the shape is in the key, so each build keeps its own entries: a
//!   changed type misses once per build, then hits its own; the control hits across builds;
//! - manual operations (one key for both builds) with an envelope codec: a changed type is a
//!   miss every time the other build wrote last; the control hits.
//! - manual operations with `json-plain` (bare JSON, no shape in bytes or key): a hit only
//!   where the JSON is exactly what the reader's type writes, up to key order (so `15025`
//!   never reads as `15025.0` dollars).

use std::collections::BTreeMap;
use std::process::Command;

use cache_tests::RedisServer;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    Old,
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    hit: bool,
    correct: bool,
    got: String,
}

/// `(mode, scenario)` → outcome.
type Run = BTreeMap<(String, String), Outcome>;

const SCENARIOS: [&str; 11] = [
    "reorder",
    "f64_to_u64",
    "field_added",
    "field_removed",
    "field_renamed",
    "variant_added",
    "variant_reordered",
    "to_option",
    "nested",
    "bytes_to_string",
    "control",
];

fn probe(build: Build, server: &RedisServer, codec: &str) -> Run {
    let exe = match build {
        Build::Old => env!("CARGO_BIN_EXE_deploy_old"),
        Build::New => env!("CARGO_BIN_EXE_deploy_new"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(exe)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REDIS_URL", server.url())
        .env("CACHE_CODEC", codec)
        // One prefix per codec: the runs of different codecs never see each other.
        .env("REDIS_KEY_PREFIX", format!("deploy-{codec}"))
        .output()
        .expect("run the deploy probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{build:?} probe failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = Run::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let field = |k: &str| v[k].as_str().expect(k).to_owned();
        run.insert(
            (field("mode"), field("scenario")),
            Outcome {
                hit: v["hit"].as_bool().expect("hit"),
                correct: v["correct"].as_bool().expect("correct"),
                got: v["got"].to_string(),
            },
        );
    }
    assert_eq!(run.len(), 2 * SCENARIOS.len(), "{stdout}");
    run
}

fn hits(run: &Run, mode: &str) -> Vec<&'static str> {
    SCENARIOS
        .into_iter()
        .filter(|s| run[&(mode.to_owned(), (*s).to_owned())].hit)
        .collect()
}

fn rolling_deploy(codec: &str) {
    let server = RedisServer::plain();
    let steps = [Build::Old, Build::New, Build::Old, Build::New];
    let runs: Vec<Run> = steps.iter().map(|b| probe(*b, &server, codec)).collect();

    for (step, run) in runs.iter().enumerate() {
        for ((mode, scenario), o) in run {
            assert!(
                o.correct,
                "{codec}, step {step} ({:?}), {mode} {scenario}: a hit returned {} which is not what this build computes",
                steps[step], o.got
            );
        }
    }
    let table: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{codec} step {i} {:?}: decorated hits {:?}; manual hits {:?}",
                steps[i],
                hits(r, "decorated"),
                hits(r, "manual")
            )
        })
        .collect();
    eprintln!("{}", table.join("\n"));

    // Step 0: an empty cache.
    assert!(hits(&runs[0], "decorated").is_empty(), "{table:#?}");
    assert!(hits(&runs[0], "manual").is_empty(), "{table:#?}");
    // Decorated: the new build misses every changed type and hits the control; both builds
    // then keep hitting their own entries.
    assert_eq!(hits(&runs[1], "decorated"), ["control"], "{table:#?}");
    assert_eq!(hits(&runs[2], "decorated"), SCENARIOS, "{table:#?}");
    assert_eq!(hits(&runs[3], "decorated"), SCENARIOS, "{table:#?}");
    if codec != "json-plain" {
        // Manual: one key; whoever wrote last had the other shape.
        for run in &runs[1..] {
            assert_eq!(hits(run, "manual"), ["control"], "{table:#?}");
        }
    } else {
        // Bare JSON at one key for both builds: no shape in bytes or key, so a typed read
        // hits only when the JSON is exactly what its type writes (up to key order). That
        // leaves the changes JSON itself carries faithfully: named fields in another order,
        // an enum variant by name, `5` as `Some(5)`.
        for run in &runs[1..] {
            assert_eq!(
                hits(run, "manual"),
                [
                    "reorder",
                    "variant_added",
                    "variant_reordered",
                    "to_option",
                    "control"
                ],
                "{table:#?}"
            );
        }
    }
}

#[test]
fn rolling_deploy_bincode() {
    rolling_deploy("bincode");
}

#[test]
fn rolling_deploy_json() {
    rolling_deploy("json");
}

#[test]
fn rolling_deploy_json_plain() {
    rolling_deploy("json-plain");
}
