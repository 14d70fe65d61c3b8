//! Manual operations (the seed's `redis_service`): typed operations within one namespace,
//! and clearing a namespace or a user.

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::backend::{KeyTtl, Store};
use crate::cache::Cache;
use crate::codec::Storable;
use crate::engine::write::Scope;
use crate::error::CacheError;
use crate::key::escape_segment;
use crate::namespace::Namespace;
use crate::shape::shape_of;

/// A tag's text: anything but empty (it is escaped in its set's key like any segment).
pub(crate) fn check_tag(tag: &str) -> Result<(), CacheError> {
    if tag.is_empty() {
        return Err(CacheError::InvalidInput(
            "a tag cannot be empty; use a name such as \"market\" or \"trades:user_123\"".into(),
        ));
    }
    Ok(())
}

impl Cache {
    /// Operations scoped to one namespace (validated: `[a-z0-9_-]{1,64}`, not `__…`).
    pub fn namespace(&self, name: &str) -> Result<NamespaceCache<'_>, CacheError> {
        let ns = Namespace::new(name.to_owned())?;
        Ok(NamespaceCache::new(self, ns))
    }

    /// Operations scoped to a [`Namespace`].
    pub fn scoped(&self, ns: Namespace) -> NamespaceCache<'_> {
        NamespaceCache::new(self, ns)
    }

    /// Deletes every entry stored with `tag`, in every namespace and for every user
    /// (decorated results with `tags = [...]`, manual and service writes made through
    /// `with_tags`), here, in Redis, and in every process's L1; returns how many were
    /// deleted.
    ///
    /// Reads the tag's set, so it costs in proportion to the tagged entries, not the
    /// database. The tag is matched exactly (no patterns: `*` is just a character).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use cache_runtime::Cache;
    ///
    /// let cache = Cache::in_memory();
    /// let trading = cache.namespace("trading")?.with_tags(["market", "trades:user_1"]);
    /// trading.set("AAPL", &189.5_f64, None).await?;
    /// assert_eq!(cache.invalidate_tag("market").await?, 1);
    /// assert_eq!(trading.get::<f64>("AAPL").await?, None);
    /// # Ok::<_, cache_runtime::CacheError>(())
    /// # }).unwrap();
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        check_tag(tag)?;
        let index = self.inner.keys.tag_index(tag);
        let forget = |key: &str| self.forget(Scope::Removed(key));
        let n = self.inner.backend.clear_tag(&index, &forget).await?;
        tracing::info!(target: "cache_runtime::store", deleted = n, "invalidated a tag");
        Ok(n)
    }

    /// Deletes every key of a namespace with SCAN + UNLINK in batches; returns the count.
    pub async fn clear_namespace(&self, name: &str) -> Result<u64, CacheError> {
        self.namespace(name)?.clear().await
    }

    /// Deletes every entry of one user in every namespace (service data and
    /// `#[cache_user_specific]` results); returns how many were deleted.
    ///
    /// Reads the user's index set, so it costs in proportion to that user's keys, and it
    /// never touches another user's keys, whatever characters the ids contain.
    pub async fn clear_user(&self, user_id: &str) -> Result<u64, CacheError> {
        let escaped = escape_segment(user_id);
        let index = self.inner.keys.user_index_escaped(&escaped);
        let mut n = self
            .fenced(
                Scope::User(&escaped),
                self.inner.backend.clear_index(&index, None),
            )
            .await?;
        if self.inner.keys.seed_users() {
            // Sharing entries with other services (`json-plain`): they write the seed's
            // layout without our index, so look for their keys too, with the id as we
            // write it and, when that differs, as they do (raw).
            n += self.clear_seed_layout(user_id, &escaped, None).await?;
        }
        tracing::info!(target: "cache_runtime::store", deleted = n, "cleared a user's cache");
        Ok(n)
    }

    /// Deletes a user's keys in the seed's layout that no index of ours lists (other
    /// services' entries, `json-plain`), with the id as we write it and, when that differs,
    /// as they do (raw).
    async fn clear_seed_layout(
        &self,
        user_id: &str,
        escaped: &str,
        namespace: Option<&str>,
    ) -> Result<u64, CacheError> {
        let mut n = self.clear_user_by_scan(escaped, namespace).await?;
        if escaped != user_id {
            n += self.clear_user_by_scan(user_id, namespace).await?;
        }
        Ok(n)
    }

    /// Every `{prefix}:{namespace}:user:{id}:…` key (the seed's layout; one namespace or
    /// all), found by SCAN.
    ///
    /// `id` is as it appears in keys: ours are escaped, another service's may be raw, so
    /// glob metacharacters are escaped in the pattern and every match is checked exactly.
    /// (An id containing `:` is ambiguous in the seed's layout: `user:1:a:b` may be user
    /// `1` or user `1:a`; clearing either removes it, as the seed's own clearing would.)
    async fn clear_user_by_scan(
        &self,
        id: &str,
        namespace: Option<&str>,
    ) -> Result<u64, CacheError> {
        let prefix = self.inner.keys.prefix_with_colon();
        let pattern = format!(
            "{}{}:user:{}:*",
            crate::key::glob_literal(prefix),
            namespace.unwrap_or("*"),
            crate::key::glob_literal(id)
        );
        let segment = format!("user:{id}:");
        let wanted = |key: &str| {
            key.strip_prefix(prefix)
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, rest)| {
                    namespace.is_none_or(|wanted| wanted == ns)
                        && cache_grammar::check_name(ns).is_ok()
                        && rest.starts_with(&segment)
                })
        };
        self.fenced(
            Scope::User(id),
            self.inner.backend.clear_matching(&pattern, &wanted),
        )
        .await
    }

    /// Deletes one user's entries in one namespace; returns how many were deleted.
    pub async fn clear_user_in(
        &self,
        namespace: &Namespace,
        user_id: &str,
    ) -> Result<u64, CacheError> {
        let index = self.inner.keys.user_index(user_id);
        let prefix = self
            .inner
            .keys
            .user_namespace_prefix(namespace.as_str(), user_id);
        let mut n = self
            .fenced(
                Scope::Prefix(&prefix),
                self.inner.backend.clear_index(&index, Some(&prefix)),
            )
            .await?;
        if self.inner.keys.seed_users() {
            let escaped = escape_segment(user_id);
            n += self
                .clear_seed_layout(user_id, &escaped, Some(namespace.as_str()))
                .await?;
        }
        tracing::info!(target: "cache_runtime::store", namespace = %namespace, deleted = n, "cleared a user's cache in one namespace");
        Ok(n)
    }
}

