//! Read batching on a standalone server: GETs that arrive while reads are in flight wait,
//! and go out together as one MGET when one of those completes, or as soon as
//! [`BATCH_GO`] of them wait.
//!
//! Why: under concurrency most of a hit's cost is per request, in the driver (a request
//! queued, a reply routed back) and in the server (one command parsed and dispatched). One
//! MGET of 30 keys pays those once. A read that finds nothing in flight goes alone, so the
//! sequential path pays only an uncontended lock.
//!
//! Roles: the first read that must wait becomes the batch's *collector*: it waits for a
//! read in flight to complete or for [`BATCH_GO`] reads to queue (at most the stall bound,
//! so a large value streaming does not hold the batch), takes every read that queued
//! meanwhile (at most [`MAX_BATCH`] keys), sends the MGET under the request guard (timer,
//! breaker) and hands each waiter its value or the error. Nothing depends on the
//! collector's caller polling it for long: a waiter not taken within the stall bound
//! withdraws and reads alone, and once a collector has waited past the stall bound new
//! reads stop queuing behind it. A waiter
//! whose collector is dropped reads alone. Keys whose value was large (or whose read
//! timed out) are remembered, the last [`LARGE_KEYS`] of them, and read alone, so small
//! values are not batched behind a large one.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::error::CacheError;

/// A read's answer: the value, or none.
pub(super) type Reply = Result<Option<Vec<u8>>, CacheError>;

/// Reads in flight before the next ones queue for a batch. Mean latency of disjoint hits
/// (release, 2 cores; unbatched in parentheses): 4 tasks 75–78 µs with 4, 90–116 µs with
/// 1 (71–72 µs); 64 tasks 253–289 µs with 4, 260 µs with 1 (360–430 µs). With 1 a few
/// tasks take turns instead of sharing the connection; 4 lets them, and batches beyond.
const MAX_ALONE: usize = 4;
/// Most keys in one MGET (a reply of many values is one long read for every waiter).
pub(super) const MAX_BATCH: usize = 64;
/// A batch this large goes without waiting for a read in flight to complete, and the
/// next read collects another: several small MGETs in flight keep the connection
/// pipelined (the server answers one while the next fills), where one large MGET per round
/// trip leaves the server idle while its waiters decode and then wakes them all at once.
/// Rows b2/b3 of `cache-bench --only b` (64 tasks, ours / raw, mean of runs): without it
/// 0.92x / 0.88x (3 runs); 4: 0.92x / 0.85x (3); 8: 1.04x / 0.98x (6); 12: 0.96x / 0.95x
/// (3); 16: 0.95x / 0.93x (3).
const BATCH_GO: usize = 8;
/// A value at least this large marks its key to be read alone from then on.
const LARGE: usize = 256 * 1024;
/// How many large keys are remembered (the oldest is forgotten first).
pub(super) const LARGE_KEYS: usize = 32;

pub(super) struct Batcher {
    state: Mutex<State>,
    /// Tells the collector that a read in flight completed.
    turn: Notify,
    /// The server refused an MGET (an ACL user allowed GET only): every read goes alone.
    refused: AtomicBool,
    /// Some key is remembered as large (reads without batching look only then).
    any_large: AtomicBool,
}

pub(super) struct Waiter {
    id: u64,
    pub(super) key: String,
    pub(super) reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    /// Reads sent alone or as a batch, not yet answered.
    in_flight: usize,
    /// Since when a collector waits for its turn (new reads queue behind it meanwhile).
    collecting: Option<Instant>,
    queue: Vec<Waiter>,
    next_id: u64,
    /// Hashes of keys whose value was large or whose read timed out (0: an empty place).
    large: [u64; LARGE_KEYS],
    /// Whether that key's value was seen large (not only slow): read in ranges.
    sized: [bool; LARGE_KEYS],
    next_large: usize,
}

/// How a read goes out.
pub(super) enum Entry<'a> {
    /// Alone, counted as in flight (the slot uncounts it however the read ends).
    Alone(Slot<'a>),
    /// Alone and uncounted: batching refused, a full batch, or a collector overdue.
    Direct,
    /// A key seen with a large value: alone, uncounted, and in ranges (`ranged.rs`). (A
    /// key only seen to time out goes [`Entry::Direct`]: ranged reads take turns, which
    /// would hold up a hot small key's reads.)
    Large,
    /// As the collector of the next batch.
    Collect(Collector<'a>),
    /// In the next batch: the collector sends the answer.
    Queued(Queued<'a>),
}

/// A read in flight; its drop may give the collector its turn.
pub(super) struct Slot<'a>(&'a Batcher);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.collecting.is_some() {
            drop(state);
            self.0.turn.notify_one();
        }
    }
}

