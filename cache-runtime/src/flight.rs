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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

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
    id: u64,
    shared: Arc<Shared>,
}

pub(crate) struct Flights {
    shards: [Mutex<HashMap<String, Slot>>; SHARDS],
    next_id: AtomicU64,
}

impl Default for Flights {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            next_id: AtomicU64::new(1),
        }
    }
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(Arc<Shared>),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    id: u64,
    shared: Arc<Shared>,
}

fn shard(key: &str) -> usize {
    // FNV-1a: cheap, and only spreads keys over shards.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl Flights {
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.shards[shard(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.lock(key);
        if let Some(slot) = map.get(key) {
            // Counted under the shard lock, so the leader cannot miss a follower that
            // joined before it removed the slot.
            slot.shared.followers.fetch_add(1, Ordering::AcqRel);
            return Role::Follower(Arc::clone(&slot.shared));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(FlightState::Running),
            done: Notify::new(),
            followers: AtomicUsize::new(0),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(
            key.to_owned(),
            Slot {
                id,
                shared: Arc::clone(&shared),
            },
        );
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            id,
            shared,
        })
    }

    /// Ends the key's flight for callers arriving from now on (after a local write).
    pub(crate) fn forget(&self, key: &str) {
        self.lock(key).remove(key);
    }

    /// Ends the flights of every key matching `predicate` (after a local clear).
    pub(crate) fn forget_matching(&self, predicate: impl Fn(&str) -> bool) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|k, _| !predicate(k));
        }
    }
}

impl Leader<'_> {
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
        {
            let mut map = self.flights.lock(&self.key);
            // A write may have replaced our slot with a newer flight: leave that one.
            if map.get(&self.key).is_some_and(|slot| slot.id == self.id) {
                map.remove(&self.key);
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
