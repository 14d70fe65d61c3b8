//! The body of both deploy-probe builds (`deploy_old`, `deploy_new`): for every scenario,
//! one decorated call and one typed manual get-or-set against the Redis in `REDIS_URL`,
//! with the codec in `CACHE_CODEC`. Prints one JSON line per scenario and mode:
//! `{"mode", "scenario", "hit", "correct", "got"}`. `correct` is whether the returned value
//! equals what this build's body computes: a hit decoded from another shape would not be.
//!
//! Decorated functions carry `name = "deploy::<scenario>"`: the two builds are two crates,
//! and without a stable name their keys would differ by module path alone.

use std::sync::atomic::{AtomicBool, Ordering};

use cache_runtime::cache_result;
use serde::Serialize;

use super::types::{self, value};

static RAN: AtomicBool = AtomicBool::new(false);

#[derive(Serialize)]
struct Line<'a> {
    mode: &'a str,
    scenario: &'a str,
    hit: bool,
    correct: bool,
    got: serde_json::Value,
}

fn print(mode: &str, scenario: &str, hit: bool, correct: bool, got: serde_json::Value) {
    let line = Line {
        mode,
        scenario,
        hit,
        correct,
        got,
    };
    println!("{}", serde_json::to_string(&line).unwrap_or_default());
}

macro_rules! scenarios {
    ($($name:ident: $ty:ident = $id:literal),* $(,)?) => {
        mod decorated {
            use super::*;
            $(
                #[cache_result(ttl = 600, namespace = "deploy", name = $id)]
                pub async fn $name() -> types::$ty {
                    RAN.store(true, Ordering::SeqCst);
                    value::$name()
                }
            )*
        }

        async fn run_all(ns: &cache_runtime::NamespaceCache<'_>) -> Result<(), cache_runtime::CacheError> {
            $(
                RAN.store(false, Ordering::SeqCst);
                let got = decorated::$name().await;
                let hit = !RAN.load(Ordering::SeqCst);
                print("decorated", stringify!($name), hit, got == value::$name(), serde_json::to_value(&got).unwrap_or_default());

                let key = stringify!($name);
                match ns.get::<types::$ty>(key).await? {
                    Some(got) => print("manual", key, true, got == value::$name(), serde_json::to_value(&got).unwrap_or_default()),
                    None => {
                        ns.set(key, &value::$name(), None).await?;
                        print("manual", key, false, true, serde_json::Value::Null);
                    }
                }
            )*
            Ok(())
        }
    };
}

scenarios! {
    reorder: Reorder = "deploy::reorder",
    f64_to_u64: F64ToU64 = "deploy::f64_to_u64",
    field_added: FieldAdded = "deploy::field_added",
    field_removed: FieldRemoved = "deploy::field_removed",
    field_renamed: FieldRenamed = "deploy::field_renamed",
    variant_added: VariantAdded = "deploy::variant_added",
    variant_reordered: VariantReordered = "deploy::variant_reordered",
    to_option: ToOption = "deploy::to_option",
    nested: Nested = "deploy::nested",
    bytes_to_string: BytesToString = "deploy::bytes_to_string",
    control: Control = "deploy::control",
}

pub fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deploy probe: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let Some(cache) = cache_runtime::global() else {
            eprintln!("deploy probe: no cache runtime (check REDIS_URL and CACHE_CODEC)");
            return std::process::ExitCode::FAILURE;
        };
        // A probe that silently ran on the embedded store would prove nothing.
        if let Err(e) = cache.ping().await {
            eprintln!(
                "deploy probe: Redis unreachable ({}): {e}",
                cache.backend_kind()
            );
            return std::process::ExitCode::FAILURE;
        }
        let result = match cache.namespace("deploy_manual") {
            Ok(ns) => run_all(&ns).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("deploy probe: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
