//! `cachectl top`: every process using this Redis and key prefix, live.
//!
//! Each refresh marks the stats hash watched and reads it in one round trip
//! (`Store::watch_stats`; the format is in `crate::stats_publisher`), and asks the server
//! for its facts (`server_facts`, `memory_facts`, `key_total`). Rates are differences of
//! one process's successive snapshots over that process's own clock, summed over the
//! processes; p50/p99 are interpolated from the read-latency buckets they added since.
//!
//! The live view (cargo feature `tui`) takes the terminal (raw mode, alternate screen, no
//! cursor) behind a guard that gives it back on every way out: `q`, Esc, Ctrl-C, SIGTERM,
//! SIGHUP, an error, a panic. `--once` and `--iterations N` print plain frames instead.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{diagnose, fail, print_json, utc, Io, EXIT_OK, EXIT_USAGE};
use crate::backend::{MemoryFacts, ServerFacts, Store};
use crate::stats_publisher::{
    stats_key, stats_key_of, unix_ms, NamespaceFigures, Snapshot, FORMAT, PERIOD, POLL, WATCH_FIELD,
};
use crate::{Cache, CacheError};

/// A process whose snapshot has not changed for this long is not shown.
const STALE_AFTER: Duration = Duration::from_secs(5);
/// ... and its field is removed from the hash after this long.
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How long `--once` waits for every process to publish twice (rates need two snapshots):
/// a poll interval for them to notice the watcher, two periods, and slack.
const WARM_UP: Duration = Duration::from_secs(7);

/// What one process has published, as seen here.
struct Seen {
    last: Snapshot,
    /// The snapshot before `last`: rates are the difference.
    prev: Option<Snapshot>,
    /// When `last` arrived, by this process's clock.
    changed: Instant,
}

/// Reads the stats hash and remembers each process's last two snapshots.
struct Sampler<'a> {
    cache: &'a Cache,
    key: String,
    seen: BTreeMap<String, Seen>,
    /// Fields of processes gone, removed with the next read.
    forget: Vec<String>,
    /// Fields this build could not read at the last refresh.
    unreadable: usize,
}

impl<'a> Sampler<'a> {
    fn new(cache: &'a Cache) -> Self {
        Self {
            cache,
            key: stats_key(cache.keys()),
            seen: BTreeMap::new(),
            forget: Vec::new(),
            unreadable: 0,
        }
    }

