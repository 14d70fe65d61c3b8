//! `cachectl`: check and operate the cache with the application's own configuration.
//! See [`cache_runtime::cli`] for the commands and exit codes.

fn main() -> std::process::ExitCode {
    cache_runtime::cli::main()
}
