//! `cachectl top` against a real `redis-server`, with an application workload in this
//! process (decorated calls on the same Redis and prefix, so its stats are published):
//!
//! - the live view, driven in a pseudo-terminal (`openpty`, the binary as a session leader
//!   with the pty as its controlling terminal): the screen shows the namespace with
//!   non-zero ops/s and a hit ratio, `q` quits with status 0, and the terminal is given
//!   back (cursor shown, alternate screen left, raw mode off);
//! - `top --once --json` in process, and the publisher's promise: nothing is written into
//!   the application's Redis unless a `top` watches, and the stats key goes away after.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_runtime::cli::{self, Io, EXIT_OK};
use cache_runtime::{cache_result, with_cache, Cache, CacheConfig};
use cache_tests::{keyspace, RedisServer};

const PREFIX: &str = "toptest";

static RUNS: AtomicU64 = AtomicU64::new(0);

/// The workload: a few ids over and over, so most calls are hits.
#[cache_result(namespace = "users", ttl = 600)]
async fn profile(id: u32) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("user-{id}")
}

fn app_cache(server: &RedisServer) -> Cache {
    let config = CacheConfig::builder()
        .url(server.url())
        .key_prefix(PREFIX)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration");
    Cache::new(config).expect("cache")
}

/// Decorated calls on `cache` until `stop` (or 120 s, whichever first), a millisecond
/// apart: the application `top` watches.
fn workload(cache: &Cache, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let cache = cache.clone();
    tokio::spawn(with_cache(cache, async move {
        let start = Instant::now();
        let mut calls = 0u64;
        while !stop.load(SeqCst) && start.elapsed() < Duration::from_secs(120) {
            let id = u32::try_from(calls % 8).unwrap_or(0);
            assert_eq!(profile(id).await, format!("user-{id}"));
            calls += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        calls
    }))
}

// -------------------------------------------------------------------- the pseudo-terminal

/// A pty pair: the master (this test's side) and the slave (the program's terminal).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn open_pty(cols: u16, rows: u16) -> Pty {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: two out-pointers to c_ints, no name buffer, no termios, a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [master, slave] {
        // SAFETY: fds just returned by openpty; neither leaks into the child.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    }
}

/// The slave's line discipline flags (`c_lflag`).
fn local_flags(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: a zeroed termios is a valid out-buffer for tcgetattr on an open fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    t.c_lflag
}

/// Just enough of a terminal to replay what `top` draws: cursor moves (`CSI r;c H`),
/// clears (`CSI K`, `CSI J`, `CSI 2J`), text; other sequences are ignored.
fn screen(output: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(output);
    let mut rows: Vec<Vec<char>> = Vec::new();
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut last = None;
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        last = Some(c);
                        break;
                    }
                    params.push(c);
                }
                let nums: Vec<usize> = params
                    .split(';')
                    .map(|p| p.trim_start_matches('?').parse().unwrap_or(0))
                    .collect();
                match last {
                    Some('H') if !params.starts_with('?') => {
                        row = nums.first().copied().unwrap_or(1).max(1) - 1;
                        col = nums.get(1).copied().unwrap_or(1).max(1) - 1;
                    }
                    Some('K') => {
                        if let Some(r) = rows.get_mut(row) {
                            r.truncate(col);
                        }
                    }
                    Some('J') if params == "2" => rows.clear(),
                    Some('J') => {
                        rows.truncate(row + 1);
                        if let Some(r) = rows.get_mut(row) {
                            r.truncate(col);
                        }
                    }
                    _ => {}
                }
            }
            '\r' => col = 0,
            '\n' => row += 1,
            c if !c.is_control() => {
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let r = &mut rows[row];
                while r.len() < col {
                    r.push(' ');
                }
                if col < r.len() {
                    r[col] = c;
                } else {
                    r.push(c);
                }
                col += 1;
            }
            _ => {}
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}