    async fn refresh(&mut self) -> Result<(), CacheError> {
        let fields = self
            .cache
            .backend()
            .watch_stats(stats_key_of(&self.key), &self.forget)
            .await?;
        self.forget.clear();
        self.unreadable = 0;
        let now = Instant::now();
        // A field gone from the hash (it expired, or another `top` removed it) is gone.
        self.seen.retain(|id, _| fields.contains_key(id));
        for (id, bytes) in fields {
            if id == WATCH_FIELD {
                continue;
            }
            let snapshot = match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(s) if s.format >= 1 => s,
                _ => {
                    self.unreadable += 1;
                    continue;
                }
            };
            match self.seen.entry(id) {
                Entry::Vacant(e) => {
                    e.insert(Seen {
                        last: snapshot,
                        prev: None,
                        changed: now,
                    });
                }
                Entry::Occupied(mut e) => {
                    let seen = e.get_mut();
                    if snapshot.at_ms != seen.last.at_ms {
                        seen.prev = Some(std::mem::replace(&mut seen.last, snapshot));
                        seen.changed = now;
                    }
                }
            }
        }
        for (id, seen) in &self.seen {
            if now.duration_since(seen.changed) > FORGET_AFTER {
                self.forget.push(id.clone());
            }
        }
        Ok(())
    }

    /// The processes that published lately.
    fn alive(&self) -> impl Iterator<Item = &Seen> {
        let now = Instant::now();
        self.seen
            .values()
            .filter(move |s| now.duration_since(s.changed) <= STALE_AFTER)
    }

    /// Whether every live process has published twice (and there is one).
    fn warm(&self) -> bool {
        let mut alive = self.alive().peekable();
        alive.peek().is_some() && alive.all(|s| s.prev.is_some())
    }

    /// Refreshes, asks the server, and computes a frame.
    async fn frame(&mut self) -> (Frame, Option<CacheError>) {
        let cache = self.cache;
        let backend = cache.backend();
        let (read, facts, memory, keys) = tokio::join!(
            self.refresh(),
            backend.server_facts(),
            backend.memory_facts(),
            backend.key_total()
        );
        let error = read.err();
        let mut frame = self.compute();
        frame.server = server_line(facts, memory, keys);
        frame.error = error.as_ref().map(|e| e.to_string());
        (frame, error)
    }

    fn compute(&self) -> Frame {
        let mut frame = Frame {
            endpoint: self.cache.backend().endpoint().shown,
            prefix: self.cache.keys().prefix().to_owned(),
            at_ms: unix_ms(),
            ..Frame::default()
        };
        let mut sums: BTreeMap<String, Sum> = BTreeMap::new();
        // Latency buckets add up only between processes with the same bounds: those of the
        // first process that has them.
        let mut bounds: Option<&[f64]> = None;
        let mut rates_known = false;
        for seen in self.alive() {
            let last = &seen.last;
            frame.processes += 1;
            if last.circuit_open {
                frame.breaker_open.push(last.instance.clone());
            }
            if let Some(pool) = last.pool {
                *frame.connections.get_or_insert(0) += pool.connections;
                *frame.max_connections.get_or_insert(0) += pool.max;
            }
            for (ns, figures) in &last.namespaces {
                let sum = sums.entry(ns.clone()).or_default();
                sum.total_reads += reads(figures);
                sum.total_errors += figures.errors;
                sum.total_stale += figures.stale_served;
            }
            let Some(prev) = &seen.prev else { continue };
            let seconds = last.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0;
            if seconds <= 0.0 {
                continue;
            }
            rates_known = true;
            let same_bounds = match (&last.latency_bounds_seconds, bounds) {
                (Some(b), None) => {
                    bounds = Some(b);
                    true
                }
                (Some(b), Some(reference)) => b.as_slice() == reference,
                (None, _) => false,
            };
            for (ns, now) in &last.namespaces {
                let before = prev.namespaces.get(ns).cloned().unwrap_or_default();
                let sum = sums.entry(ns.clone()).or_default();
                let per_second = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
                sum.measured = true;
                sum.reads += per_second(reads(now), reads(&before));
                sum.hits += per_second(
                    now.hits_l1 + now.hits_store,
                    before.hits_l1 + before.hits_store,
                );
                sum.l1_hits += per_second(now.hits_l1, before.hits_l1);
                sum.errors += per_second(now.errors, before.errors);
                sum.stale += per_second(now.stale_served, before.stale_served);
                sum.stores += per_second(now.stores, before.stores);
                if let (true, Some(h)) = (same_bounds, &now.read_seconds) {
                    let earlier = before.read_seconds.as_ref();
                    if sum.buckets.len() < h.buckets.len() {
                        sum.buckets.resize(h.buckets.len(), 0);
                    }
                    for (i, n) in h.buckets.iter().enumerate() {
                        let was = earlier.and_then(|e| e.buckets.get(i)).copied().unwrap_or(0);
                        sum.buckets[i] += n.saturating_sub(was);
                    }
                }
            }
        }
        frame.latency = bounds.is_some();
        frame.namespaces = sums
            .into_iter()
            .map(|(namespace, s)| {
                let measured = s.measured;
                let rate = |v: f64| measured.then_some(v);
                let ratio = |part: f64| (measured && s.reads > 0.0).then(|| part / s.reads);
                let q = |q: f64| {
                    bounds
                        .and_then(|b| quantile(b, &s.buckets, q))
                        .map(|v| v * 1000.0)
                };
                Row {
                    namespace,
                    ops_per_sec: rate(s.reads),
                    hit_ratio: ratio(s.hits),
                    l1_ratio: ratio(s.l1_hits),
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                    errors_per_sec: rate(s.errors),
                    stale_per_sec: rate(s.stale),
                    stores_per_sec: rate(s.stores),
                    total_reads: s.total_reads,
                    total_errors: s.total_errors,
                    total_stale_served: s.total_stale,
                }
            })
            .collect();
        frame.note = if frame.processes == 0 {
            Some(format!(
                "no process publishes under prefix {:?} yet: a process looks for a watcher every {} s from its cache's first use on (same REDIS_KEY_PREFIX?)",
                frame.prefix,
                POLL.as_secs()
            ))
        } else if !rates_known {
            Some("measuring: rates need two snapshots of a process, a second apart".to_owned())
        } else if !frame.latency {
            Some(
                "p50/p99 need the application built with cache-runtime's feature `metrics`"
                    .to_owned(),
            )
        } else {
            None
        };
        if self.unreadable > 0 {
            let more = format!(
                "{} snapshot(s) unreadable (a format newer than {FORMAT}?)",
                self.unreadable
            );
            frame.note = Some(frame.note.map_or(more.clone(), |n| format!("{n}; {more}")));
        }
        frame
    }
}

