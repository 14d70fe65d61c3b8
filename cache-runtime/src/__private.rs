//! The only surface that `#[cache_result]` and `#[cache_user_specific]` expansions use.
//! Not public API: it changes with the macros, which pin this crate's exact version.
//! Everything here is a thin entry into the call engine (`engine/`).
#![allow(missing_docs)]

use std::fmt::Display;
use std::future::Future;

use serde::{de::DeserializeOwned, Serialize};

use crate::engine::call::{self, CallKey as EngineKey, OkOnly, Plain, SomeOnly};
use crate::engine::resilience::{Attached, Detached};
use crate::error::CacheError;
use crate::key::{escape_segment, ArgsInput};
use crate::shape::Keyed;

pub use crate::engine::copier::{Copier, L1ByClone, L1ByDecode, L1Probe};
pub use crate::engine::site::Site;
pub use serde;

/// The identity of one call, as the expansion built it.
pub struct CallKey(EngineKey);

/// Builds a [`CallKey`] from the arguments, by reference.
pub struct KeyBuilder {
    args: ArgsInput,
    user: Option<String>,
    tags: Vec<String>,
    keyed: &'static Keyed,
}

impl KeyBuilder {
    /// For a call of `site` that stores a `T`: the argument hash is keyed by the site's
    /// identity and `T`'s shape, so a changed type never reads old entries.
    pub fn new<T: DeserializeOwned>(site: &'static Site) -> Self {
        Self {
            args: ArgsInput::default(),
            user: None,
            tags: Vec::new(),
            keyed: site.shapes.keyed::<T>(site.site_key()),
        }
    }

    /// The user id of a user-specific function: becomes the `{user:<id>}` segment.
    pub fn user<U: Display + ?Sized>(&mut self, id: &U) {
        let id = id.to_string();
        self.args.raw(id.as_bytes());
        self.user = Some(escape_segment(&id).into_owned());
    }

    /// One tag of the entry (`tags = [...]`), already filled in from the arguments. Not
    /// part of the key: the same call always carries the same tags.
    pub fn tag(&mut self, tag: String) {
        self.tags.push(tag);
    }

    pub fn arg<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.args.arg(value);
    }

    /// Mixes in a generic parameter, so `f::<u32>` and `f::<String>` never share keys.
    pub fn type_param<T: ?Sized>(&mut self) {
        self.args.raw(std::any::type_name::<T>().as_bytes());
    }

    pub fn finish(self) -> CallKey {
        CallKey(EngineKey {
            user: self.user,
            tags: self.tags,
            args: self.args.finish(),
            keyed: self.keyed,
        })
    }
}

/// The full key of a call, for companions that invalidate or inspect one entry.
pub fn key_of(site: &'static Site, key: &CallKey) -> Option<String> {
    call::key_of(site, &key.0)
}

/// Deletes the entry of one call; `Ok(false)` when there was none.
pub async fn invalidate(site: &'static Site, key: CallKey) -> Result<bool, CacheError> {
    call::invalidate(site, key.0).await
}

/// `async fn -> T`: every result is cached.
pub fn cached_value<T, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = T>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = T>,
{
    call::run::<Plain, _, _, Attached>(site, key.0, copier, body)
}

/// `async fn -> Result<T, E>`: only `Ok` is cached; `E` needs no trait.
pub fn cached_result<T, E, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = Result<T, E>>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Result<T, E>>,
{
    call::run::<OkOnly, _, _, Attached>(site, key.0, copier, body)
}

/// `async fn -> Option<T>`: only `Some` is cached (use `cached_value` to cache `None`).
pub fn cached_option<T, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = Option<T>>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Option<T>>,
{
    call::run::<SomeOnly, _, _, Attached>(site, key.0, copier, body)
}

/// [`cached_value`] for sites whose body may finish in the background (`soft_timeout`,
/// `refresh_ahead`): it must own its data.
pub fn cached_value_detached<T, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    call::run::<Plain, _, _, Detached>(site, key.0, copier, body)
}

/// [`cached_result`] for sites whose body may finish in the background.
pub fn cached_result_detached<T, E, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = Result<T, E>>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    call::run::<OkOnly, _, _, Detached>(site, key.0, copier, body)
}

/// [`cached_option`] for sites whose body may finish in the background.
pub fn cached_option_detached<T, Fut>(
    site: &'static Site,
    key: CallKey,
    copier: Option<Copier<T>>,
    body: Fut,
) -> impl Future<Output = Option<T>>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    call::run::<SomeOnly, _, _, Detached>(site, key.0, copier, body)
}

/// Hooks for the project's own reliability tests (feature `testing`). Not API.
#[cfg(feature = "testing")]
pub mod testing {
    /// Makes this share (0.0 to 1.0) of Redis operations fail before being sent.
    pub fn set_fault_rate(rate: f64) {
        crate::backend::redis::faults::set_rate(rate);
    }
}
