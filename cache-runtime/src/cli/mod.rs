//! The implementation of the `cachectl` binary, as a library so it can be tested in-process.
//!
//! ```text
//! cachectl [--json] ping                 connect, report version, TLS and latency, diagnose failures
//! cachectl [--json] health               the /api/health/redis report
//! cachectl [--json] stats                the /api/health/cache report
//! cachectl [--json] clear --namespace NS [--yes]
//! cachectl [--json] clear --user ID [--yes]
//! cachectl top [--once | --iterations N] [--json]
//!                                        live view of every process using this Redis and prefix
//! cachectl [--json] inspect KEY          envelope, codec, shape tag, size, TTL; whether this build reads it
//! cachectl [--json] keys --user ID [--limit N]
//! cachectl [--json] keys --namespace NS [--limit N]
//! ```
//!
//! Exit codes: 0 ok; 1 other failure (a key that does not exist, say); 2 usage or
//! configuration error (`top`, `inspect` and `keys` on the embedded store, too); 3
//! unreachable or timeout; 4 TLS failure; 5 authentication or permission refused; 6 not
//! confirmed.

mod inspect;
mod top;

use std::io::Write;

use std::time::Duration;

use crate::backend::Store;
use crate::error::AuthCause;
use crate::{Cache, CacheConfig, CacheError};

/// Success.
pub const EXIT_OK: u8 = 0;
/// Any other failure.
pub const EXIT_FAILURE: u8 = 1;
/// Bad usage or an invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// Redis unreachable or not answering in time.
pub const EXIT_UNREACHABLE: u8 = 3;
/// TLS handshake failed.
pub const EXIT_TLS: u8 = 4;
/// Authentication or permission refused.
pub const EXIT_AUTH: u8 = 5;
/// A destructive command was not confirmed.
pub const EXIT_NOT_CONFIRMED: u8 = 6;

/// Where the command writes, and how it asks for confirmation.
pub struct Io<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
    /// Asks the question and returns the answer; `None` when nobody can answer (no terminal).
    pub confirm: &'a mut dyn FnMut(&str) -> Option<bool>,
}

/// The help text.
pub const USAGE: &str = "usage: cachectl [--json] <command>

commands:
  ping                                  connect; version, TLS, latency, or a diagnosis
  health                                the /api/health/redis report
  stats                                 the /api/health/cache report
  clear (--namespace NS | --user ID) [--yes]
  top [--once | --iterations N]         live view (q or Ctrl-C quits): per namespace reads/s,
                                        hit ratio, p50/p99, errors, stale served; breaker,
                                        connections, memory, keys; --once prints one frame
  inspect KEY                           what a stored value is, and whether this build reads it
  keys (--user ID | --namespace NS) [--limit N]
                                        keys with their TTLs (at most N, default 100)

Reads the same configuration as the application: REDIS_URL or REDIS_HOST/REDIS_PORT/…, and .env.
Exit codes: 0 ok, 1 failure, 2 usage/configuration, 3 unreachable/timeout, 4 TLS, 5 auth, 6 not confirmed.";

/// Keys listed by `keys` unless `--limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;

enum Command {
    Ping,
    Health,
    Stats,
    ClearNamespace(String),
    ClearUser(String),
    /// `None`: the live view; `Some(n)`: `n` frames printed one after another.
    Top(Option<u64>),
    Inspect(String),
    KeysUser(String, usize),
    KeysNamespace(String, usize),
}

struct Args {
    json: bool,
    yes: bool,
    command: Command,
}

