//! What part of a decorated function's return value is stored, and how a stored value
//! becomes a return value again (shared by `call.rs` and `resilience.rs`).

use serde::{de::DeserializeOwned, Serialize};

/// Which part of a return value is stored, and how a stored value becomes a return value.
pub(crate) trait Returns<R> {
    type Stored: Serialize + DeserializeOwned;
    fn cacheable(result: &R) -> Option<&Self::Stored>;
    fn rebuild(stored: Self::Stored) -> R;
}

/// Every value is cached.
pub(crate) struct Plain;
/// Only `Ok` is cached.
pub(crate) struct OkOnly;
/// Only `Some` is cached.
pub(crate) struct SomeOnly;

impl<T: Serialize + DeserializeOwned> Returns<T> for Plain {
    type Stored = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn rebuild(stored: T) -> T {
        stored
    }
}

impl<T: Serialize + DeserializeOwned, E> Returns<Result<T, E>> for OkOnly {
    type Stored = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn rebuild(stored: T) -> Result<T, E> {
        Ok(stored)
    }
}

impl<T: Serialize + DeserializeOwned> Returns<Option<T>> for SomeOnly {
    type Stored = T;
    fn cacheable(result: &Option<T>) -> Option<&T> {
        result.as_ref()
    }
    fn rebuild(stored: T) -> Option<T> {
        Some(stored)
    }
}