/// Typed operations within one namespace: keys are `{prefix}:{namespace}:{escaped key}`.
///
/// Obtained from [`Cache::namespace`] or [`Cache::scoped`].
#[derive(Clone, Debug)]
pub struct NamespaceCache<'a> {
    cache: &'a Cache,
    ns: Namespace,
    /// Tags the writes of this handle carry ([`with_tags`](Self::with_tags)).
    tags: Vec<String>,
}

impl<'a> NamespaceCache<'a> {
    pub(crate) fn new(cache: &'a Cache, ns: Namespace) -> Self {
        Self {
            cache,
            ns,
            tags: Vec::new(),
        }
    }

    /// The same namespace, whose [`set`](Self::set)s list each entry under `tags`, so
    /// [`Cache::invalidate_tag`] removes it. An empty tag is refused by `set`.
    #[must_use]
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The full Redis key of `key` in this namespace.
    pub fn key(&self, key: &str) -> String {
        self.cache.keys().manual(self.ns.as_str(), key)
    }

    /// Stores `value`; `ttl: None` uses the namespace's TTL strategy. The shape of its type
    /// is recorded with it: reading it back as another type (or another build's version of
    /// the type) is a miss, never a wrong value.
    pub async fn set<T: Storable + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let ttl = ttl.unwrap_or_else(|| self.cache.ttl_for(self.ns.as_str()));
        if ttl.is_zero() {
            return Err(CacheError::InvalidInput(
                "a TTL of zero would store nothing; use delete() or a TTL of at least 1 ms".into(),
            ));
        }
        self.tags.iter().try_for_each(|t| check_tag(t))?;
        let counters = crate::stats_publisher::counters_of(self.cache, self.ns.as_str());
        self.cache
            .write_value(
                &counters,
                &self.key(key),
                (value, &shape_of::<T::Owned>()),
                Some(ttl),
                None,
                &self.tags,
            )
            .await
    }

    /// Reads a value; `None` when missing, expired or not decodable as `T`.
    pub async fn get<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        let counters = crate::stats_publisher::counters_of(self.cache, self.ns.as_str());
        self.cache
            .read_value(&counters, &self.key(key), &shape_of::<T>())
            .await
    }

    /// Deletes; `true` when the key existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        self.cache.remove(&self.key(key)).await
    }

    /// Whether the key exists.
    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        self.cache.backend().exists(&self.key(key)).await
    }

    /// Remaining lifetime of the key.
    pub async fn get_ttl(&self, key: &str) -> Result<KeyTtl, CacheError> {
        self.cache.backend().ttl(&self.key(key)).await
    }

    /// Adds `amount` (may be negative) to an integer counter, creating it at 0; returns the
    /// new value. A counter created here gets `ttl` (`None`: the namespace's TTL strategy);
    /// one that already has an expiry keeps it. Counters are plain Redis integers (`INCRBY`
    /// semantics): an integer stored with [`set`](Self::set) is one, and
    /// [`get`](Self::get)`::<i64>` or [`get_counter`](Self::get_counter) read them.
    pub async fn increment(
        &self,
        key: &str,
        amount: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, CacheError> {
        let key = self.key(key);
        let ttl = ttl.unwrap_or_else(|| self.cache.ttl_for(self.ns.as_str()));
        self.cache
            .fenced(
                Scope::Stored(&key),
                self.cache.backend().incr(&key, amount, Some(ttl)),
            )
            .await
    }

    /// The current value of a counter made by [`increment`](Self::increment).
    pub async fn get_counter(&self, key: &str) -> Result<Option<i64>, CacheError> {
        let Some(bytes) = self.cache.backend().get(&self.key(key)).await? else {
            return Ok(None);
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| CacheError::NotACounter("value is not an integer".into()))
    }

    /// Deletes every key of the namespace (SCAN + UNLINK); returns how many were deleted.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        let prefix = self.cache.keys().namespace_prefix(self.ns.as_str());
        let n = self
            .cache
            .fenced(
                Scope::Prefix(&prefix),
                self.cache.backend().clear_prefix(&prefix),
            )
            .await?;
        tracing::info!(target: "cache_runtime::store", namespace = %self.ns, deleted = n, "cleared namespace");
        Ok(n)
    }
}
