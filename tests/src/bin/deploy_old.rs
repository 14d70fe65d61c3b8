//! The "old" build of the deploy probe (see `tests/tests/deploy.rs`).

#[path = "../deploy/old.rs"]
mod types;

#[path = "../deploy/probe.rs"]
mod probe;

fn main() -> std::process::ExitCode {
    probe::main()
}
