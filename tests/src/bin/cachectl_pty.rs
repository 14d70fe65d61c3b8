//! `cachectl` exactly as cache-runtime's binary runs it (`cache_runtime::cli::main`), built
//! here so that tests/cachectl_top.rs can start it (`CARGO_BIN_EXE_cachectl_pty`) in a
//! pseudo-terminal: a test cannot name another package's binary.

fn main() -> std::process::ExitCode {
    cache_runtime::cli::main()
}
