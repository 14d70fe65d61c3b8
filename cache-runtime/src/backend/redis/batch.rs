//! Read batching on a standalone server: GETs that arrive while a read is in flight wait,
//! and go out together as one MGET when it completes.
//!
//! Why: under concurrency most of a hit's cost is per request, in the driver (a request
//! queued, a reply routed back) and in the server (one command parsed and dispatched). One
//! MGET of 60 keys pays those once. A read that finds nothing in flight goes alone, so the
//! sequential path pays only an uncontended lock.
//!
//! Roles: the first read that must wait becomes the batch's *collector*: it waits for the
//! read in flight to complete (at most a stall bound, so a large value streaming does not
//! hold the batch), takes every read that queued meanwhile, sends the MGET under the
//! request guard (timer, breaker) and hands each waiter its value or the error. Waiters
//! whose collector goes away (its caller's timeout dropped it) read alone. Keys whose value
//! was large are remembered and always read alone, so small values are never batched
//! behind a large one.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::error::CacheError;

/// A read's answer: the value, or none.
pub(super) type Reply = Result<Option<Vec<u8>>, CacheError>;

/// Reads in flight before the next ones queue for a batch. Measured with 64 tasks on
/// disjoint keys: 1 (about 32 keys per MGET) beat 2, 4 and 8 (25, 19, 13 keys).
const MAX_ALONE: usize = 1;
/// A value at least this large marks its key to be read alone from then on.
const LARGE: usize = 256 * 1024;
/// How many large keys are remembered (the oldest is forgotten first).
const LARGE_KEYS: usize = 32;

pub(super) struct Batcher {
    state: Mutex<State>,
    /// Tells the collector that a read in flight completed.
    turn: Notify,
    /// The server refused an MGET (an ACL user allowed GET only): every read goes alone.
    refused: AtomicBool,
}

pub(super) struct Waiter {
    pub(super) key: String,
    pub(super) reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    /// Reads sent alone or as a batch, not yet answered.
    in_flight: usize,
    /// A collector is waiting for its turn: new reads queue behind it.
    collecting: bool,
    queue: Vec<Waiter>,
    /// Hashes of keys whose value was large (0: an empty place).
    large: [u64; LARGE_KEYS],
    next_large: usize,
}

/// How a read goes out.
pub(super) enum Entry<'a> {
    /// Alone, counted as in flight (the slot uncounts it however the read ends).
    Alone(Slot<'a>),
    /// Alone and uncounted: a key known to hold a large value (or batching is refused).
    Large,
    /// As the collector of the next batch.
    Collect(Collector<'a>),
    /// In the next batch: the collector sends the answer.
    Queued(oneshot::Receiver<Reply>),
}

/// A read in flight; its drop may give the collector its turn.
pub(super) struct Slot<'a>(&'a Batcher);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.collecting {
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
            state.collecting = false;
            let queue = std::mem::take(&mut state.queue);
            drop(state);
            drop(queue);
        }
    }
}

impl Batcher {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            turn: Notify::new(),
            refused: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How the read of `key` goes out.
    pub(super) fn enter(&self, key: &str) -> Entry<'_> {
        if self.refused.load(Ordering::Relaxed) {
            return Entry::Large;
        }
        let mut state = self.lock();
        if state.large[0] != 0 && state.large.contains(&hash(key)) {
            return Entry::Large;
        }
        if !state.collecting {
            if state.in_flight < MAX_ALONE {
                state.in_flight += 1;
                return Entry::Alone(Slot(self));
            }
            state.collecting = true;
            return Entry::Collect(Collector {
                batcher: self,
                sent: false,
            });
        }
        let (reply, answer) = oneshot::channel();
        state.queue.push(Waiter {
            key: key.to_owned(),
            reply,
        });
        Entry::Queued(answer)
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

    /// Notes that `key` held a value of `len` bytes (large ones are read alone next time).
    pub(super) fn saw(&self, key: &str, len: usize) {
        if len < LARGE {
            return;
        }
        let h = hash(key);
        let mut state = self.lock();
        if !state.large.contains(&h) {
            let at = state.next_large;
            state.large[at] = h;
            state.next_large = (at + 1) % LARGE_KEYS;
        }
    }
}

