//! How an L1 hit returns a value without decoding it: the L1 keeps the first decoded copy
//! of an entry beside its bytes, and later hits return a clone of it (as moka and `cached`
//! do), which is several times cheaper than decoding.
//!
//! Only for stored types that are `Clone + Send + Sync + 'static`. Which types those are
//! is known only where the type is concrete, so the expansion asks with autoref
//! specialisation: `(&L1Probe::<T>::NEW).l1_copy()` finds [`L1ByClone`] (a by-value
//! receiver) when `T` qualifies, else [`L1ByDecode`] (one autoref later), which says "decode
//! on every hit". A generic stored type always decodes.

use std::any::Any;
use std::marker::PhantomData;

use crate::l1::Kept;

/// Copies a kept value out, and makes the copy to keep, for one stored type.
pub struct Copier<T> {
    /// A clone of the kept value, when it is a `T` (an entry read as another type of the
    /// same shape is decoded instead).
    pub(crate) out: fn(&(dyn Any + Send + Sync)) -> Option<T>,
    /// The copy to keep of a value just decoded.
    pub(crate) keep: fn(&T) -> Kept,
}

impl<T> Clone for Copier<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Copier<T> {}

impl<T: Clone + Send + Sync + 'static> Copier<T> {
    fn by_clone() -> Self {
        Self {
            out: |kept| kept.downcast_ref::<T>().cloned(),
            keep: |value| Box::new(value.clone()),
        }
    }
}

/// The receiver of the expansion's question "may the L1 hand out clones of a `T`?".
pub struct L1Probe<T>(PhantomData<fn() -> T>);

impl<T> L1Probe<T> {
    /// The probe (a value to take a reference of).
    pub const NEW: Self = Self(PhantomData);
}

/// The answer for types that can be cloned and shared between threads: hits clone.
pub trait L1ByClone<T> {
    /// `Some`: hits clone.
    fn l1_copy(&self) -> Option<Copier<T>>;
}

impl<T: Clone + Send + Sync + 'static> L1ByClone<T> for L1Probe<T> {
    fn l1_copy(&self) -> Option<Copier<T>> {
        Some(Copier::by_clone())
    }
}

/// The answer for every other type: hits decode.
pub trait L1ByDecode<T> {
    /// `None`: hits decode.
    fn l1_copy(&self) -> Option<Copier<T>>;
}

impl<T> L1ByDecode<T> for &L1Probe<T> {
    fn l1_copy(&self) -> Option<Copier<T>> {
        None
    }
}

#[cfg(test)]
// The borrow is the question asked (see the module's documentation).
#[allow(clippy::needless_borrow)]
mod tests {
    use std::rc::Rc;

    use super::*;

    #[test]
    fn clone_types_get_a_copier_and_others_do_not() {
        assert!((&L1Probe::<String>::NEW).l1_copy().is_some());
        assert!((&L1Probe::<Vec<u64>>::NEW).l1_copy().is_some());
        // Not `Send`: decoded on every hit.
        assert!((&L1Probe::<Rc<u32>>::NEW).l1_copy().is_none());
        struct NotClone;
        assert!((&L1Probe::<NotClone>::NEW).l1_copy().is_none());
    }

    fn generic<T>() -> bool {
        (&L1Probe::<T>::NEW).l1_copy().is_some()
    }

    #[test]
    fn a_generic_type_decodes() {
        assert!(!generic::<String>());
    }

    #[test]
    fn the_copy_round_trips_and_rejects_other_types() {
        let c = (&L1Probe::<String>::NEW).l1_copy().unwrap();
        let kept = (c.keep)(&"v".to_owned());
        assert_eq!((c.out)(&*kept).as_deref(), Some("v"));
        let other: Kept = Box::new(7u32);
        assert_eq!((c.out)(&*other), None);
    }
}
