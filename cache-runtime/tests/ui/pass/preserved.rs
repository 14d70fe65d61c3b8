//! Visibility, docs, other attributes, generics and where clauses are kept.
#![deny(missing_docs)]
//! Fixture crate.

/// A module with public cached functions.
pub mod api {
    use cache_runtime::cache_result;

    /// Documented, public, with a where clause.
    #[cache_result(ttl = 60)]
    #[inline]
    pub async fn documented<T>(value: T) -> String
    where
        T: serde::Serialize + ToString + Send,
    {
        value.to_string()
    }

    /// Crate-visible.
    #[cache_result]
    pub(crate) async fn crate_visible(x: u32) -> u32 {
        x
    }

    /// A type with a cached method.
    pub struct Api;

    impl Api {
        /// A public method; its companions are public too.
        #[cache_result(skip(self), companions = true)]
        pub async fn method(&self, x: u32) -> u32 {
            x
        }
    }
}

fn main() {
    // Public companions are reachable from outside the module.
    let _ = api::documented_cache_key(&1u8);
    drop(api::documented_invalidate(&1u8));
    let _ = api::crate_visible_cache_key(&1);
    let _ = api::Api.method_cache_key(&1);
    let _ = api::documented::<u8>;
}