fn reads(f: &NamespaceFigures) -> u64 {
    f.hits_l1 + f.hits_store + f.misses
}

/// One namespace's figures, summed over processes (rates per second).
#[derive(Default)]
struct Sum {
    measured: bool,
    reads: f64,
    hits: f64,
    l1_hits: f64,
    errors: f64,
    stale: f64,
    stores: f64,
    /// Read-latency observations since each process's previous snapshot.
    buckets: Vec<u64>,
    total_reads: u64,
    total_errors: u64,
    total_stale: u64,
}

/// The `q` quantile of `buckets` (counts per bucket, the last past every bound) in
/// seconds, interpolated linearly inside its bucket as PromQL's `histogram_quantile` does.
/// The publisher's own histogram does the same in process; this one reads the published
/// bounds, so that a `cachectl` built without the feature `metrics` shows them too.
fn quantile(bounds: &[f64], buckets: &[u64], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * count as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        let upto = below + n;
        if n > 0 && upto as f64 >= rank {
            let Some(&hi) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lo = i
                .checked_sub(1)
                .and_then(|j| bounds.get(j))
                .copied()
                .unwrap_or(0.0);
            return Some(lo + (hi - lo) * (rank - below as f64) / n as f64);
        }
        below = upto;
    }
    bounds.last().copied()
}