/// The value of `flag`, parsed as a count of at least 1.
fn count(flag: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{flag} takes a whole number of at least 1, not {value:?}"
        )),
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut json = false;
    let mut yes = false;
    let mut words = Vec::new();
    let mut namespace = None;
    let mut user = None;
    let mut limit = None;
    let mut iterations = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--yes" | "-y" => yes = true,
            "--namespace" => namespace = Some(it.next().ok_or("--namespace needs a value")?),
            "--user" => user = Some(it.next().ok_or("--user needs a value")?),
            "--limit" => limit = Some(count("--limit", it.next())?),
            "--iterations" => iterations = Some(count("--iterations", it.next())?),
            "--once" => iterations = Some(1),
            "-h" | "--help" => return Ok(None),
            // After `--`, a key that starts with a dash.
            "--" => words.extend(it.by_ref()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => words.push(arg),
        }
    }
    let verb = words.first().map(String::as_str);
    let takes = |what: &str, ok: bool| if ok { Ok(()) } else { Err(what.to_owned()) };
    takes(
        "--namespace and --user only go with clear and keys",
        (namespace.is_none() && user.is_none()) || matches!(verb, Some("clear" | "keys")),
    )?;
    takes(
        "--limit only goes with keys",
        limit.is_none() || verb == Some("keys"),
    )?;
    takes(
        "--once and --iterations only go with top",
        iterations.is_none() || verb == Some("top"),
    )?;
    let limit = limit.map_or(DEFAULT_LIMIT, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let command = match (verb, namespace, user) {
        (Some("ping"), None, None) => Command::Ping,
        (Some("health"), None, None) => Command::Health,
        (Some("stats"), None, None) => Command::Stats,
        (Some("top"), None, None) => Command::Top(iterations),
        (Some("clear"), Some(ns), None) => Command::ClearNamespace(ns),
        (Some("clear"), None, Some(user)) => Command::ClearUser(user),
        (Some("clear"), _, _) => {
            return Err("clear needs exactly one of --namespace NS or --user ID".into())
        }
        (Some("keys"), Some(ns), None) => Command::KeysNamespace(ns, limit),
        (Some("keys"), None, Some(user)) => Command::KeysUser(user, limit),
        (Some("keys"), _, _) => {
            return Err("keys needs exactly one of --namespace NS or --user ID".into())
        }
        (Some("inspect"), None, None) => match words.get(1) {
            Some(key) => {
                if words.len() > 2 {
                    return Err(format!("unexpected argument {:?}", words[2]));
                }
                return Ok(Some(Args {
                    json,
                    yes,
                    command: Command::Inspect(key.clone()),
                }));
            }
            None => return Err("inspect needs a KEY (the whole Redis key)".into()),
        },
        (Some(other), _, _) => return Err(format!("unknown command {other:?}")),
        (None, _, _) => return Err("missing command".into()),
    };
    if words.len() > 1 {
        return Err(format!("unexpected argument {:?}", words[1]));
    }
    Ok(Some(Args { json, yes, command }))
}

/// Turns an error into the seed's troubleshooting advice and an exit code.
fn diagnose(e: &CacheError) -> (u8, Vec<&'static str>) {
    match e {
        CacheError::Unreachable { .. } | CacheError::Timeout(_) | CacheError::Unavailable => (
            EXIT_UNREACHABLE,
            vec![
                "verify the endpoint and port number (Redis Cloud: Configuration tab, public endpoint)",
                "check that a firewall lets this host reach the port, and whether your IP must be allow-listed",
                "make sure the Redis instance is active (not paused or suspended)",
                "raise REDIS_SOCKET_CONNECT_TIMEOUT to 15 or more on slow networks",
                "if the server requires TLS (Redis Cloud does), use a rediss:// URL: a plain client is reset by a TLS port",
            ],
        ),
        CacheError::Tls { .. } => (
            EXIT_TLS,
            vec![
                "Redis Cloud requires TLS: use a rediss:// URL (or REDIS_SSL=true) on the TLS port",
                "point REDIS_SSL_CA_CERTS at the server's CA file (Redis Cloud: redis_ca.pem)",
                "keep REDIS_SSL_CERT_REQS=required; the certificate must name the host you connect to",
                "a plain (non-TLS) server on this port also fails the handshake: check the port",
            ],
        ),
        CacheError::Auth {
            cause: AuthCause::Permission,
            ..
        } => (
            EXIT_AUTH,
            vec![
                "NOPERM: the ACL user lacks rights for these commands or keys: check its rules (ACL GETUSER <user>) and grant them (ACL SETUSER)",
                "other commands and keys keep working: decorated calls the ACL refuses run without the cache",
            ],
        ),
        CacheError::Auth { .. } => (
            EXIT_AUTH,
            vec![
                "WRONGPASS/NOAUTH: copy the password from the console's Security section into REDIS_PASSWORD",
                "if the password was rotated, every client needs the new one: until then they run without the cache",
                "use the username 'default' unless you created an ACL user (REDIS_USERNAME)",
                "percent-encode special characters of the password inside REDIS_URL",
            ],
        ),
        CacheError::Config(_) => (EXIT_USAGE, vec![]),
        CacheError::WrongTopology(_) => (
            EXIT_USAGE,
            vec![
                "a Redis Cluster needs REDIS_CLUSTER=auto (the default) or true, and database 0",
                "list more seed nodes with REDIS_CLUSTER_NODES=host:port,host:port",
            ],
        ),
        _ => (EXIT_FAILURE, vec![]),
    }
}

