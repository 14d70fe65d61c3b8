//! Single flight: concurrent misses on one key in this process run the body once.
//!
//! The leader publishes the encoded value; followers decode it (so values need no
//! `Clone`). If the leader's result is not cacheable (an `Err`, a `None`), or its body
//! panics or is cancelled, followers run their own body: a failure never poisons a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

#[derive(Clone)]
pub(crate) enum FlightState {
    Running,
    Done(Arc<[u8]>),
    NotCached,
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, watch::Receiver<FlightState>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(watch::Receiver<FlightState>),
}

pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: String,
    tx: watch::Sender<FlightState>,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(FlightState::Running);
        map.insert(key.to_owned(), rx);
        Role::Leader(Leader {
            flights: self,
            key: key.to_owned(),
            tx,
        })
    }
}

impl Leader<'_> {
    /// Whether anyone is waiting for this flight (besides the map's own receiver).
    pub(crate) fn has_followers(&self) -> bool {
        self.tx.receiver_count() > 1
    }

    pub(crate) fn publish(&self, state: FlightState) {
        self.tx.send_replace(state);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        // Panicked or cancelled before publishing: release the followers.
        if matches!(*self.tx.borrow(), FlightState::Running) {
            self.tx.send_replace(FlightState::NotCached);
        }
    }
}

/// Waits for the leader; a vanished leader counts as "not cached".
pub(crate) async fn wait(mut rx: watch::Receiver<FlightState>) -> FlightState {
    match rx.wait_for(|s| !matches!(s, FlightState::Running)).await {
        Ok(state) => state.clone(),
        Err(_) => FlightState::NotCached,
    }
}
