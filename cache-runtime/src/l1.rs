//! The optional in-process L1 in front of Redis, coherent across processes.
//!
//! - Every store, delete and clear of any process publishes the affected keys (or key
//!   prefix) on `{prefix}:__invalidate`; every process drops what it holds for them.
//! - L1 is filled only from Redis reads, never from local writes, with the key's remaining
//!   Redis TTL (capped by `CACHE_L1_MAX_TTL`): it never holds a value longer than Redis.
//! - A read that raced with an invalidation does not fill (striped sequence numbers).
//! - While the subscription is down, L1 serves and fills nothing; when it comes back, L1
//!   starts empty (messages may have been missed meanwhile).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use moka::policy::Expiry;

use crate::config::L1Config;

const STRIPES: usize = 64;
/// Message kinds on the invalidation channel: `k\0key[\0key…]` or `p\0prefix`.
const KEYS: u8 = b'k';
const PREFIX: u8 = b'p';

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    expires_at: Instant,
}

struct UntilExpiry;

impl Expiry<String, Entry> for UntilExpiry {
    fn expire_after_create(&self, _: &String, e: &Entry, now: Instant) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &String,
        e: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(now))
    }
}

pub(crate) struct L1 {
    entries: moka::sync::Cache<String, Entry>,
    healthy: AtomicBool,
    stripes: [AtomicU64; STRIPES],
    channel: String,
    max_ttl: Duration,
    listener: AtomicBool,
    shutdown: Arc<tokio::sync::Notify>,
}

impl Drop for L1 {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

fn stripe(key: &str) -> usize {
    // FNV-1a: cheap, and only spreads keys over stripes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

/// The sequence observed before a Redis read; the fill happens only if it is unchanged.
pub(crate) struct Ticket(u64, usize);

impl L1 {
    pub(crate) fn new(config: &L1Config, key_prefix: &str) -> Self {
        let min_weight = (config.max_bytes / config.max_entries.max(1)).max(1);
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(move |k: &String, e: &Entry| {
                    u32::try_from(((k.len() + e.bytes.len()) as u64).max(min_weight))
                        .unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry)
                .support_invalidation_closures()
                .build(),
            healthy: AtomicBool::new(false),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            channel: invalidation_channel(key_prefix),
            max_ttl: config.max_ttl,
            listener: AtomicBool::new(false),
            shutdown: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether L1 may serve: the invalidation channel is up.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        if !self.is_healthy() {
            return None;
        }
        // moka expires entries by `expires_at` itself (UntilExpiry).
        self.entries.get(key).map(|entry| entry.bytes)
    }

    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let i = stripe(key);
        Ticket(self.stripes[i].load(Ordering::Acquire), i)
    }

    /// Fills from a Redis read, unless an invalidation arrived since `ticket` or the
    /// channel is down.
    pub(crate) fn fill(&self, key: &str, bytes: Arc<[u8]>, redis_ttl: Duration, ticket: &Ticket) {
        if !self.is_healthy() || redis_ttl.is_zero() {
            return;
        }
        let ttl = redis_ttl.min(self.max_ttl);
        self.entries.insert(
            key.to_owned(),
            Entry {
                bytes,
                expires_at: Instant::now() + ttl,
            },
        );
        // An invalidation may have landed between the check and the insert: undo.
        if self.stripes[ticket.1].load(Ordering::Acquire) != ticket.0 {
            self.entries.invalidate(key);
        }
    }

    pub(crate) fn invalidate_key(&self, key: &str) {
        self.stripes[stripe(key)].fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key);
    }

    pub(crate) fn invalidate_prefix(&self, prefix: &str) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
        let prefix = prefix.to_owned();
        if self
            .entries
            .invalidate_entries_if(move |k, _| k.starts_with(&prefix))
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    pub(crate) fn invalidate_matching(
        &self,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
        if self
            .entries
            .invalidate_entries_if(move |k, _| predicate(k))
            .is_err()
        {
            self.entries.invalidate_all();
        }
    }

    fn invalidate_all(&self) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
    }

    /// Applies one message of the invalidation channel.
    fn apply(&self, payload: &[u8]) {
        let mut parts = payload.split(|b| *b == 0);
        match parts.next() {
            Some([KEYS]) => {
                for key in parts {
                    if let Ok(key) = std::str::from_utf8(key) {
                        self.invalidate_key(key);
                    }
                }
            }
            Some([PREFIX]) => match parts.next().map(std::str::from_utf8) {
                Some(Ok(prefix)) => self.invalidate_prefix(prefix),
                _ => self.invalidate_all(),
            },
            // Unknown message: be safe.
            _ => self.invalidate_all(),
        }
    }