fn print_json(io: &mut Io<'_>, value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            let _ = writeln!(io.out, "{s}");
        }
        Err(e) => {
            let _ = writeln!(io.err, "error: cannot render JSON: {e}");
        }
    }
}

fn fail(io: &mut Io<'_>, json: bool, e: &CacheError) -> u8 {
    let (code, hints) = diagnose(e);
    if json {
        print_json(
            io,
            &serde_json::json!({ "ok": false, "error": e.to_string(), "hints": hints }),
        );
    } else {
        let _ = writeln!(io.err, "error: {e}");
        for hint in hints {
            let _ = writeln!(io.err, "  - {hint}");
        }
    }
    code
}

fn confirm(io: &mut Io<'_>, what: &str) -> bool {
    match (io.confirm)(what) {
        Some(answer) => answer,
        None => {
            let _ = writeln!(
                io.err,
                "refusing to {what} without confirmation: pass --yes"
            );
            false
        }
    }
}

async fn ping(io: &mut Io<'_>, cache: &Cache, json: bool) -> u8 {
    let endpoint = cache.backend().endpoint();
    let (endpoint, tls) = (endpoint.shown, endpoint.tls);
    // The connect's own error says why (refused, TLS, auth); a ping could only time out.
    if let Err(e) = cache.connect().await {
        return fail(io, json, &e);
    }
    let mut samples = Vec::new();
    for _ in 0..5 {
        match cache.ping().await {
            Ok(d) => samples.push(d),
            Err(e) => return fail(io, json, &e),
        }
    }
    samples.sort();
    let health = cache.health().await;
    let version = health.info.server.version.clone();
    let nodes = &health.info.nodes;
    let min = samples.first().copied().unwrap_or_default();
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    if json {
        print_json(
            io,
            &serde_json::json!({
                "ok": true,
                "backend": cache.backend_kind(),
                "endpoint": endpoint,
                "tls": tls,
                "server_version": version,
                "mode": health.info.server.mode,
                "latency_ms": { "min": ms(min), "median": ms(median) },
                "nodes": nodes,
                "error": health.error,
            }),
        );
    } else {
        let _ = writeln!(io.out, "ok: connected to {endpoint}");
        let _ = writeln!(io.out, "  backend:        {}", cache.backend_kind());
        let _ = writeln!(
            io.out,
            "  server version: {}",
            version.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(
            io.out,
            "  TLS:            {}",
            if tls { "on" } else { "off" }
        );
        let _ = writeln!(
            io.out,
            "  latency:        min {:.3} ms, median {:.3} ms",
            ms(min),
            ms(median)
        );
        write_nodes(io, nodes);
        if let Some(e) = &health.error {
            let _ = writeln!(io.out, "  problem:        {e}");
        }
    }
    // A cluster that answers but cannot serve every slot is not "ok".
    if health.status == "healthy" {
        EXIT_OK
    } else {
        EXIT_UNREACHABLE
    }
}

/// One line per node of a cluster: address, role, slots, status, latency.
fn write_nodes(io: &mut Io<'_>, nodes: &[crate::health::NodeHealth]) {
    if nodes.is_empty() {
        return;
    }
    let _ = writeln!(io.out, "  nodes:");
    for n in nodes {
        let latency = n
            .latency_ms
            .map_or_else(|| "-".to_owned(), |l| format!("{l:.3} ms"));
        let _ = writeln!(
            io.out,
            "    {:<22} {:<8} {:>5} slots  {:<10} {}",
            n.address, n.role, n.slots, latency, n.status
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (no time zone database here).
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Runs `cachectl` with `args` (without the program name) and a configuration; returns the
/// exit code. Never takes over the terminal: `top` needs `--once` or `--iterations` here
/// (the live view is [`main`]'s, on a real terminal).
pub async fn run(
    args: impl IntoIterator<Item = String>,
    config: Result<CacheConfig, crate::ConfigError>,
    io: &mut Io<'_>,
) -> u8 {
    run_on(args, config, io, false).await
}

/// The `cachectl` binary: the environment's configuration, standard streams, a
/// confirmation on the terminal, and `top`'s live view when stdin and stdout are one.
pub fn main() -> std::process::ExitCode {
    use std::io::{BufRead, IsTerminal};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
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
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut io = Io {
        out: &mut out,
        err: &mut err,
        confirm: &mut confirm,
    };
    let code = runtime.block_on(run_on(
        std::env::args().skip(1),
        CacheConfig::from_env(),
        &mut io,
        terminal,
    ));
    std::process::ExitCode::from(code)
}

/// [`run`], where `terminal` says whether stdin and stdout are a terminal `top` may take.
async fn run_on(
    args: impl IntoIterator<Item = String>,
    config: Result<CacheConfig, crate::ConfigError>,
    io: &mut Io<'_>,
    terminal: bool,
) -> u8 {
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            let _ = writeln!(io.out, "{USAGE}");
            return EXIT_OK;
        }
        Err(msg) => {
            let _ = writeln!(io.err, "error: {msg}\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(io, args.json, &CacheError::Config(e)),
    };
    let cache = match Cache::new(config) {
        Ok(c) => c,
        Err(e) => return fail(io, args.json, &e),
    };
    if matches!(
        args.command,
        Command::Top(_) | Command::Inspect(_) | Command::KeysUser(..) | Command::KeysNamespace(..)
    ) && cache.backend_kind() == "embedded"
    {
        return embedded_store(io, args.json);
    }
    match args.command {
        Command::Ping => ping(io, &cache, args.json).await,
        Command::Top(iterations) => top::run(io, &cache, args.json, iterations, terminal).await,
        Command::Inspect(key) => inspect::inspect(io, &cache, args.json, &key).await,
        Command::KeysUser(user, limit) => {
            inspect::keys_of_user(io, &cache, args.json, &user, limit).await
        }
        Command::KeysNamespace(ns, limit) => {
            inspect::keys_of_namespace(io, &cache, args.json, &ns, limit).await
        }
        Command::Health => {
            let report = cache.health().await;
            if args.json {
                print_json(io, &report);
            } else {
                let _ = writeln!(
                    io.out,
                    "status: {} (backend {})",
                    report.status, report.backend
                );
                if let Some(v) = &report.info.server.version {
                    let _ = writeln!(
                        io.out,
                        "server: {v} {}",
                        report.info.server.mode.as_deref().unwrap_or("")
                    );
                }
                if let Some(e) = &report.error {
                    let _ = writeln!(io.out, "error:  {e}");
                }
                write_nodes(io, &report.info.nodes);
            }
            if report.status == "healthy" {
                EXIT_OK
            } else {
                EXIT_UNREACHABLE
            }
        }
        Command::Stats => {
            // Without a connection there are no figures to show: say why, like ping.
            if let Err(e) = cache.connect().await {
                return fail(io, args.json, &e);
            }
            if let Err(e) = cache.ping().await {
                return fail(io, args.json, &e);
            }
            let report = cache.stats().await;
            if args.json {
                print_json(io, &report);
            } else {
                let _ = writeln!(
                    io.out,
                    "memory: {} (max {})",
                    report
                        .memory
                        .used_memory_human
                        .as_deref()
                        .unwrap_or("unknown"),
                    report
                        .memory
                        .maxmemory
                        .map_or("unknown".to_owned(), |m| m.to_string())
                );
                let _ = writeln!(
                    io.out,
                    "keys:   {} total{}",
                    report
                        .keys
                        .total
                        .map_or("unknown".to_owned(), |t| t.to_string()),
                    if report.keys.approximate {
                        " (per-namespace counts approximate)"
                    } else {
                        ""
                    }
                );
                for (ns, n) in &report.keys.by_namespace {
                    let _ = writeln!(io.out, "  {ns:<12} {n}");
                }
                if !report.nodes.is_empty() {
                    let _ = writeln!(io.out, "nodes:");
                    for n in &report.nodes {
                        let _ = writeln!(
                            io.out,
                            "  {:<22} {:<8} memory {:<10} keys {}",
                            n.address,
                            n.role,
                            n.used_memory_human.as_deref().unwrap_or("unknown"),
                            n.keys.map_or("unknown".to_owned(), |k| k.to_string())
                        );
                    }
                }
            }
            EXIT_OK
        }
        Command::ClearNamespace(ns) => {
            if !args.yes && !confirm(io, &format!("delete every key of namespace {ns:?}")) {
                return EXIT_NOT_CONFIRMED;
            }
            report_cleared(io, args.json, cache.clear_namespace(&ns).await)
        }
        Command::ClearUser(user) => {
            if !args.yes && !confirm(io, &format!("delete every cached entry of user {user:?}")) {
                return EXIT_NOT_CONFIRMED;
            }
            report_cleared(io, args.json, cache.clear_user(&user).await)
        }
    }
}

fn report_cleared(io: &mut Io<'_>, json: bool, result: Result<u64, CacheError>) -> u8 {
    match result {
        Ok(n) => {
            if json {
                print_json(io, &serde_json::json!({ "ok": true, "cleared": n }));
            } else {
                let _ = writeln!(io.out, "cleared {n} keys");
            }
            EXIT_OK
        }
        Err(e) => fail(io, json, &e),
    }
}

/// `top`, `inspect` and `keys` read the application's Redis; without one, the cache is the
/// embedded store inside the application, out of this process's reach.
fn embedded_store(io: &mut Io<'_>, json: bool) -> u8 {
    const WHY: &str = "no Redis is configured (REDIS_URL, REDIS_HOST unset), so the cache is the embedded store inside the application's own process, which cachectl cannot see";
    const HINTS: [&str; 2] = [
        "there, the application's own figures are at its /metrics route (cargo feature http) and /api/health/cache",
        "to watch a Redis-backed application, run cachectl with the application's REDIS_URL (and REDIS_KEY_PREFIX)",
    ];
    if json {
        print_json(
            io,
            &serde_json::json!({ "ok": false, "error": WHY, "hints": HINTS }),
        );
    } else {
        let _ = writeln!(io.err, "error: {WHY}");
        for hint in HINTS {
            let _ = writeln!(io.err, "  - {hint}");
        }
    }
    EXIT_USAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn new_verbs_parse_and_refuse_misplaced_flags() {
        let parse = |args: &[&str]| parse_args(args.iter().map(|s| (*s).to_owned()));
        assert!(matches!(
            parse(&["keys", "--user", "u1"]),
            Ok(Some(Args { command: Command::KeysUser(u, DEFAULT_LIMIT), .. })) if u == "u1"
        ));
        assert!(matches!(
            parse(&["--json", "keys", "--namespace", "users", "--limit", "5"]),
            Ok(Some(Args { json: true, command: Command::KeysNamespace(n, 5), .. })) if n == "users"
        ));
        assert!(matches!(
            parse(&["top", "--once"]),
            Ok(Some(Args {
                command: Command::Top(Some(1)),
                ..
            }))
        ));
        assert!(matches!(
            parse(&["top"]),
            Ok(Some(Args {
                command: Command::Top(None),
                ..
            }))
        ));
        assert!(matches!(
            parse(&["inspect", "--", "-odd:key"]),
            Ok(Some(Args { command: Command::Inspect(k), .. })) if k == "-odd:key"
        ));
        for (args, message) in [
            (&["inspect"][..], "inspect needs a KEY"),
            (&["inspect", "a", "b"][..], "unexpected argument"),
            (&["keys"][..], "exactly one of --namespace NS or --user ID"),
            (
                &["keys", "--user", "a", "--namespace", "b"][..],
                "exactly one of",
            ),
            (&["ping", "--limit", "3"][..], "--limit only goes with keys"),
            (&["stats", "--once"][..], "only go with top"),
            (&["keys", "--user", "a", "--limit", "0"][..], "at least 1"),
            (&["top", "--iterations", "x"][..], "at least 1"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(message), "{args:?}: {e}"),
                Ok(_) => panic!("{args:?} parsed"),
            }
        }
    }
}
