//! One flight per key in this process, for two things:
//!
//! - misses of decorated calls: concurrent misses run the body once; the leader publishes
//!   the encoded value and followers decode it (so values need no `Clone`). If the leader's
//!   result is not cacheable (an `Err`, a `None`), or its body panics or is cancelled,
//!   followers run their own body: a failure never poisons a key.
//! - reads: concurrent GETs of one key share one round trip (hot keys cost Redis one read
//!   per flight, not one per caller). A local write ends the flight for later readers, so a
//!   read that starts after a write never joins a GET issued before it.
//!
//! The map is sharded so that unrelated keys do not contend on one lock.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::fasthash::{KeyedHash, PassThrough};

const SHARDS: usize = 16;

#[derive(Clone)]
pub(crate) enum FlightState {
    Running,
    /// An encoded value (envelope bytes).
    Done(Arc<[u8]>),
    /// The key holds nothing (reads only).
    Absent,
    /// Nothing to share: followers do their own work.
    NotCached,
    /// The leader's read failed on a connection fault (reads only): followers give up too
    /// instead of each waiting out another timeout.
    Failed,
}

/// What a leader shares with its followers. Lighter than a `watch` channel, which
/// allocates several notifiers per flight: most flights (every read) have no follower.
pub(crate) struct Shared {
    state: Mutex<FlightState>,
    done: Notify,
    followers: AtomicUsize,
}

impl Shared {
    fn set(&self, state: FlightState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        self.done.notify_waiters();
    }

    fn get(&self) -> FlightState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Slot {
    key: Box<str>,
    id: u64,
    shared: Arc<Shared>,
}

pub(crate) struct Flights {
    shards: [Mutex<Map>; SHARDS],
    next_id: AtomicU64,
    hasher: KeyedHash,
}

/// Keyed by a fast keyed hash of the key (computed once per call); the slot keeps the key
/// so that a collision is recognised (and simply not coalesced).
type Map = HashMap<u64, Slot, BuildHasherDefault<PassThrough>>;

impl Default for Flights {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            next_id: AtomicU64::new(1),
            hasher: KeyedHash::new(),
        }
    }
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(Arc<Shared>),
}

pub(crate) struct Leader<'a> {
    flights: FlightsRef<'a>,
    hash: u64,
    /// 0: not registered (a hash collision with another key in flight).
    id: u64,
    shared: Arc<Shared>,
    /// Cleared when the flight moved to another `Leader` (see [`Leader::into_owned`]).
    armed: bool,
}

/// The flights a leader belongs to: borrowed for a call, owned by a background task.
enum FlightsRef<'a> {
    Borrowed(&'a Flights),
    Owned(Arc<Flights>),
}

impl std::ops::Deref for FlightsRef<'_> {
    type Target = Flights;
    fn deref(&self) -> &Flights {
        match self {
            Self::Borrowed(f) => f,
            Self::Owned(f) => f,
        }
    }
}

impl Flights {
    fn lock(&self, hash: u64) -> std::sync::MutexGuard<'_, Map> {
        self.shards[(hash % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let hash = self.hasher.hash(key.as_bytes());
        let mut map = self.lock(hash);
        let shared = Arc::new(Shared {
            state: Mutex::new(FlightState::Running),
            done: Notify::new(),
            followers: AtomicUsize::new(0),
        });
        let id = match map.get(&hash) {
            Some(slot) if &*slot.key == key => {
                // Counted under the shard lock, so the leader cannot miss a follower that
                // joined before it removed the slot.
                slot.shared.followers.fetch_add(1, Ordering::AcqRel);
                return Role::Follower(Arc::clone(&slot.shared));
            }
            // Another key with the same hash is in flight: lead alone, unregistered.
            Some(_) => 0,
            None => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                map.insert(
                    hash,
                    Slot {
                        key: Box::from(key),
                        id,
                        shared: Arc::clone(&shared),
                    },
                );
                id
            }
        };
        Role::Leader(Leader {
            flights: FlightsRef::Borrowed(self),
            hash,
            id,
            shared,
            armed: true,
        })
    }

    /// Ends the key's flight for callers arriving from now on (after a local write).
    pub(crate) fn forget(&self, key: &str) {
        let hash = self.hasher.hash(key.as_bytes());
        let mut map = self.lock(hash);
        if map.get(&hash).is_some_and(|slot| &*slot.key == key) {
            map.remove(&hash);
        }
    }

    /// Ends the flights of every key matching `predicate` (after a local clear).
    pub(crate) fn forget_matching(&self, predicate: impl Fn(&str) -> bool) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, slot| !predicate(&slot.key));
        }
    }
}

impl Leader<'_> {
    /// The same flight, held by `owner` (the flights it belongs to), so that a background
    /// task can finish it after the call that started it returned.
    pub(crate) fn into_owned(mut self, owner: Arc<Flights>) -> Leader<'static> {
        self.armed = false;
        Leader {
            flights: FlightsRef::Owned(owner),
            hash: self.hash,
            id: self.id,
            shared: Arc::clone(&self.shared),
            armed: true,
        }
    }

    /// Whether this flight still owns its key: an invalidation (or clear) in the meantime
    /// ended it, and then its result must not be stored (it may predate the invalidation).
    pub(crate) fn is_current(&self) -> bool {
        self.id == 0
            || self
                .flights
                .lock(self.hash)
                .get(&self.hash)
                .is_some_and(|slot| slot.id == self.id)
    }

    /// Whether anyone is waiting for this flight.
    pub(crate) fn has_followers(&self) -> bool {
        self.shared.followers.load(Ordering::Acquire) > 0
    }

    pub(crate) fn publish(&self, state: FlightState) {
        self.shared.set(state);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut map = self.flights.lock(self.hash);
            // A write may have replaced our slot with a newer flight: leave that one.
            if map.get(&self.hash).is_some_and(|slot| slot.id == self.id) {
                map.remove(&self.hash);
            }
        }
        // Finished without publishing (no followers then, a panic, a cancel): release
        // whoever joined. After the slot is gone nobody else can join.
        if self.has_followers() && matches!(self.shared.get(), FlightState::Running) {
            self.shared.set(FlightState::NotCached);
        }
    }
}

/// Waits for the leader's outcome.
pub(crate) async fn wait(shared: Arc<Shared>) -> FlightState {
    loop {
        let notified = shared.done.notified();
        tokio::pin!(notified);
        // Registered before looking, so a publish in between still wakes us.
        notified.as_mut().enable();
        match shared.get() {
            FlightState::Running => notified.await,
            state => return state,
        }
    }
}