impl<'a> Collector<'a> {
    /// Waits until the read in flight completes (or `stall` passes: a large value may be
    /// streaming), then takes the queued reads, to send with this collector's own key.
    pub(super) async fn turn(mut self, stall: Duration) -> (Slot<'a>, Vec<Waiter>) {
        let batcher = self.batcher;
        let mut overdue = false;
        loop {
            {
                let mut state = batcher.lock();
                if overdue || state.in_flight < MAX_ALONE {
                    state.in_flight += 1;
                    state.collecting = false;
                    let queue = std::mem::take(&mut state.queue);
                    self.sent = true;
                    return (Slot(batcher), queue);
                }
            }
            // A completion between the check and here leaves a permit: not lost.
            if tokio::time::timeout(stall, batcher.turn.notified())
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
        match b.enter(key) {
            Entry::Alone(slot) => slot,
            _ => panic!("{key} should go alone"),
        }
    }

    fn collector<'a>(b: &'a Batcher, key: &str) -> Collector<'a> {
        match b.enter(key) {
            Entry::Collect(c) => c,
            _ => panic!("{key} should collect"),
        }
    }

    fn queued(b: &Batcher, key: &str) -> oneshot::Receiver<Reply> {
        match b.enter(key) {
            Entry::Queued(rx) => rx,
            _ => panic!("{key} should queue"),
        }
    }

    #[tokio::test]
    async fn the_collector_takes_the_queue_when_the_read_in_flight_completes() {
        let b: &'static Batcher = Box::leak(Box::new(Batcher::new()));
        let first = alone(b, "a");
        let c = collector(b, "b");
        let rx = queued(b, "c");
        let _rx2 = queued(b, "d");
        let turn = tokio::spawn(c.turn(STALL));
        tokio::task::yield_now().await;
        assert!(
            !turn.is_finished(),
            "the collector waits for the read in flight"
        );
        drop(first);
        let (slot, waiters) = turn.await.unwrap();
        let keys: Vec<&str> = waiters.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["c", "d"]);
        // While the batch is in flight, the next read collects the one after.
        let next = collector(b, "e");
        drop(next);
        for w in waiters {
            let _ = w.reply.send(Ok(Some(w.key.into_bytes())));
        }
        assert_eq!(rx.await.unwrap().unwrap(), Some(b"c".to_vec()));
        drop(slot);
        let _alone = alone(b, "f");
    }

    #[tokio::test]
    async fn a_stalled_read_in_flight_holds_the_batch_no_longer_than_the_stall_bound() {
        let b: &'static Batcher = Box::leak(Box::new(Batcher::new()));
        let _stalled = alone(b, "big");
        let c = collector(b, "b");
        let _rx = queued(b, "c");
        let (_slot, waiters) = c.turn(Duration::from_millis(20)).await;
        assert_eq!(waiters.len(), 1, "the batch went without the stalled read");
    }

    #[tokio::test]
    async fn a_collector_dropped_while_waiting_lets_its_waiters_read_alone() {
        let b = Batcher::new();
        let first = alone(&b, "a");
        let c = collector(&b, "b");
        let rx = queued(&b, "c");
        drop(c);
        assert!(
            rx.await.is_err(),
            "the waiter's sender is gone: it reads alone"
        );
        drop(first);
        let _next = alone(&b, "d");
    }

    #[test]
    fn keys_seen_with_large_values_are_read_alone() {
        let b = Batcher::new();
        b.saw("small", LARGE - 1);
        b.saw("big", LARGE);
        let first = alone(&b, "x");
        assert!(matches!(b.enter("big"), Entry::Large));
        assert!(matches!(b.enter("small"), Entry::Collect(_)));
        drop(first);
    }

    #[test]
    fn large_keys_are_forgotten_oldest_first() {
        let b = Batcher::new();
        for i in 0..=LARGE_KEYS {
            b.saw(&format!("big{i}"), LARGE);
        }
        let _first = alone(&b, "x");
        assert!(
            !matches!(b.enter("big0"), Entry::Large),
            "the oldest is forgotten"
        );
        for i in 1..=LARGE_KEYS {
            assert!(matches!(b.enter(&format!("big{i}")), Entry::Large));
        }
    }

    #[test]
    fn a_refused_mget_sends_every_read_alone() {
        let b = Batcher::new();
        let _first = alone(&b, "x");
        b.refuse();
        assert!(matches!(b.enter("y"), Entry::Large));
        assert!(matches!(b.enter("z"), Entry::Large));
    }
}