/// One screen's figures (also `--json`'s).
#[derive(Debug, Default, Serialize)]
struct Frame {
    endpoint: String,
    prefix: String,
    at_ms: u64,
    server: Server,
    /// Processes that published within the last 5 s.
    processes: usize,
    /// The processes whose breaker is open (calls bypass Redis).
    breaker_open: Vec<String>,
    /// Connections the processes' pools opened, and may open.
    connections: Option<u64>,
    max_connections: Option<u64>,
    /// Whether p50/p99 are known (a process publishes latency histograms).
    latency: bool,
    namespaces: Vec<Row>,
    note: Option<String>,
    /// Why this refresh could not read the processes' figures.
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Server {
    version: Option<String>,
    mode: Option<String>,
    clients: Option<u64>,
    used_memory: Option<u64>,
    used_memory_human: Option<String>,
    maxmemory: Option<u64>,
    maxmemory_policy: Option<String>,
    keys: Option<u64>,
    problem: Option<String>,
}

fn server_line(
    facts: Result<ServerFacts, CacheError>,
    memory: Result<MemoryFacts, CacheError>,
    keys: Result<Option<u64>, CacheError>,
) -> Server {
    let mut server = Server::default();
    match facts {
        Ok(f) => {
            server.version = f.version;
            server.mode = f.mode;
            server.problem = f.problem;
            server.clients = f.clients_connected;
        }
        Err(e) => server.problem = Some(e.to_string()),
    }
    if let Ok(m) = memory {
        server.used_memory = m.used;
        server.used_memory_human = m.used_human;
        server.maxmemory = m.max;
        server.maxmemory_policy = m.policy;
    }
    server.keys = keys.ok().flatten();
    server
}

/// Per-namespace figures over the last interval, summed over processes.
#[derive(Debug, Default, Serialize)]
struct Row {
    namespace: String,
    /// Reads (hits and misses: decorated calls and manual gets) per second.
    ops_per_sec: Option<f64>,
    hit_ratio: Option<f64>,
    /// The part of reads served by the in-process L1.
    l1_ratio: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors_per_sec: Option<f64>,
    stale_per_sec: Option<f64>,
    stores_per_sec: Option<f64>,
    /// Since the processes started.
    total_reads: u64,
    total_errors: u64,
    total_stale_served: u64,
}

/// The frame as lines of text, at most `width` characters each.
fn render(frame: &Frame, width: usize, live: bool) -> Vec<String> {
    let s = &frame.server;
    let mut lines = Vec::new();
    let server = match (&s.version, &s.mode) {
        (Some(v), Some(m)) => format!("Redis {v} {m}"),
        (Some(v), None) => format!("Redis {v}"),
        _ => "Redis".to_owned(),
    };
    lines.push(format!(
        "cachectl top  {}  {server}  prefix {}  {}",
        frame.endpoint,
        frame.prefix,
        utc(frame.at_ms)
    ));
    let breaker = if frame.breaker_open.is_empty() {
        "breaker closed".to_owned()
    } else {
        format!(
            "breaker OPEN in {} of {} ({})",
            frame.breaker_open.len(),
            frame.processes,
            frame.breaker_open.join(", ")
        )
    };
    let pool = match (frame.connections, frame.max_connections) {
        (Some(c), Some(m)) => format!("pool {c}/{m} connections"),
        _ => "pool -".to_owned(),
    };
    lines.push(format!(
        "processes {}  {breaker}  {pool}  server clients {}",
        frame.processes,
        opt(s.clients)
    ));
    let max = match s.maxmemory {
        Some(0) | None => "none".to_owned(),
        Some(m) => crate::backend::human_bytes(m),
    };
    lines.push(format!(
        "memory {} (max {max}, {})  keys {}",
        s.used_memory_human.as_deref().unwrap_or("-"),
        s.maxmemory_policy.as_deref().unwrap_or("policy -"),
        opt(s.keys)
    ));
    lines.push(String::new());
    lines.push(format!(
        "{:<20} {:>9} {:>7} {:>6} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "NAMESPACE", "OPS/S", "HIT%", "L1%", "P50 ms", "P99 ms", "ERR/S", "STALE/S", "STORES/S"
    ));
    for row in &frame.namespaces {
        lines.push(format!(
            "{:<20} {:>9} {:>7} {:>6} {:>8} {:>8} {:>7} {:>7} {:>8}",
            clip(&row.namespace, 20),
            rate(row.ops_per_sec),
            percent(row.hit_ratio),
            percent(row.l1_ratio),
            millis(row.p50_ms),
            millis(row.p99_ms),
            rate(row.errors_per_sec),
            rate(row.stale_per_sec),
            rate(row.stores_per_sec),
        ));
    }
    if frame.namespaces.is_empty() {
        lines.push("(no namespace yet)".to_owned());
    }
    lines.push(String::new());
    if let Some(e) = &frame.error {
        lines.push(format!("Redis: {e} (retrying)"));
    }
    if let Some(p) = &s.problem {
        lines.push(format!("server: {p}"));
    }
    if let Some(n) = &frame.note {
        lines.push(n.clone());
    }
    lines.push(if live {
        "q quit   ops = reads (hits + misses) per second over the last interval, all processes"
            .to_owned()
    } else {
        "ops = reads (hits + misses) per second over the last interval, all processes".to_owned()
    });
    lines.into_iter().map(|l| clip(&l, width)).collect()
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn millis(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// At most `width` characters (not bytes: a namespace is ASCII, an error may not be).
fn clip(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// `cachectl top`: `iterations` frames, or the live view on a terminal.
pub(super) async fn run(
    io: &mut Io<'_>,
    cache: &Cache,
    json: bool,
    iterations: Option<u64>,
    terminal: bool,
) -> u8 {
    // Say why now, not in the first frame: a wrong configuration is the usual reason.
    if let Err(e) = cache.connect().await {
        return fail(io, json, &e);
    }
    match iterations {
        Some(n) => frames(io, cache, json, n).await,
        None if !terminal || json => {
            let _ = writeln!(
                io.err,
                "error: cachectl top's live view needs a terminal (stdin and stdout), and has no JSON: pass --once for one frame, or --iterations N"
            );
            EXIT_USAGE
        }
        None => live(io, cache).await,
    }
}

/// `--once` / `--iterations N`: plain frames a second apart (JSON lines with `--json`; one
/// pretty object for `--once`). The first waits until every process has published twice,
/// at most [`WARM_UP`].
async fn frames(io: &mut Io<'_>, cache: &Cache, json: bool, n: u64) -> u8 {
    let mut sampler = Sampler::new(cache);
    let start = Instant::now();
    let mut last_error = None;
    for i in 0..n {
        let (frame, error) = loop {
            let (frame, error) = sampler.frame().await;
            if i > 0 || error.is_some() || sampler.warm() || start.elapsed() >= WARM_UP {
                break (frame, error);
            }
            tokio::time::sleep(PERIOD).await;
        };
        last_error = error;
        if json && n == 1 {
            print_json(io, &frame);
        } else if json {
            match serde_json::to_string(&frame) {
                Ok(line) => {
                    let _ = writeln!(io.out, "{line}");
                }
                Err(e) => {
                    let _ = writeln!(io.err, "error: cannot render JSON: {e}");
                }
            }
        } else {
            if i > 0 {
                let _ = writeln!(io.out);
            }
            for line in render(&frame, usize::MAX, false) {
                let _ = writeln!(io.out, "{line}");
            }
        }
        let _ = io.out.flush();
        if i + 1 < n {
            tokio::time::sleep(PERIOD).await;
        }
    }
    // The figures were shown; a failure of the last read still decides the exit code.
    last_error.map_or(EXIT_OK, |e| diagnose(&e).0)
}

#[cfg(not(feature = "tui"))]
async fn live(io: &mut Io<'_>, _cache: &Cache) -> u8 {
    let _ = writeln!(
        io.err,
        "error: this cachectl was built without the live view (cargo feature `tui` of cache-runtime): run `cargo run -p cache-runtime --features tui --bin cachectl -- top`, or pass --once / --iterations N"
    );
    EXIT_USAGE
}

#[cfg(feature = "tui")]
async fn live(io: &mut Io<'_>, cache: &Cache) -> u8 {
    match screen::show(cache).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            // The terminal is back (the guard is gone): the message stays visible.
            let _ = writeln!(io.err, "error: cachectl top: {e}");
            super::EXIT_FAILURE
        }
    }
}

/// The live view: crossterm on the process's own terminal.
#[cfg(feature = "tui")]
mod screen {
    use std::io::Write;

    use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
    use crossterm::{cursor, execute, queue, style, terminal};
    use futures_util::StreamExt as _;

    use super::{render, Sampler, PERIOD};
    use crate::Cache;

    /// Raw mode, the alternate screen and a hidden cursor while it lives; given back when
    /// it is dropped, however the view ends (a panic unwinds through it too).
    struct Screen;

    impl Screen {
        fn enter() -> std::io::Result<Self> {
            terminal::enable_raw_mode()?;
            // From here on, dropping it restores the terminal, even if the rest fails.
            let screen = Self;
            execute!(
                std::io::stdout(),
                terminal::EnterAlternateScreen,
                cursor::Hide,
                terminal::Clear(terminal::ClearType::All)
            )?;
            Ok(screen)
        }
    }

    impl Drop for Screen {
        fn drop(&mut self) {
            let _ = execute!(
                std::io::stdout(),
                cursor::Show,
                terminal::LeaveAlternateScreen
            );
            let _ = terminal::disable_raw_mode();
        }
    }

    /// `q`, `Q`, Esc, Ctrl-C (raw mode turns it into a key, not a SIGINT).
    fn quits(key: &KeyEvent) -> bool {
        key.kind != KeyEventKind::Release
            && (matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c')
                    && key.modifiers.contains(KeyModifiers::CONTROL)))
    }

    /// Resolves when the user or a signal asks to quit; fails when the terminal cannot be
    /// read.
    async fn quit_requested(events: &mut EventStream) -> std::io::Result<()> {
        #[cfg(unix)]
        let (mut term, mut hup) = {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            )
        };
        loop {
            #[cfg(unix)]
            let event = tokio::select! {
                e = events.next() => e,
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            #[cfg(not(unix))]
            let event = tokio::select! {
                e = events.next() => e,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match event {
                Some(Ok(Event::Key(key))) if quits(&key) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the terminal closed",
                    ))
                }
            }
        }
    }

    fn draw(lines: &[String]) -> std::io::Result<()> {
        let (width, height) = terminal::size().unwrap_or((80, 24));
        let mut out = std::io::stdout().lock();
        let mut row = 0u16;
        for line in lines.iter().take(usize::from(height)) {
            queue!(
                out,
                cursor::MoveTo(0, row),
                style::Print(super::clip(line, usize::from(width))),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
            row += 1;
        }
        if row < height {
            queue!(
                out,
                cursor::MoveTo(0, row),
                terminal::Clear(terminal::ClearType::FromCursorDown)
            )?;
        }
        out.flush()
    }

    /// Refreshes every [`PERIOD`] until asked to quit; a refresh in flight is abandoned.
    pub(super) async fn show(cache: &Cache) -> std::io::Result<()> {
        let screen = Screen::enter()?;
        let mut events = EventStream::new();
        let mut sampler = Sampler::new(cache);
        let result = async {
            loop {
                let frame = tokio::select! {
                    (frame, _) = sampler.frame() => frame,
                    quit = quit_requested(&mut events) => return quit,
                };
                let width = terminal::size().map_or(80, |(w, _)| usize::from(w));
                draw(&render(&frame, width, true))?;
                tokio::select! {
                    () = tokio::time::sleep(PERIOD) => {}
                    quit = quit_requested(&mut events) => return quit,
                }
            }
        }
        .await;
        drop(screen);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats_publisher::Histogram;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let bounds = [0.001, 0.002, 0.004];
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        let p50 = quantile(&bounds, &[0, 10, 0, 0], 0.5).unwrap_or_default();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        let p99 = quantile(&bounds, &[90, 0, 0, 10], 0.99).unwrap_or_default();
        assert!((p99 - 0.004).abs() < 1e-9, "past the last bound: {p99}");
    }

    fn snapshot(at_ms: u64, hits: u64, misses: u64, read: Option<Vec<u64>>) -> Snapshot {
        let mut s = Snapshot {
            format: FORMAT,
            instance: "h:1:1".into(),
            at_ms,
            latency_bounds_seconds: read.as_ref().map(|_| vec![0.001, 0.002]),
            ..Snapshot::default()
        };
        s.namespaces.insert(
            "users".into(),
            NamespaceFigures {
                hits_store: hits,
                misses,
                read_seconds: read.map(|buckets| Histogram {
                    count: buckets.iter().sum(),
                    buckets,
                    sum: 0.0,
                }),
                ..NamespaceFigures::default()
            },
        );
        s
    }

    #[test]
    fn rates_are_differences_over_the_publishers_clock_summed_over_processes() {
        let cache = Cache::in_memory();
        let mut sampler = Sampler::new(&cache);
        let now = Instant::now();
        for (id, hits) in [("a:1:1", 300), ("b:2:1", 100)] {
            sampler.seen.insert(
                id.into(),
                Seen {
                    prev: Some(snapshot(10_000, 0, 0, Some(vec![0, 0, 0]))),
                    last: snapshot(12_000, hits, 100, Some(vec![hits, 100, 0])),
                    changed: now,
                },
            );
        }
        let frame = sampler.compute();
        assert_eq!(frame.processes, 2);
        let row = &frame.namespaces[0];
        assert_eq!(row.namespace, "users");
        // (300 + 100 + 100 + 100) reads in 2 s.
        assert_eq!(row.ops_per_sec, Some(300.0));
        assert_eq!(row.hit_ratio, Some(400.0 / 600.0));
        assert_eq!(row.total_reads, 600);
        assert!(row.p50_ms.is_some_and(|p| p > 0.0 && p <= 1.0), "{row:?}");
        assert!(frame.latency);
        let text = render(&frame, 200, false).join("\n");
        assert!(text.contains("users"), "{text}");
        assert!(text.contains("300.0"), "{text}");
        assert!(text.contains("66.7%"), "{text}");
    }

    #[test]
    fn a_process_seen_once_shows_no_rate_and_says_why() {
        let cache = Cache::in_memory();
        let mut sampler = Sampler::new(&cache);
        sampler.seen.insert(
            "a:1:1".into(),
            Seen {
                prev: None,
                last: snapshot(12_000, 5, 1, None),
                changed: Instant::now(),
            },
        );
        let frame = sampler.compute();
        assert_eq!(frame.namespaces[0].ops_per_sec, None);
        assert!(
            frame
                .note
                .as_deref()
                .is_some_and(|n| n.contains("measuring")),
            "{frame:?}"
        );
        let text = render(&frame, 200, true).join("\n");
        assert!(text.contains("q quit"), "{text}");
    }
}
