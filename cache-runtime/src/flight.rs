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
/// allocates several notifiers per flight. Created by the first follower (or a publish):
/// most flights (nearly every read) have none, and cost no allocation for it.
pub(crate) struct Shared {
    state: Mutex<FlightState>,
    done: Notify,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(FlightState::Running),
            done: Notify::new(),
        })
    }

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
    shared: Option<Arc<Shared>>,
}

pub(crate) struct Flights {
    shards: [Mutex<Shard>; SHARDS],
    hasher: KeyedHash,
}

/// Keyed by a fast keyed hash of the key (computed once per call); the slot keeps the key
/// so that a collision is recognised (and simply not coalesced).
type Map = HashMap<u64, Slot, BuildHasherDefault<PassThrough>>;

#[derive(Default)]
struct Shard {
    map: Map,
    /// The shared state of flights ended early ([`Flights::forget`]) that someone joined,
    /// by flight id: their leader still publishes to those followers.
    detached: HashMap<u64, Arc<Shared>, BuildHasherDefault<PassThrough>>,
    /// The id of the flight registered last here (0: none yet; ids start at 1).
    last_id: u64,
}

impl Shard {
    /// The shared state of flight `id` (registered at `hash`), made if it has none yet;
    /// of a flight ended early, the state its followers kept; `None` once it ended.
    fn shared_of(&mut self, hash: u64, id: u64) -> Option<Arc<Shared>> {
        match self.map.get_mut(&hash) {
            Some(slot) if slot.id == id => {
                Some(Arc::clone(slot.shared.get_or_insert_with(Shared::new)))
            }
            _ => self.detached.get(&id).cloned(),
        }
    }

    /// Ends a flight for callers arriving from now on, keeping what its followers wait on.
    fn detach(&mut self, slot: Slot) {
        if let Some(shared) = slot.shared {
            self.detached.insert(slot.id, shared);
        }
    }
}

impl Default for Flights {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
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
    fn lock(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(hash % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let hash = self.hasher.hash(key.as_bytes());
        let mut shard = self.lock(hash);
        let id = match shard.map.get_mut(&hash) {
            Some(slot) if &*slot.key == key => {
                // Under the shard lock, so the leader cannot miss a follower that joined
                // before it removed the slot.
                let shared = slot.shared.get_or_insert_with(Shared::new);
                return Role::Follower(Arc::clone(shared));
            }
            // Another key with the same hash is in flight: lead alone, unregistered.
            Some(_) => 0,
            None => {
                // Unique within the shard, which is all that ids are compared in (a
                // counter per shard: no atomic shared by every core's reads).
                shard.last_id += 1;
                let id = shard.last_id;
                shard.map.insert(
                    hash,
                    Slot {
                        key: Box::from(key),
                        id,
                        shared: None,
                    },
                );
                id
            }
        };
        Role::Leader(Leader {
            flights: FlightsRef::Borrowed(self),
            hash,
            id,
            armed: true,
        })
    }

    /// Ends the key's flight for callers arriving from now on (after a local write).
    pub(crate) fn forget(&self, key: &str) {
        let hash = self.hasher.hash(key.as_bytes());
        let mut shard = self.lock(hash);
        if shard.map.get(&hash).is_some_and(|slot| &*slot.key == key) {
            if let Some(slot) = shard.map.remove(&hash) {
                shard.detach(slot);
            }
        }
    }

    /// Ends the flights of every key matching `predicate` (after a local clear).
    pub(crate) fn forget_matching(&self, predicate: impl Fn(&str) -> bool) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let ended: Vec<u64> = shard
                .map
                .iter()
                .filter(|(_, slot)| predicate(&slot.key))
                .map(|(hash, _)| *hash)
                .collect();
            for hash in ended {
                if let Some(slot) = shard.map.remove(&hash) {
                    shard.detach(slot);
                }
            }
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
                .map
                .get(&self.hash)
                .is_some_and(|slot| slot.id == self.id)
    }

    /// Tells the followers, and callers that join from now until the flight ends.
    pub(crate) fn publish(&self, state: FlightState) {
        if self.id == 0 {
            // Unregistered: nobody can join.
            return;
        }
        let shared = self.flights.lock(self.hash).shared_of(self.hash, self.id);
        if let Some(shared) = shared {
            shared.set(state);
        }
    }

    /// Ends the flight and returns whoever joined it, to be told the outcome (the read
    /// path: one lock, and no shared state made for a flight nobody joined). Callers
    /// arriving from now on start a flight of their own.
    pub(crate) fn finish(mut self) -> Option<Followers> {
        self.armed = false;
        self.end().map(Followers)
    }

    /// Removes the flight's slot (or detached state), returning its shared state.
    fn end(&self) -> Option<Arc<Shared>> {
        if self.id == 0 {
            return None;
        }
        let mut shard = self.flights.lock(self.hash);
        // A write may have replaced our slot with a newer flight: leave that one.
        if shard.map.get(&self.hash).is_some_and(|s| s.id == self.id) {
            shard.map.remove(&self.hash).and_then(|s| s.shared)
        } else {
            shard.detached.remove(&self.id)
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Finished without publishing (a panic, a cancel, nothing to share): dropping
            // `Followers` releases whoever joined. After the slot is gone nobody can join.
            drop(self.end().map(Followers));
        }
    }
}

