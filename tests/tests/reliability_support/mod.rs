//! Helpers shared by the `reliability_*` test binaries and a few others (`l1_coherence`,
//! `flight_release`); each includes this module, and not every binary uses every helper.
//! `tap` is a proxy that fails one kind of connection at a time.
#![allow(dead_code)]

pub mod tap;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One multi-threaded runtime for the whole test binary.
///
/// The global cache's connections are driven by tasks spawned on the runtime that opened
/// them; with `#[tokio::test]` each test has its own runtime, which is shut down at the
/// end of that test. Every test of a binary therefore runs on this one runtime instead
/// (`#[test] fn t() { block_on(async { … }) }`).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Runs `fut` on [`runtime`].
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

/// Calls `check` every `every` until it returns `true` or `limit` passes; how long it took.
pub async fn poll_until(
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The median of some durations (sorted in place).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

// ------------------------------------------------------------------------- memory

/// `(VmRSS, VmHWM)` of this process in KiB, from `/proc/self/status` (Linux).
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

// -------------------------------------------------------------------------- proxy

/// A TCP proxy between the cache and a server that can be told to stall: while stalled
/// it accepts connections and reads what clients send, but forwards nothing in either
/// direction (a hung server, a black-holed network path) until told to forward again.
pub struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    stalled: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) and forwards to `upstream`. Needs a runtime.
    pub async fn start(bind: &str, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("proxy cannot bind {bind}: {e}"));
        let addr = listener.local_addr().expect("proxy local_addr");
        let (stalled, _) = watch::channel(false);
        let stalled_tx = stalled.clone();
        let upstream = Arc::new(Mutex::new(upstream));
        let target = Arc::clone(&upstream);
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: aborting it ends every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let rx = stalled_tx.subscribe();
                let upstream = *target.lock().unwrap_or_else(PoisonError::into_inner);
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = pump(ri, wo, rx.clone());
                    let down = pump(ro, wi, rx);
                    let _ = tokio::join!(up, down);
                });
                // Reap finished connections.
                while connections.try_join_next().is_some() {}
            }
        });
        Proxy {
            addr,
            upstream,
            stalled,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections accepted from now on are forwarded.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    /// Stops forwarding (bytes are held, connections stay open).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again (held bytes go through first).
    pub fn forward(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// -------------------------------------------------------------------- log capture

/// A `tracing` subscriber that keeps every event and every span's fields as text, at
/// every level and for every target.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    /// Installs one capture as the process-wide `tracing` subscriber and `log` logger
    /// (once per binary) and returns it.
    pub fn global() -> Capture {
        static CAPTURE: OnceLock<Capture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = Capture::default();
                tracing::subscriber::set_global_default(capture.clone())
                    .expect("no other global subscriber in this test binary");
                log::set_logger(Box::leak(Box::new(capture.clone())))
                    .expect("no other logger in this test binary");
                log::set_max_level(log::LevelFilter::Trace);
                capture
            })
            .clone()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn push(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.push(format!(
            "LOG {} {}: {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(format!("SPAN {}:", attrs.metadata().name()));
        attrs.record(&mut fields);
        self.push(fields.0);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Fields("SPAN-RECORD:".to_owned());
        values.record(&mut fields);
        self.push(fields.0);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut fields);
        self.push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