/// The collector of a batch, before it sends.
pub(super) struct Collector<'a> {
    batcher: &'a Batcher,
    sent: bool,
}

impl Drop for Collector<'_> {
    fn drop(&mut self) {
        if !self.sent {
            // Dropped while waiting: the waiters' senders go with the queue, and they read
            // alone.
            let mut state = self.batcher.lock();
            state.collecting = None;
            let queue = std::mem::take(&mut state.queue);
            drop(state);
            drop(queue);
        }
    }
}

/// A read queued for the next batch.
pub(super) struct Queued<'a> {
    batcher: &'a Batcher,
    id: u64,
    pub(super) answer: oneshot::Receiver<Reply>,
}

impl Queued<'_> {
    /// Leaves the queue if the batch has not been taken yet (its collector is late):
    /// whether it left, and must read alone.
    pub(super) fn withdraw(&self) -> bool {
        let mut state = self.batcher.lock();
        match state.queue.iter().position(|w| w.id == self.id) {
            Some(at) => {
                state.queue.swap_remove(at);
                true
            }
            None => false,
        }
    }
}

impl Batcher {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            turn: Notify::new(),
            refused: AtomicBool::new(false),
            any_large: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How the read of `key` goes out; `stall`: how long a collector may wait for its turn.
    pub(super) fn enter(&self, key: &str, stall: Duration) -> Entry<'_> {
        if self.refused.load(Ordering::Relaxed) {
            return if self.is_large(key) {
                Entry::Large
            } else {
                Entry::Direct
            };
        }
        let mut state = self.lock();
        if state.large[0] != 0 {
            match state.kind(hash(key)) {
                Some(true) => return Entry::Large,
                Some(false) => return Entry::Direct,
                None => {}
            }
        }
        let Some(since) = state.collecting else {
            if state.in_flight < MAX_ALONE {
                state.in_flight += 1;
                return Entry::Alone(Slot(self));
            }
            state.collecting = Some(Instant::now());
            return Entry::Collect(Collector {
                batcher: self,
                sent: false,
            });
        };
        // A full batch, or a collector past its bound (its caller no longer polls it):
        // this read does not wait for it.
        if state.queue.len() + 1 >= MAX_BATCH || since.elapsed() > stall {
            return Entry::Direct;
        }
        let (reply, answer) = oneshot::channel();
        let id = state.next_id;
        state.next_id = id.wrapping_add(1);
        state.queue.push(Waiter {
            id,
            key: key.to_owned(),
            reply,
        });
        // A batch large enough to go: the collector need not wait for a completion.
        let go = state.batch_ready();
        drop(state);
        if go {
            self.turn.notify_one();
        }
        Entry::Queued(Queued {
            batcher: self,
            id,
            answer,
        })
    }

    /// The server refused MGET: reads go alone from now on.
    pub(super) fn refuse(&self) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                target: "cache_runtime::connection",
                "the server refused MGET: concurrent reads are sent one by one"
            );
        }
    }

    /// Notes that `key` held a value of `len` bytes (large ones are read alone, in ranges,
    /// next time).
    pub(super) fn saw(&self, key: &str, len: usize) {
        if len >= LARGE {
            self.remember(key, true);
        }
    }

    /// Whether `key` was seen with a large value (a lock only once some key was).
    pub(super) fn is_large(&self, key: &str) -> bool {
        self.any_large.load(Ordering::Relaxed) && self.lock().kind(hash(key)) == Some(true)
    }

    /// Reads of `key` go alone from now on (its read timed out: perhaps a large value).
    pub(super) fn alone_from_now(&self, key: &str) {
        self.remember(key, false);
    }

    fn remember(&self, key: &str, sized: bool) {
        let h = hash(key);
        if sized {
            self.any_large.store(true, Ordering::Relaxed);
        }
        let mut state = self.lock();
        match state.large.iter().position(|&k| k == h) {
            Some(at) => state.sized[at] |= sized,
            None => {
                let at = state.next_large;
                state.large[at] = h;
                state.sized[at] = sized;
                state.next_large = (at + 1) % LARGE_KEYS;
            }
        }
    }
}

