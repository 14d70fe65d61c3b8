//! `cachectl`: check and operate the cache with the application's own configuration.
//! See [`cache_runtime::cli`] for the commands and exit codes.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use cache_runtime::cli::{self, Io};
use cache_runtime::CacheConfig;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut confirm = |what: &str| {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        eprint!("{what}? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        Some(stdin.lock().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes"))
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        confirm: &mut confirm,
    };
    let code = runtime.block_on(cli::run(
        std::env::args().skip(1),
        CacheConfig::from_env(),
        &mut io,
    ));
    ExitCode::from(code)
}
