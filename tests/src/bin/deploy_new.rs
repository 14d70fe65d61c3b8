//! The "new" build of the deploy probe (see `tests/tests/deploy.rs`): the same functions
//! as `deploy_old`, with each scenario's type changed in one way.

#[path = "../deploy/new.rs"]
mod types;

#[path = "../deploy/probe.rs"]
mod probe;

fn main() -> std::process::ExitCode {
    probe::main()
}