/// The `users` row's OPS/S, HIT% and P50 when the screen shows them as numbers.
fn users_row(screen: &[String]) -> Option<(f64, f64, f64)> {
    let row = screen.iter().find(|l| l.starts_with("users "))?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    let ops: f64 = cols.get(1)?.parse().ok()?;
    let hit: f64 = cols.get(2)?.strip_suffix('%')?.parse().ok()?;
    let p50: f64 = cols.get(4)?.parse().ok()?;
    Some((ops, hit, p50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_the_application_and_gives_the_terminal_back() {
    let server = RedisServer::plain();
    let cache = app_cache(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let work = workload(&cache, Arc::clone(&stop));

    let pty = open_pty(150, 40);
    let cooked = local_flags(&pty.slave);
    assert_ne!(cooked & libc::ICANON, 0, "a fresh pty is in cooked mode");
    let stdio = || Stdio::from(pty.slave.try_clone().expect("dup the pty slave"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cachectl_pty"));
    command
        .arg("top")
        // Only what it needs: the test's own REDIS_* or RUST_LOG must not leak in, nor a
        // .env (it runs in an empty directory).
        .env_clear()
        .env("REDIS_URL", server.url())
        .env("REDIS_KEY_PREFIX", PREFIX)
        .env("TERM", "xterm-256color")
        .current_dir(dir.path())
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio());
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty (fd 0), as a shell would give it.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start cachectl top");
    // The command holds copies of the slave: only the child and `pty` may, so that the
    // master reads EOF once both are gone.
    drop(command);

    // Everything the program writes to its terminal.
    let output = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let output = Arc::clone(&output);
        let mut master = std::fs::File::from(pty.master.try_clone().expect("dup the master"));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last holder of the slave closes it.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let bytes = || output.lock().unwrap().clone();

    // The application's figures reach the screen: it notices the watcher (within 2 s),
    // publishes twice (a second apart), and the next refresh shows the rates.
    let start = Instant::now();
    let shown = loop {
        let now = screen(&bytes());
        if let Some((ops, hit, p50)) = users_row(&now) {
            if ops > 0.0 && hit > 0.0 {
                assert!(p50 > 0.0, "the read latency is published too: {now:#?}");
                break now;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "cachectl top exited ({status}) before showing the figures:\n{}",
                String::from_utf8_lossy(&bytes())
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no figures after 60 s; the screen:\n{}",
            now.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "---- cachectl top, as the pseudo-terminal showed it ----\n{}\n----",
        shown.join("\n")
    );
    let text = shown.join("\n");
    assert!(text.starts_with("cachectl top  redis://"), "{text}");
    assert!(text.contains("processes 1"), "{text}");
    assert!(text.contains("breaker closed"), "{text}");
    assert!(text.contains("memory "), "{text}");
    assert!(text.contains("q quit"), "{text}");
    {
        // Raw mode while it runs: no line editing, no echo.
        let raw = local_flags(&pty.slave);
        assert_eq!(raw & (libc::ICANON | libc::ECHO), 0, "raw mode: {raw:#o}");
    }

    // `q` quits, with status 0.
    let mut master = std::fs::File::from(pty.master.try_clone().expect("dup the master"));
    std::io::Write::write_all(&mut master, b"q").expect("type q");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "cachectl top still runs 20 s after q:\n{}",
            screen(&bytes()).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");

    // The terminal is given back: cooked mode again, and the output ends by showing the
    // cursor and leaving the alternate screen.
    let after = local_flags(&pty.slave);
    assert_eq!(
        after & (libc::ICANON | libc::ECHO),
        cooked & (libc::ICANON | libc::ECHO)
    );
    drop(pty);
    drop(master);
    reader.join().expect("reader");
    let raw = bytes();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("\u{1b}[?1049h"),
        "entered the alternate screen"
    );
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(80)..].iter().collect()
    };
    assert!(
        text.ends_with("\u{1b}[?25h\u{1b}[?1049l"),
        "ends by showing the cursor and leaving the alternate screen: {tail:?}"
    );

    stop.store(true, SeqCst);
    let calls = work.await.expect("workload");
    assert!(calls > 0, "the workload ran");
}

// ------------------------------------------------------------------------ in process

/// Runs `cachectl ARGS` in process against `server` (prefix [`PREFIX`]).
async fn cachectl(server: &RedisServer, args: &[&str]) -> (u8, String, String) {
    let config = CacheConfig::builder()
        .url(server.url())
        .key_prefix(PREFIX)
        .connect_timeout(Duration::from_secs(2))
        .socket_timeout(Duration::from_secs(2))
        .build();
    let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut confirm = |_: &str| None;
    let code = {
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            confirm: &mut confirm,
        };
        let run = cli::run(args.iter().map(|s| (*s).to_owned()), config, &mut io);
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("cachectl {args:?} did not finish within 60 s"))
    };
    (
        code,
        String::from_utf8(out).expect("UTF-8"),
        String::from_utf8(err).expect("UTF-8"),
    )
}

fn stats_keys(server: &RedisServer) -> Vec<String> {
    keyspace(server)
        .into_keys()
        .filter(|k| k.contains("__stats"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_prints_a_frame_and_nothing_is_published_unless_watched() {
    let server = RedisServer::plain();
    let cache = app_cache(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let work = workload(&cache, Arc::clone(&stop));

    // Unwatched, the application only asks (HEXISTS): more than a poll interval of calls
    // leaves nothing of the stats behind.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(RUNS.load(SeqCst) > 0, "the workload runs");
    assert_eq!(stats_keys(&server), Vec::<String>::new());

    let (code, out, err) = cachectl(&server, &["top", "--once", "--json"]).await;
    assert_eq!(code, EXIT_OK, "{out}\n{err}");
    let frame: serde_json::Value = serde_json::from_str(&out).expect("one JSON frame");
    assert_eq!(frame["processes"], 1, "{frame:#}");
    assert_eq!(frame["prefix"], PREFIX, "{frame:#}");
    let users = frame["namespaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["namespace"] == "users"))
        .unwrap_or_else(|| panic!("no users row: {frame:#}"));
    assert!(
        users["ops_per_sec"].as_f64().is_some_and(|v| v > 0.0),
        "{frame:#}"
    );
    assert!(
        users["hit_ratio"].as_f64().is_some_and(|v| v > 0.5),
        "{frame:#}"
    );
    assert!(
        users["p99_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{frame:#}"
    );
    assert!(
        users["total_reads"].as_u64().is_some_and(|v| v > 0),
        "{frame:#}"
    );
    assert!(
        frame["server"]["keys"].as_u64().is_some_and(|k| k >= 1),
        "{frame:#}"
    );
    assert_eq!(frame["breaker_open"], serde_json::json!([]), "{frame:#}");
    assert_eq!(frame["error"], serde_json::Value::Null, "{frame:#}");

    // Watched, it published: one hash, which lives at most 5 s past the last refresh of
    // its watcher (the application stops writing once the watch mark is gone).
    let keys = stats_keys(&server);
    assert_eq!(keys, [format!("{PREFIX}:__stats")]);
    let start = Instant::now();
    while !stats_keys(&server).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the stats hash outlives its watcher"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Plain text, and the live view refused without a terminal.
    let (code, out, err) = cachectl(&server, &["top", "--iterations", "2"]).await;
    assert_eq!(code, EXIT_OK, "{out}\n{err}");
    assert_eq!(out.matches("cachectl top  redis://").count(), 2, "{out}");
    assert!(out.lines().any(|l| l.starts_with("users ")), "{out}");
    let (code, _, err) = cachectl(&server, &["top"]).await;
    assert_eq!(code, cli::EXIT_USAGE, "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("--once"),
        "{err}"
    );

    stop.store(true, SeqCst);
    work.await.expect("workload");
}
