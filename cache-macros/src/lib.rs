//! Attribute macros of the caching framework. Use them through `cache_runtime`, which
//! re-exports them: `use cache_runtime::{cache_result, cache_user_specific};`.
//!
//! The entry points below only convert token streams; parsing (`args.rs`), validation
//! against the signature (`validate.rs`) and code generation (`expand.rs`) work on
//! `proc_macro2` and are unit-tested, including expansion snapshots
//! (`tests/snapshots/*.expanded.rs`).
use proc_macro::TokenStream;

mod args;
mod ctxt;
mod duration;
mod expand;
#[cfg(test)]
mod snapshots;
mod validate;

/// Caches the result of an `async fn` in Redis (or the embedded store), keyed by its arguments.
///
/// ```text
/// use cache_runtime::cache_result;
///
/// #[cache_result(ttl = 3600, namespace = "analytics")]
/// async fn calculate_portfolio_metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
///     // runs only on a miss
/// }
/// ```
///
/// A call hashes its arguments into the key
/// `{prefix}:{namespace}:{module::function}:v{version}:{hash}` (`{name}` for `name = "..."`) and returns the stored value
/// when there is one; otherwise it runs the body (once per key in the process, however many
/// calls wait for it) and stores the result. Any cache failure is logged and the body runs:
/// the cache never changes what the function returns.
///
/// # Arguments
///
/// | argument | meaning | default |
/// |---|---|---|
/// | `ttl = 3600` / `ttl = "30m"` | time to live: seconds, or a duration with units `d`, `h`, `m`, `s` in that order (`"90s"`, `"1h30m"`, `"1d"`); must be positive | the namespace's TTL (`REDIS_TTL_DEFAULT` for `general`) |
/// | `namespace = "analytics"` | second key segment, `[a-z0-9_-]{1,64}` | `"general"` |
/// | `version = 2` | bump to never read values stored by an older body | `1` |
/// | `name = "billing::invoice"` | the function's identity in its keys, in place of `module::function`: entries survive moving or renaming the function or its crate; `[A-Za-z0-9_:.-]{1,200}`; two functions must not share one | `module_path!()::function` |
/// | `skip(a, b)` | parameters left out of the key (connections, clients, loggers) | none |
/// | `skip(self)` / `include(self)` | on methods, one of them is **required**: `skip(self)` shares entries between all values of the type; `include(self)` serialises `self` into the key (`Self: Serialize`) | - |
/// | `cache_none = true` | for `Option<T>` returns, also cache `None` | `false` |
/// | `companions = true/false` | generate the invalidation companions (below) | `true` without `self`, `false` for methods |
/// | `cache = crate::caches::analytics` | the cache this function uses: the path of a function `fn() -> &'static cache_runtime::Cache` (checked at compile time) | the global cache (`cache_runtime::global()`) |
/// | `fail_safe = "2h"` / `false` | when the body fails (an `Err`, a `None` not cached, a panic), return the last good value if it expired less than this long ago (counted in `stale_served`); entries are kept `ttl` + this window | `CACHE_FAIL_SAFE` (off) |
/// | `soft_timeout = "300ms"` | with a stale value at hand, answer a body slower than this with it; the body finishes in the background and stores its result. Needs `fail_safe`, and parameters that own their data | off |
/// | `refresh_ahead = 0.8` | a hit after this share of the TTL (strictly between 0 and 1) returns at once and starts one background refresh of the key. Needs parameters that own their data | off |
/// | `distributed_lock = true` / `"30s"` / `false` | on a miss, one process across all that share the Redis runs the body (a lock with an owner token and this lease); the others wait for its value, then run their own body rather than fail | `CACHE_DISTRIBUTED_LOCK` (off), lease `CACHE_LOCK_LEASE` (10 s) |
///
/// | `tags = ["trades:{user_id}", "market"]` | tags the entry, so `cache.invalidate_tag("trades:user_1")` removes it with every other entry of that tag; `{name}` is the value (`Display`) of the parameter `name`, `{{`/`}}` literal braces | none |
///
/// These five apply to `#[cache_user_specific]` too; see the README's "Tags" and "When the
/// source fails" for what each one costs.
///
/// Unknown arguments (with a "did you mean" hint), duplicates, bad values and signature
/// problems are all reported in one compilation, each on its token.
///
/// # Which cache
///
/// The global cache by default (set up by `cache_runtime::init`, or from the environment on
/// first use); `cache = path` names another, e.g. one `Cache` per Redis:
///
/// ```text
/// static ANALYTICS: LazyLock<Cache> = LazyLock::new(|| Cache::new(analytics_config()).expect("valid"));
/// fn analytics() -> &'static Cache { &ANALYTICS }
///
/// #[cache_result(namespace = "analytics", cache = analytics)]
/// async fn metrics(user_id: &str) -> Metrics { /* ... */ }
/// ```
///
/// In tests, `cache_runtime::with_cache(cache, future)` runs `future` with `cache` in place of
/// whichever cache its decorated calls would use (a task-local override: parallel tests
/// each get their own cache, and the process-wide one is never touched).
///
/// # What is cached
///
/// Decided from the return type as written:
/// - `Result<T, E>` (and aliases such as `io::Result<T>`, `anyhow::Result<T>`): only `Ok(T)`
///   is stored; `E` needs no trait. `T: Serialize + DeserializeOwned`.
/// - `Option<T>`: only `Some(T)`, unless `cache_none = true`.
/// - anything else: every value (`Serialize + DeserializeOwned`).
///
/// A function returning `()` is rejected (nothing to cache), as is `impl Trait`.
///
/// # The key
///
/// Every parameter not skipped must implement `Serialize`; parameters must be plain names
/// (`pair: (u32, u32)`, not `(a, b): (u32, u32)`); `_` parameters are never part of the key;
/// `impl Trait` parameters must be skipped. The hash also covers the function path (or
/// `name`), the version, a fingerprint of the signature (key parameters' names and types, the
/// return type, what is stored), the *shape* of the stored type (field names, order and
/// types, enum variants, recursively, traced once from its `Deserialize`: a deploy that
/// changes the type misses instead of decoding old bytes into it, an unchanged type keeps
/// hitting), every generic type parameter (`type_name`), every const parameter, and
/// for methods and functions mentioning `Self` the `Self` type: `f::<u32>` and `f::<String>`,
/// or `A::get` and `B::get`, never share entries. Note: two receiver-less associated
/// functions with the same name, module and signature on different types (and not naming
/// `Self`) share keys; give them distinct namespaces or versions.
///
/// # Companions: invalidate or refresh one entry
///
/// Next to a function without `self` (or a method with `companions = true`), the attribute
/// generates, with the function's visibility and generics:
///
/// ```text
/// fn {name}_cache_key(<key params>) -> Option<String>;                        // the full key
/// async fn {name}_invalidate(<key params>) -> Result<bool, cache_runtime::CacheError>; // delete it
/// ```
///
/// They take the key parameters in their order (skipped ones omitted), by reference when
/// the function takes them by value, and `&self` for methods. To refresh an entry,
/// invalidate it and call the function.
///
/// ```text
/// #[cache_result(namespace = "trading", ttl = "15m")]
/// pub async fn quote(symbol: &str, venue: String) -> Result<f64, ApiError> { /* ... */ }
///
/// quote_invalidate("AAPL", &venue).await?;   // Ok(true): an entry was removed
/// let fresh = quote("AAPL", venue).await?;  // runs the body, stores the new value
/// ```
///
/// A trait `impl` cannot hold extra items: methods get no companions by default, and a
/// receiver-less function in a trait impl needs `companions = false`. `#[async_trait]` impls
/// never get companions.
///
/// # Methods and traits
///
/// Works on inherent methods, native `async fn` in trait impls, and `#[async_trait]` impls
/// (put `#[async_trait]` on the impl and this attribute on the method). Stacks with
/// `#[tracing::instrument]` in either order. Not on a trait's method declaration: put it on
/// the implementation.
#[proc_macro_attribute]
pub fn cache_result(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cache_result(args.into(), item.into()).into()
}

