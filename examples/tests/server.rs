//! End-to-end tests of the example server `tradistry-server`: the real binary is started
//! as a child process and every route is exercised over HTTP/1.1, once on the embedded
//! store and once on a throwaway `redis-server` from the `cache-tests` harness.
//!
//! The HTTP client is a few lines over `tokio::net::TcpStream` (one request per
//! connection, `Connection: close`), so no HTTP client crate is needed.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use cache_runtime::service::prompt_hash;
use cache_tests::{keyspace, RedisServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the server may take to print its "listening" line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one HTTP exchange (generous: a shared, noisy machine; a stopped Redis may cost
/// the server a connect attempt per request).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// A running `tradistry-server`; killed (SIGKILL) and reaped on drop, also while a test
/// panics.
struct ServerProcess {
    child: Child,
    /// `127.0.0.1:PORT` as printed by the server.
    addr: String,
    /// Everything the server printed (stdout and stderr), for failure messages.
    output: Arc<Mutex<String>>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty working directory for the server, so no `.env` file is picked up.
fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "tradistry-server-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the server's working directory");
    dir
}

impl ServerProcess {
    /// Starts the binary on a free port (`PORT=0`: the OS picks one, the server prints it)
    /// with every cache variable removed from the inherited environment, then `vars` set.
    fn start(vars: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tradistry-server"));
        for var in cache_runtime::config::VARIABLES {
            cmd.env_remove(var);
        }
        cmd.env_remove("BIND")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(scratch_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tradistry-server");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        // Both pipes are drained for the whole life of the process (the tracing log goes
        // to stdout), so the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                out.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(addr) = line.strip_prefix("tradistry-server listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut server = ServerProcess {
            child,
            addr: String::new(),
            output,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.addr = addr,
            Err(_) => panic!(
                "tradistry-server printed no 'listening' line within {START_TIMEOUT:?} (exit status {:?}); output:\n{}",
                server.child.try_wait(),
                server.output()
            ),
        }
        server
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    async fn get(&self, path: &str) -> Response {
        self.request("GET", path, None).await
    }

    async fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body)).await
    }

    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let what = format!("{method} {path}");
        match tokio::time::timeout(REQUEST_TIMEOUT, http(&self.addr, method, path, body)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{what} failed: {e}; server output:\n{}", self.output()),
            Err(_) => panic!(
                "{what}: no answer within {REQUEST_TIMEOUT:?}; server output:\n{}",
                self.output()
            ),
        }
    }

    /// How many queries reached the database so far (`GET /api/db/queries`).
    async fn queries(&self) -> u64 {
        let r = self.get("/api/db/queries").await;
        assert_eq!(r.status, 200, "GET /api/db/queries: {r:?}");
        r.json()["queries"]
            .as_u64()
            .unwrap_or_else(|| panic!("queries is not a number: {r:?}"))
    }

    async fn performance(&self, user: &str, timeframe: &str) -> Response {
        self.get(&format!(
            "/api/portfolio/{user}/performance?timeframe={timeframe}"
        ))
        .await
    }

    async fn chat(&self, user: &str, message: &str) -> Value {
        let r = self
            .post_json(
                "/api/ai/chat",
                &serde_json::json!({ "user_id": user, "message": message }),
            )
            .await;
        assert_eq!(r.status, 200, "POST /api/ai/chat: {r:?}");
        r.json()
    }

    async fn quote(&self, user: &str, symbol: &str) -> Response {
        self.get(&format!("/api/quotes/{user}/{symbol}")).await
    }
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client
// ---------------------------------------------------------------------------------------

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (with the body) when it is not JSON.
    fn json(&self) -> Value {
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?} is not JSON: {self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Response> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{e}: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some((_, len)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        rest.get(..len)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

// ---------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------

fn has_key(v: &Value, path: &str) -> bool {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur
            .get(part)
            .unwrap_or_else(|| panic!("no `{path}` in {v:#}"));
    }
    cur
}

/// Performance JSON without `calculated_at` (which says when it was computed).
fn without_time(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut()
        .expect("performance is an object")
        .remove("calculated_at");
    v
}

fn check_performance(r: &Response, user: &str, timeframe: &str) -> Value {
    assert_eq!(r.status, 200, "performance {user} {timeframe}: {r:?}");
    let v = r.json();
    assert_eq!(v["user_id"], user, "{v:#}");
    assert_eq!(v["timeframe"], timeframe, "{v:#}");
    assert!(v["trades"].is_u64(), "{v:#}");
    assert!(v["total_return"].is_number(), "{v:#}");
    assert!(v["win_rate"].is_number(), "{v:#}");
    assert!(v["calculated_at"].is_string(), "{v:#}");
    v
}

fn check_quote(r: &Response, symbol: &str, price: f64) -> Value {
    assert_eq!(r.status, 200, "quote {symbol}: {r:?}");
    let v = r.json();
    assert_eq!(v["symbol"], symbol, "{v:#}");
    assert_eq!(v["price"].as_f64(), Some(price), "{v:#}");
    assert!(v["volume"].as_u64().is_some_and(|n| n > 0), "{v:#}");
    v
}

const MESSAGE: &str = "How did I do this month?";

/// `GET /api/health/redis` in the seed's shape; returns the JSON.
async fn check_health_redis(server: &ServerProcess, on_redis: bool) -> Value {
    let r = server.get("/api/health/redis").await;
    assert_eq!(r.status, 200, "health/redis: {r:?}");
    let v = r.json();
    assert_eq!(v["status"], "healthy", "{v:#}");
    assert_eq!(v["connected"], true, "{v:#}");
    for path in [
        "status",
        "connected",
        "info.server.version",
        "info.server.mode",
        "info.server.uptime",
        "info.clients.connected",
        "info.clients.blocked",
        "info.pool.max_connections",
        "info.pool.created_connections",
        "info.pool.available_connections",
        "timestamp",
    ] {
        assert!(has_key(&v, path), "health/redis lacks `{path}`: {v:#}");
    }
    assert!(at(&v, "timestamp")
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(at(&v, "info.server.version").is_string(), "{v:#}");
    assert!(at(&v, "info.server.uptime").is_u64(), "{v:#}");
    if on_redis {
        assert_eq!(v["backend"], "redis", "{v:#}");
        assert!(
            at(&v, "info.server.version")
                .as_str()
                .is_some_and(|s| s.chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{v:#}"
        );
        assert_eq!(at(&v, "info.server.mode"), "standalone", "{v:#}");
        assert!(
            at(&v, "info.clients.connected")
                .as_u64()
                .is_some_and(|n| n >= 1),
            "{v:#}"
        );
        assert!(at(&v, "info.clients.blocked").is_u64(), "{v:#}");
        assert_eq!(at(&v, "info.pool.max_connections"), 50, "{v:#}");
        assert!(
            at(&v, "info.pool.created_connections")
                .as_u64()
                .is_some_and(|n| n >= 1),
            "{v:#}"
        );
        assert!(at(&v, "info.pool.available_connections").is_u64(), "{v:#}");
    } else {
        assert_eq!(v["backend"], "embedded", "{v:#}");
        assert_eq!(at(&v, "info.server.mode"), "embedded", "{v:#}");
    }
    v
}

/// `GET /api/health/cache` in the seed's shape; returns the JSON.
async fn check_health_cache(server: &ServerProcess) -> Value {
    let r = server.get("/api/health/cache").await;
    assert_eq!(r.status, 200, "health/cache: {r:?}");
    let v = r.json();
    assert!(at(&v, "memory.used_memory").is_u64(), "{v:#}");
    assert!(at(&v, "memory.used_memory_human").is_string(), "{v:#}");
    assert!(at(&v, "memory.maxmemory").is_u64(), "{v:#}");
    assert!(at(&v, "keys.total").is_u64(), "{v:#}");
    let by_ns = at(&v, "keys.by_namespace");
    for ns in ["users", "ai", "trading", "analytics", "general"] {
        assert!(by_ns[ns].is_u64(), "keys.by_namespace.{ns} missing: {v:#}");
    }
    assert!(at(&v, "counters").is_object(), "{v:#}");
    assert!(at(&v, "timestamp")
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    v
}

/// The whole tour of the routes; `redis` is the server the example runs on, if any.
async fn exercise(server: &ServerProcess, redis: Option<&RedisServer>) {
    check_health_redis(server, redis.is_some()).await;

    // --- performance (#[cache_user_specific]) ---
    let q0 = server.queries().await;
    let first = check_performance(&server.performance("user_1", "30d").await, "user_1", "30d");
    assert_eq!(server.queries().await, q0 + 1, "first call reaches the DB");
    let second = check_performance(&server.performance("user_1", "30d").await, "user_1", "30d");
    let q1 = server.queries().await;
    assert_eq!(
        q1,
        q0 + 1,
        "second identical performance call must be a cache hit (no DB query)"
    );
    assert_eq!(second, first, "a hit returns the cached JSON unchanged");
    // The default timeframe is 30d: the same entry.
    let default = server.get("/api/portfolio/user_1/performance").await;
    assert_eq!(check_performance(&default, "user_1", "30d"), first);
    assert_eq!(server.queries().await, q1, "default timeframe is a hit");
    // Another timeframe: another entry.
    let week = check_performance(&server.performance("user_1", "7d").await, "user_1", "7d");
    assert_eq!(
        server.queries().await,
        q1 + 1,
        "another timeframe is a miss"
    );
    assert!(week["trades"].as_u64() <= first["trades"].as_u64());
    // A bad timeframe: 400 with the reason, never cached.
    let q2 = server.queries().await;
    let bad = server.performance("user_1", "bogus").await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let msg = bad.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("unknown timeframe"), "{msg:?}");
    assert!(msg.contains("30d"), "the error says what is valid: {msg:?}");
    assert_eq!(server.queries().await, q2 + 1);
    let bad = server.performance("user_1", "bogus").await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(
        server.queries().await,
        q2 + 2,
        "an error is not cached: the retry queries again"
    );

    // --- AI chat ---
    let c1 = server.chat("user_1", MESSAGE).await;
    assert_eq!(c1["cached"], false, "{c1:#}");
    assert_eq!(c1["prompt_hash"], prompt_hash(MESSAGE), "{c1:#}");
    let content = c1["content"].as_str().unwrap_or_default().to_owned();
    assert!(content.contains(MESSAGE), "{c1:#}");
    let c2 = server.chat("user_1", MESSAGE).await;
    assert_eq!(
        c2["cached"], true,
        "second identical chat is cached: {c2:#}"
    );
    assert_eq!(c2["content"], c1["content"]);
    assert_eq!(c2["prompt_hash"], c1["prompt_hash"]);
    let other = server.chat("user_1", "Another question").await;
    assert_eq!(other["cached"], false, "another prompt: {other:#}");

    // --- quotes ---
    let q3 = server.queries().await;
    let aapl = check_quote(&server.quote("user_1", "AAPL").await, "AAPL", 100.0);
    assert_eq!(server.queries().await, q3 + 1, "first quote reaches the DB");
    let again = check_quote(&server.quote("user_1", "AAPL").await, "AAPL", 100.0);
    assert_eq!(again, aapl);
    assert_eq!(server.queries().await, q3 + 1, "second quote is a hit");
    let missing = server.quote("user_1", "ZZZZ").await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(
        missing.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("ZZZZ")),
        "{missing:?}"
    );
    assert_eq!(server.queries().await, q3 + 2);

    // --- another user's entries, which clearing user_1 must not touch ---
    let u2_perf = check_performance(&server.performance("user_2", "30d").await, "user_2", "30d");
    assert_eq!(server.chat("user_2", MESSAGE).await["cached"], false);
    check_quote(&server.quote("user_2", "MSFT").await, "MSFT", 125.5);

    // --- the key layout in Redis ---
    if let Some(redis) = redis {
        let keys = keyspace(redis);
        let names: Vec<&String> = keys.keys().collect();
        for key in [
            "tradistry:trading:{user:user_1}:AAPL:quote".to_owned(),
            format!(
                "tradistry:ai:{{user:user_1}}:prompt:{}",
                prompt_hash(MESSAGE)
            ),
            "tradistry:trading:{user:user_2}:MSFT:quote".to_owned(),
            "tradistry:__index:{user:user_1}".to_owned(),
        ] {
            assert!(keys.contains_key(&key), "no {key} in Redis: {names:#?}");
        }
        let perf_keys = names
            .iter()
            .filter(|k| k.starts_with("tradistry:analytics:{user:user_1}:"))
            .count();
        assert_eq!(
            perf_keys, 2,
            "30d and 7d performance of user_1 are cached under tradistry:analytics:{{user:user_1}}:…: {names:#?}"
        );
        assert!(
            !names
                .iter()
                .any(|k| k.contains("ZZZZ") || k.contains("bogus")),
            "failures are not cached: {names:#?}"
        );
    }

    // --- health/cache sees the entries ---
    let stats = check_health_cache(server).await;
    let by_ns = at(&stats, "keys.by_namespace");
    assert!(by_ns["ai"].as_u64() >= Some(3), "{stats:#}");
    assert!(by_ns["trading"].as_u64() >= Some(2), "{stats:#}");
    assert!(
        by_ns["analytics"].as_u64() >= Some(3),
        "performance entries: {stats:#}"
    );
    assert!(
        at(&stats, "counters.ai.hits").as_u64() >= Some(1),
        "the cached chat counts as a hit: {stats:#}"
    );

    // --- DELETE the user's cache ---
    let r = server.delete("/api/users/user_1/cache").await;
    assert_eq!(r.status, 200, "{r:?}");
    let cleared = r.json();
    assert_eq!(cleared["user_id"], "user_1", "{cleared:#}");
    assert!(
        cleared["cleared"].as_u64() >= Some(3),
        "performance + chat + quote of user_1 are cleared: {cleared:#}"
    );
    if let Some(redis) = redis {
        let keys = keyspace(redis);
        let names: Vec<&String> = keys.keys().collect();
        assert!(
            !names.iter().any(|k| k.contains(":{user:user_1}:")),
            "user_1's keys are gone: {names:#?}"
        );
        assert!(
            keys.contains_key("tradistry:trading:{user:user_2}:MSFT:quote"),
            "user_2's keys stay: {names:#?}"
        );
    }
    // user_1 misses again.
    let q4 = server.queries().await;
    let after = check_performance(&server.performance("user_1", "30d").await, "user_1", "30d");
    assert_eq!(without_time(&after), without_time(&first));
    assert_eq!(
        server.queries().await,
        q4 + 1,
        "performance misses after clear"
    );
    assert_eq!(server.chat("user_1", MESSAGE).await["cached"], false);
    check_quote(&server.quote("user_1", "AAPL").await, "AAPL", 100.0);
    assert_eq!(server.queries().await, q4 + 2, "quote misses after clear");
    // user_2 still hits.
    let u2_again = check_performance(&server.performance("user_2", "30d").await, "user_2", "30d");
    assert_eq!(u2_again, u2_perf, "user_2's performance is still cached");
    assert_eq!(server.chat("user_2", MESSAGE).await["cached"], true);
    check_quote(&server.quote("user_2", "MSFT").await, "MSFT", 125.5);
    assert_eq!(
        server.queries().await,
        q4 + 2,
        "user_2's entries survive clearing user_1"
    );
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_the_embedded_store() {
    let server = ServerProcess::start(&[]);
    exercise(&server, None).await;
    let out = server.output();
    assert!(
        out.contains("embedded"),
        "the server says it uses the embedded store: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_on_redis_and_fail_open_when_it_stops() {
    let mut redis = RedisServer::plain();
    let url = redis.url();
    let server = ServerProcess::start(&[
        ("REDIS_URL", url.as_str()),
        // Bounded waits once Redis is gone (still generous for a noisy machine).
        ("REDIS_SOCKET_TIMEOUT", "3"),
        ("REDIS_SOCKET_CONNECT_TIMEOUT", "3"),
    ]);
    exercise(&server, Some(&redis)).await;

    // Fill user_3's entries while Redis is up, to compare after it stops.
    let before = check_performance(&server.performance("user_3", "90d").await, "user_3", "90d");
    let quote = check_quote(&server.quote("user_3", "NVDA").await, "NVDA", 202.0);

    redis.stop();

    let r = server.get("/api/health/redis").await;
    assert_eq!(r.status, 503, "health/redis with Redis stopped: {r:?}");
    let v = r.json();
    assert_eq!(v["status"], "unhealthy", "{v:#}");
    assert_eq!(v["connected"], false, "{v:#}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v:#}");
    assert!(v["timestamp"].is_string(), "{v:#}");

    // Fail open: correct data from the database, no error.
    let q = server.queries().await;
    let after = check_performance(&server.performance("user_3", "90d").await, "user_3", "90d");
    assert_eq!(without_time(&after), without_time(&before));
    assert_eq!(
        server.queries().await,
        q + 1,
        "with Redis down the function body runs"
    );
    let fresh = check_performance(&server.performance("user_4", "1y").await, "user_4", "1y");
    assert!(fresh["trades"].as_u64().is_some_and(|n| n > 0), "{fresh:#}");
    assert_eq!(
        check_quote(&server.quote("user_3", "NVDA").await, "NVDA", 202.0),
        quote
    );
    let chat = server.chat("user_3", MESSAGE).await;
    assert_eq!(chat["cached"], false, "{chat:#}");
    assert!(chat["content"]
        .as_str()
        .is_some_and(|c| c.contains(MESSAGE)));

    // Statistics still answer (with what is unknown as null); clearing reports the outage.
    let r = server.get("/api/health/cache").await;
    assert_eq!(r.status, 200, "{r:?}");
    let stats = r.json();
    assert!(
        stats["error"].is_string(),
        "the outage is reported: {stats:#}"
    );
    let r = server.delete("/api/users/user_3/cache").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");

    let out = server.output();
    assert!(!out.contains("panicked"), "the server never panics: {out}");
}