impl State {
    /// Whether the queue and the collector's own key make [`BATCH_GO`] reads.
    fn batch_ready(&self) -> bool {
        self.queue.len() + 1 >= BATCH_GO
    }

    /// Whether the key of hash `h` is remembered, and if so whether as large (`true`) or
    /// only slow.
    fn kind(&self, h: u64) -> Option<bool> {
        self.large
            .iter()
            .position(|&k| k == h)
            .map(|at| self.sized[at])
    }
}

impl<'a> Collector<'a> {
    /// Waits until the read in flight completes (or `stall` passes: a large value may be
    /// streaming), then takes the queued reads, to send with this collector's own key.
    pub(super) async fn turn(mut self, stall: Duration) -> (Slot<'a>, Vec<Waiter>) {
        let batcher = self.batcher;
        let deadline = tokio::time::Instant::now() + stall;
        let mut overdue = false;
        loop {
            {
                let mut state = batcher.lock();
                if overdue || state.in_flight < MAX_ALONE || state.batch_ready() {
                    state.in_flight += 1;
                    state.collecting = None;
                    let queue = std::mem::take(&mut state.queue);
                    self.sent = true;
                    return (Slot(batcher), queue);
                }
            }
            // A completion between the check and here leaves a permit: not lost.
            if tokio::time::timeout_at(deadline, batcher.turn.notified())
                .await
                .is_err()
            {
                overdue = true;
            }
        }
    }
}