/// Caches the result of an `async fn` per user: the key carries a `user:{id}` segment.
///
/// ```text
/// use cache_runtime::cache_user_specific;
///
/// #[cache_user_specific(ttl = 1800, data_type = "reports")]
/// async fn generate_user_report(user_id: &str, report_type: &str) -> Report {
///     // runs only on a miss
/// }
/// // key: tradistry:users:user:{user_id}:{module::generate_user_report}:v1:{hash}
/// ```
///
/// Everything of [`cache_result`] applies (`ttl`, `namespace`, `version`, `skip`,
/// `skip(self)`/`include(self)`, `cache_none`, `companions`, return shapes, companions),
/// with these differences:
///
/// | argument | meaning | default |
/// |---|---|---|
/// | `namespace = "ai"` | second key segment | `"users"` |
/// | `user = account_id` | the parameter holding the user id; its type must implement `Display` (the id is escaped in the key, so `a:b*` cannot forge or glob other keys); it cannot be skipped | the parameter named `user_id` (required) |
/// | `data_type = "reports"` | what kind of per-user data this is, `[a-z0-9_-]{1,64}` | the function name |
///
/// The user segment comes right after the namespace, and the entry is recorded in the user's
/// index, so all of one user's entries can be found and cleared without scanning other
/// users' keys. `data_type` is mixed into the hashed signature fingerprint (not written as a
/// key segment): two functions with different data types never share entries (their paths
/// differ too), and changing a function's `data_type` starts it on fresh entries.
#[proc_macro_attribute]
pub fn cache_user_specific(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cache_user_specific(args.into(), item.into()).into()
}