    /// Starts the subscription once, from inside a tokio runtime.
    pub(crate) fn ensure_listener(
        self: &Arc<Self>,
        client: &redis::Client,
        connect_timeout: Duration,
    ) {
        // Plain load first: this runs on every read, and a swap would bounce the cache line.
        if self.listener.load(Ordering::Acquire) || self.listener.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.listener.store(false, Ordering::Release);
            return;
        };
        handle.spawn(listen(
            Arc::downgrade(self),
            client.clone(),
            self.channel.clone(),
            Arc::clone(&self.shutdown),
            connect_timeout,
        ));
    }
}

/// The channel of invalidation messages for keys under `key_prefix`.
pub(crate) fn invalidation_channel(key_prefix: &str) -> String {
    format!("{key_prefix}:__invalidate")
}

/// The message that invalidates `keys`.
pub(crate) fn keys_message<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = vec![KEYS];
    for key in keys {
        out.push(0);
        out.extend_from_slice(key.as_bytes());
    }
    out
}

/// The message that invalidates every key starting with `prefix`.
pub(crate) fn prefix_message(prefix: &str) -> Vec<u8> {
    let mut out = vec![PREFIX, 0];
    out.extend_from_slice(prefix.as_bytes());
    out
}

async fn listen(
    l1: Weak<L1>,
    client: redis::Client,
    channel: String,
    shutdown: Arc<tokio::sync::Notify>,
    connect_timeout: Duration,
) {
    use futures_util::StreamExt as _;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(connect_timeout, subscribed).await {
            Ok(Ok(mut pubsub)) => {
                let Some(l1_now) = l1.upgrade() else { return };
                // Messages may have been missed while down: start empty.
                l1_now.invalidate_all();
                l1_now.healthy.store(true, Ordering::Release);
                drop(l1_now);
                tracing::debug!(target: "cache_runtime::connection", channel, "L1 invalidation channel up");
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(l1_now) = l1.upgrade() else { return };
                            l1_now.apply(message.get_payload_bytes());
                        }
                        () = shutdown.notified() => return,
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(target: "cache_runtime::connection", error = %e, "L1 invalidation channel cannot subscribe");
            }
            Err(_) => {
                tracing::debug!(target: "cache_runtime::connection", "L1 invalidation channel: connect timed out");
            }
        }
        let Some(l1_now) = l1.upgrade() else { return };
        if l1_now.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(target: "cache_runtime::connection", "L1 invalidation channel down: L1 disabled until it is back");
        }
        l1_now.invalidate_all();
        drop(l1_now);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = shutdown.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> L1 {
        let l1 = L1::new(&L1Config::default(), "p");
        l1.healthy.store(true, Ordering::Release);
        l1
    }

    #[test]
    fn serves_only_while_healthy() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.fill("k", Arc::from(&b"v"[..]), Duration::from_secs(5), &t);
        assert!(l1.get("k").is_some());
        l1.healthy.store(false, Ordering::Release);
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn a_read_that_raced_an_invalidation_does_not_fill() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.apply(&keys_message(["k"]));
        l1.fill("k", Arc::from(&b"old"[..]), Duration::from_secs(5), &t);
        assert!(l1.get("k").is_none());
    }

    #[test]
    fn messages_invalidate_keys_and_prefixes() {
        let l1 = healthy();
        for k in ["p:a:1", "p:a:2", "p:b:1"] {
            let t = l1.ticket(k);
            l1.fill(k, Arc::from(&b"v"[..]), Duration::from_secs(5), &t);
        }
        l1.apply(&keys_message(["p:a:1"]));
        assert!(l1.get("p:a:1").is_none());
        assert!(l1.get("p:a:2").is_some());
        l1.apply(&prefix_message("p:a:"));
        l1.entries.run_pending_tasks();
        assert!(l1.get("p:a:2").is_none());
        assert!(l1.get("p:b:1").is_some());
    }

    #[test]
    fn never_longer_than_redis() {
        let l1 = healthy();
        let t = l1.ticket("k");
        l1.fill("k", Arc::from(&b"v"[..]), Duration::from_millis(20), &t);
        std::thread::sleep(Duration::from_millis(40));
        assert!(l1.get("k").is_none());
    }
}