fn hash(key: &str) -> u64 {
    // Never 0, which marks an empty place.
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn alone<'a>(b: &'a Batcher, key: &str) -> Slot<'a> {
        match b.enter(key, STALL) {
            Entry::Alone(slot) => slot,
            _ => panic!("{key} should go alone"),
        }
    }

    /// As many reads in flight alone as may be: the next read collects a batch.
    fn busy(b: &Batcher) -> Vec<Slot<'_>> {
        (0..MAX_ALONE)
            .map(|i| alone(b, &format!("busy{i}")))
            .collect()
    }

    fn collector<'a>(b: &'a Batcher, key: &str) -> Collector<'a> {
        match b.enter(key, STALL) {
            Entry::Collect(c) => c,
            _ => panic!("{key} should collect"),
        }
    }

    fn queued<'a>(b: &'a Batcher, key: &str) -> Queued<'a> {
        match b.enter(key, STALL) {
            Entry::Queued(q) => q,
            _ => panic!("{key} should queue"),
        }
    }

    fn direct(b: &Batcher, key: &str, stall: Duration) -> bool {
        matches!(b.enter(key, stall), Entry::Direct)
    }

    fn large(b: &Batcher, key: &str) -> bool {
        matches!(b.enter(key, STALL), Entry::Large)
    }

    #[tokio::test]
    async fn the_collector_takes_the_queue_when_the_read_in_flight_completes() {
        let b: &'static Batcher = Box::leak(Box::new(Batcher::new()));
        let mut first = busy(b);
        let c = collector(b, "b");
        let q = queued(b, "c");
        let _q2 = queued(b, "d");
        let turn = tokio::spawn(c.turn(STALL));
        tokio::task::yield_now().await;
        assert!(
            !turn.is_finished(),
            "the collector waits for a read in flight"
        );
        drop(first.pop());
        let (slot, waiters) = turn.await.unwrap();
        let keys: Vec<&str> = waiters.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["c", "d"]);
        assert!(!q.withdraw(), "a taken read stays in its batch");
        // While the batch is in flight, the next read collects the one after.
        let next = collector(b, "e");
        drop(next);
        for w in waiters {
            let _ = w.reply.send(Ok(Some(w.key.into_bytes())));
        }
        assert_eq!(q.answer.await.unwrap().unwrap(), Some(b"c".to_vec()));
        drop(slot);
        let _alone = alone(b, "f");
    }

    #[tokio::test]
    async fn a_batch_of_batch_go_reads_goes_without_waiting_for_a_completion() {
        let b: &'static Batcher = Box::leak(Box::new(Batcher::new()));
        let _in_flight = busy(b);
        let c = collector(b, "b");
        let waiting: Vec<_> = (0..BATCH_GO - 2)
            .map(|i| queued(b, &format!("k{i}")))
            .collect();
        let turn = tokio::spawn(c.turn(STALL));
        tokio::task::yield_now().await;
        assert!(!turn.is_finished(), "one read short of a batch: it waits");
        let last = queued(b, "last");
        let (_slot, waiters) = tokio::time::timeout(Duration::from_secs(5), turn)
            .await
            .expect("the full batch goes at once")
            .unwrap();
        assert_eq!(
            waiters.len(),
            BATCH_GO - 1,
            "the collector's key makes the batch"
        );
        // The next read collects the next batch, behind the reads still in flight.
        assert!(matches!(b.enter("next", STALL), Entry::Collect(_)));
        drop((waiting, last));
    }

    #[tokio::test]
    async fn a_stalled_read_in_flight_holds_the_batch_no_longer_than_the_stall_bound() {
        let b: &'static Batcher = Box::leak(Box::new(Batcher::new()));
        let _stalled = busy(b);
        let c = collector(b, "b");
        let _q = queued(b, "c");
        let (_slot, waiters) = c.turn(Duration::from_millis(20)).await;
        assert_eq!(waiters.len(), 1, "the batch went without the stalled read");
    }

    #[tokio::test]
    async fn a_collector_dropped_while_waiting_lets_its_waiters_read_alone() {
        let b = Batcher::new();
        let first = busy(&b);
        let c = collector(&b, "b");
        let q = queued(&b, "c");
        drop(c);
        assert!(
            q.answer.await.is_err(),
            "the waiter's sender is gone: it reads alone"
        );
        drop(first);
        let _next = alone(&b, "d");
    }

    #[test]
    fn a_collector_nobody_polls_holds_no_read() {
        let b = Batcher::new();
        let _first = busy(&b);
        // Kept but never polled (a future parked in a select! loop, say).
        let _parked = collector(&b, "b");
        let q = queued(&b, "c");
        std::thread::sleep(Duration::from_millis(5));
        // Past the stall bound: new reads go alone, and the queued one withdraws.
        assert!(direct(&b, "d", Duration::from_millis(1)));
        assert!(q.withdraw(), "a read not taken leaves the queue");
        assert!(!q.withdraw());
    }

    #[test]
    fn a_full_batch_sends_further_reads_alone() {
        let b = Batcher::new();
        let _first = busy(&b);
        let _c = collector(&b, "b");
        // The collector's key and MAX_BATCH - 1 queued: one full MGET.
        let queued: Vec<_> = (0..MAX_BATCH - 1)
            .map(|i| queued(&b, &format!("k{i}")))
            .collect();
        assert_eq!(queued.len() + 1, MAX_BATCH);
        assert!(direct(&b, "one too many", STALL));
    }

    #[test]
    fn keys_seen_with_large_values_or_timed_out_are_read_alone() {
        let b = Batcher::new();
        b.saw("small", LARGE - 1);
        b.saw("big", LARGE);
        b.alone_from_now("slow");
        let first = busy(&b);
        assert!(large(&b, "big"));
        // Alone, but not in ranges: only its size sends a key there.
        assert!(direct(&b, "slow", STALL));
        assert!(matches!(b.enter("small", STALL), Entry::Collect(_)));
        drop(first);
        assert!(b.is_large("big") && !b.is_large("slow") && !b.is_large("small"));
        // A slow key later seen large is read in ranges.
        b.saw("slow", LARGE);
        assert!(large(&b, "slow"));
        // Refused batching still reads large keys in ranges.
        b.refuse();
        assert!(large(&b, "big"));
        assert!(direct(&b, "small", STALL));
    }

    #[test]
    fn no_key_is_large_before_one_is_seen() {
        let b = Batcher::new();
        b.saw("small", LARGE - 1);
        b.alone_from_now("slow");
        assert!(!b.is_large("small") && !b.is_large("slow"));
        assert!(
            !b.any_large.load(Ordering::Relaxed),
            "no lock taken for unbatched reads"
        );
    }

    #[test]
    fn large_keys_are_forgotten_oldest_first() {
        let b = Batcher::new();
        for i in 0..=LARGE_KEYS {
            b.saw(&format!("big{i}"), LARGE);
        }
        let _first = busy(&b);
        assert!(!large(&b, "big0"), "the oldest is forgotten");
        for i in 1..=LARGE_KEYS {
            assert!(large(&b, &format!("big{i}")));
        }
    }

    #[test]
    fn a_refused_mget_sends_every_read_alone() {
        let b = Batcher::new();
        let _first = busy(&b);
        b.refuse();
        assert!(direct(&b, "y", STALL));
        assert!(direct(&b, "z", STALL));
    }
}