/// The followers of a finished flight ([`Leader::finish`]): dropped without
/// [`publish`](Self::publish), they do their own work.
pub(crate) struct Followers(Arc<Shared>);

impl Followers {
    pub(crate) fn publish(self, state: FlightState) {
        self.0.set(state);
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        if matches!(self.0.get(), FlightState::Running) {
            self.0.set(FlightState::NotCached);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(role: Role<'_>) -> Leader<'_> {
        match role {
            Role::Leader(l) => l,
            Role::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(role: Role<'_>) -> Arc<Shared> {
        match role {
            Role::Follower(s) => s,
            Role::Leader(_) => panic!("expected to follow"),
        }
    }

    /// Slots and detached states left in every shard (a finished flight leaves neither).
    fn held(flights: &Flights) -> (usize, usize) {
        flights.shards.iter().fold((0, 0), |(m, d), shard| {
            let shard = shard.lock().unwrap();
            (m + shard.map.len(), d + shard.detached.len())
        })
    }

    fn done(bytes: &[u8]) -> FlightState {
        FlightState::Done(Arc::from(bytes))
    }

    fn is_done(state: &FlightState, bytes: &[u8]) -> bool {
        matches!(state, FlightState::Done(b) if &**b == bytes)
    }

    #[tokio::test]
    async fn a_follower_gets_what_the_leader_publishes_after_finishing() {
        let flights = Flights::default();
        let l = leader(flights.join("k"));
        let f = follower(flights.join("k"));
        let waiting = tokio::spawn(wait(f));
        tokio::task::yield_now().await;
        l.finish().expect("a follower joined").publish(done(b"v"));
        assert!(is_done(&waiting.await.unwrap(), b"v"));
        assert_eq!(held(&flights), (0, 0));
        // The next caller leads a flight of its own.
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }

    #[test]
    fn a_flight_nobody_joined_has_no_followers_and_leaves_nothing() {
        let flights = Flights::default();
        let l = leader(flights.join("k"));
        assert!(l.finish().is_none());
        assert_eq!(held(&flights), (0, 0));
        let other = leader(flights.join("k"));
        drop(other);
        assert_eq!(held(&flights), (0, 0));
    }

    #[tokio::test]
    async fn followers_do_their_own_work_when_the_leader_goes_without_publishing() {
        let flights = Flights::default();
        let l = leader(flights.join("k"));
        let f = follower(flights.join("k"));
        drop(l);
        assert!(matches!(wait(f).await, FlightState::NotCached));
        let l = leader(flights.join("k"));
        let f = follower(flights.join("k"));
        drop(l.finish());
        assert!(matches!(wait(f).await, FlightState::NotCached));
        assert_eq!(held(&flights), (0, 0));
    }

    #[tokio::test]
    async fn a_published_value_reaches_callers_joining_until_the_flight_ends() {
        let flights = Flights::default();
        let l = leader(flights.join("k"));
        l.publish(done(b"v"));
        let late = follower(flights.join("k"));
        assert!(is_done(&wait(late).await, b"v"));
        drop(l);
        assert_eq!(held(&flights), (0, 0));
    }

    #[tokio::test]
    async fn a_forgotten_flight_still_reaches_its_followers_but_not_later_callers() {
        let flights = Flights::default();
        let l = leader(flights.join("k"));
        let f = follower(flights.join("k"));
        flights.forget("k");
        assert!(!l.is_current(), "a write ended the flight");
        // A caller after the write never joins the read issued before it.
        let newer = leader(flights.join("k"));
        l.publish(done(b"old"));
        assert!(is_done(&wait(f).await, b"old"));
        drop(l);
        assert!(
            newer.is_current(),
            "the old leader leaves the newer flight alone"
        );
        drop(newer);
        assert_eq!(held(&flights), (0, 0));
    }

    #[tokio::test]
    async fn flights_ended_by_a_clear_release_their_followers_and_leave_nothing() {
        let flights = Flights::default();
        let a = leader(flights.join("ns:a"));
        let fa = follower(flights.join("ns:a"));
        let b = leader(flights.join("ns:b"));
        let keep = leader(flights.join("other:c"));
        flights.forget_matching(|k| k.starts_with("ns:"));
        assert_eq!(
            held(&flights),
            (1, 1),
            "one detached state: the followed flight"
        );
        assert!(!a.is_current() && !b.is_current() && keep.is_current());
        drop(a);
        assert!(matches!(wait(fa).await, FlightState::NotCached));
        let fb = b.finish();
        assert!(fb.is_none());
        drop(keep);
        assert_eq!(held(&flights), (0, 0));
    }

    #[tokio::test]
    async fn an_owned_leader_carries_the_flight() {
        let flights = Arc::new(Flights::default());
        let l = leader(flights.join("k")).into_owned(Arc::clone(&flights));
        assert_eq!(
            held(&flights),
            (1, 0),
            "moving the leader does not end the flight"
        );
        let f = follower(flights.join("k"));
        l.publish(done(b"v"));
        drop(l);
        assert!(is_done(&wait(f).await, b"v"));
        assert_eq!(held(&flights), (0, 0));
    }
}
