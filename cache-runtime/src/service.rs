//! The seed's domain API (`cache_service`): users, AI responses, trading data, and clearing
//! one user's entries.
//!
//! Keys follow the seed's layout, with the user in a Redis Cluster hash tag so that all of
//! one user's keys share a slot — `tradistry:users:{user:123}:profile`,
//! `tradistry:ai:{user:123}:prompt:abc123`, `tradistry:trading:{user:123}:AAPL:quote` —
//! with every caller-supplied segment escaped. Every user-scoped key is also listed in
//! that user's index set, so clearing a user costs in proportion to that user's keys.

use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::cache::Cache;
use crate::codec::Storable;
use crate::error::CacheError;
use crate::namespace::Namespace;
use crate::shape::shape_of;

/// Stable hash of an AI prompt, for [`CacheService::cache_ai_response`]: the first 128 bits
/// of BLAKE3 over the UTF-8 bytes, as 32 lower-case hex characters. Stable across
/// processes, platforms and releases (a golden test pins it).
///
/// ```
/// let h = cache_runtime::service::prompt_hash("What is my win rate?");
/// assert_eq!(h.len(), 32);
/// ```
pub fn prompt_hash(prompt: &str) -> String {
    let digest = blake3::hash(prompt.as_bytes());
    let mut out = String::with_capacity(32);
    for byte in &digest.as_bytes()[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The seed's `cache_service` over a [`Cache`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cache_runtime::{service::CacheService, Cache};
///
/// let service = CacheService::new(Cache::in_memory());
/// service.cache_user_data("user_123", "profile", "John", None).await?;
/// let name: Option<String> = service.get_user_data("user_123", "profile").await?;
/// assert_eq!(name.as_deref(), Some("John"));
/// assert_eq!(service.clear_all_user_cache("user_123").await?, 1);
/// # Ok::<_, cache_runtime::CacheError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct CacheService {
    cache: Cache,
    /// Tags the writes of this handle carry ([`with_tags`](Self::with_tags)).
    tags: Arc<[String]>,
}

impl CacheService {
    /// A service over `cache`.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            tags: Arc::from([]),
        }
    }

    /// The same service, whose writes (`cache_*`) list each entry under `tags`, so
    /// [`Cache::invalidate_tag`] removes it; cheap (shares the cache).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use cache_runtime::{service::CacheService, Cache};
    ///
    /// let service = CacheService::new(Cache::in_memory());
    /// let tagged = service.with_tags(["trades:user_123"]);
    /// tagged.cache_trading_data("user_123", "AAPL", "fills", &[1, 2, 3], None).await?;
    /// assert_eq!(service.cache().invalidate_tag("trades:user_123").await?, 1);
    /// # Ok::<_, cache_runtime::CacheError>(())
    /// # }).unwrap();
    /// ```
    #[must_use]
    pub fn with_tags<I, S>(&self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cache: self.cache.clone(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// The underlying cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    async fn put<T: Storable + ?Sized>(
        &self,
        ns: &Namespace,
        user_id: &str,
        rest: &[&str],
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let keys = self.cache.keys();
        let key = keys.user_scoped(ns.as_str(), user_id, rest);
        let index = keys.user_index(user_id);
        let ttl = ttl.unwrap_or_else(|| self.cache.ttl_for(ns.as_str()));
        self.tags
            .iter()
            .try_for_each(|t| crate::manual::check_tag(t))?;
        let counters = crate::stats_publisher::counters_of(&self.cache, ns.as_str());
        self.cache
            .write_value(
                &counters,
                &key,
                (value, &shape_of::<T::Owned>()),
                Some(ttl),
                Some(&index),
                &self.tags,
            )
            .await
    }

    async fn fetch<T: Serialize + DeserializeOwned>(
        &self,
        ns: &Namespace,
        user_id: &str,
        rest: &[&str],
    ) -> Result<Option<T>, CacheError> {
        let key = self.cache.keys().user_scoped(ns.as_str(), user_id, rest);
        let counters = crate::stats_publisher::counters_of(&self.cache, ns.as_str());
        self.cache
            .read_value(&counters, &key, &shape_of::<T>())
            .await
    }

    /// Stores user data (profile, preferences…) at `{prefix}:users:{user:<id>}:{data_type}`;
    /// `ttl: None` is 1 hour.
    pub async fn cache_user_data<T: Storable + ?Sized>(
        &self,
        user_id: &str,
        data_type: &str,
        data: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        self.put(&Namespace::USERS, user_id, &[data_type], data, ttl)
            .await
    }

    /// Reads what [`cache_user_data`](Self::cache_user_data) stored.
    pub async fn get_user_data<T: Serialize + DeserializeOwned>(
        &self,
        user_id: &str,
        data_type: &str,
    ) -> Result<Option<T>, CacheError> {
        self.fetch(&Namespace::USERS, user_id, &[data_type]).await
    }

    /// Stores an AI response at `{prefix}:ai:{user:<id>}:prompt:{prompt_hash}`; `ttl: None` is
    /// 30 minutes. Hash prompts with [`prompt_hash`].
    pub async fn cache_ai_response<T: Storable + ?Sized>(
        &self,
        user_id: &str,
        prompt_hash: &str,
        response: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        self.put(
            &Namespace::AI,
            user_id,
            &["prompt", prompt_hash],
            response,
            ttl,
        )
        .await
    }

    /// Reads what [`cache_ai_response`](Self::cache_ai_response) stored.
    pub async fn get_ai_response<T: Serialize + DeserializeOwned>(
        &self,
        user_id: &str,
        prompt_hash: &str,
    ) -> Result<Option<T>, CacheError> {
        self.fetch(&Namespace::AI, user_id, &["prompt", prompt_hash])
            .await
    }

    /// Stores trading data at `{prefix}:trading:{user:<id>}:{symbol}:{data_type}`; `ttl: None`
    /// is 15 minutes.
    pub async fn cache_trading_data<T: Storable + ?Sized>(
        &self,
        user_id: &str,
        symbol: &str,
        data_type: &str,
        data: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        self.put(
            &Namespace::TRADING,
            user_id,
            &[symbol, data_type],
            data,
            ttl,
        )
        .await
    }

    /// Reads what [`cache_trading_data`](Self::cache_trading_data) stored.
    pub async fn get_trading_data<T: Serialize + DeserializeOwned>(
        &self,
        user_id: &str,
        symbol: &str,
        data_type: &str,
    ) -> Result<Option<T>, CacheError> {
        self.fetch(&Namespace::TRADING, user_id, &[symbol, data_type])
            .await
    }

    /// Deletes the user's entries in the `users` namespace; returns how many were deleted.
    pub async fn clear_user_cache(&self, user_id: &str) -> Result<u64, CacheError> {
        self.cache.clear_user_in(&Namespace::USERS, user_id).await
    }

    /// Deletes the user's entries in every namespace, decorated `#[cache_user_specific]`
    /// functions' included; returns how many were deleted.
    pub async fn clear_all_user_cache(&self, user_id: &str) -> Result<u64, CacheError> {
        self.cache.clear_user(user_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_hash_is_pinned() {
        assert_eq!(prompt_hash("hello"), "ea8f163db38682925e4491c5e58d4bb3");
    }
}
