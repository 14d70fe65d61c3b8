//! Tracing spans of cache operations, with OpenTelemetry's semantic conventions for field
//! names (see the module above for the list).
//!
//! Cost: every span here is at DEBUG, so with no subscriber, or one at INFO, `debug_span!`
//! is a level check that returns a disabled span, and every helper below returns at once
//! on a disabled span (field values are computed only for a span someone records).

use tracing::field::Empty;
use tracing::Span;

use crate::cache::Cache;
use crate::config::{BackendConfig, RedisConfig};
use crate::engine::read::Entry;
use crate::engine::site::Site;
use crate::error::CacheError;

/// The span of one decorated call (`cache.call`); its fields that depend on the cache are
/// recorded by [`bind`], the outcome by [`read`] and [`stale`].
#[inline]
pub(crate) fn call(site: &Site) -> Span {
    tracing::debug_span!(
        target: "cache_runtime::call",
        "cache.call",
        db.system.name = Empty,
        db.operation.name = "GET",
        server.address = Empty,
        server.port = Empty,
        code.function.name = site.function,
        cache.namespace = site.namespace,
        cache.outcome = Empty,
    )
}

/// Records what the call's cache is (`db.system.name`, `server.*`). Never the key: keys
/// carry user ids, and are in the DEBUG events of `cache_runtime::store` (inside this
/// span) for whoever enables those.
#[inline]
pub(crate) fn bind(span: &Span, cache: &Cache) {
    if span.is_disabled() {
        return;
    }
    span.record("db.system.name", cache.backend_kind());
    if let BackendConfig::Redis(redis) = &cache.config().backend {
        span.record("server.address", redis.host.as_str());
        span.record("server.port", redis.port);
    }
}

/// Records the outcome of the call's read: `hit`, `miss` (stale included: [`stale`] says
/// so if the stale value is served) or `error` (the cache failed; the body runs).
#[inline]
pub(crate) fn read<T>(span: &Span, result: &Result<Entry<T>, CacheError>) {
    if span.is_disabled() {
        return;
    }
    let outcome = match result {
        Ok(Entry::Fresh { .. }) => "hit",
        Ok(Entry::Stale(_) | Entry::Missing) => "miss",
        Err(_) => "error",
    };
    span.record("cache.outcome", outcome);
}

/// The current call served a stale value (fail-safe, soft timeout). Called on that path
/// only, inside the call's span.
pub(crate) fn stale() {
    let span = Span::current();
    if !span.is_disabled() {
        // A no-op on a span without the field (not a `cache.call`).
        span.record("cache.outcome", "stale");
    }
}

/// The span of one Redis round trip (`redis.request`): a command, or a pipeline of
/// `commands`, named from the command names only (never their arguments).
#[inline]
pub(crate) fn redis_request<'a>(
    config: &RedisConfig,
    commands: impl FnOnce() -> Vec<&'a redis::Cmd>,
) -> Span {
    let span = tracing::debug_span!(
        target: "cache_runtime::redis",
        "redis.request",
        otel.name = Empty,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = Empty,
        db.operation.batch.size = Empty,
        db.query.summary = Empty,
        server.address = config.host.as_str(),
        server.port = config.port,
        otel.status_code = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let commands = commands();
    let names: Vec<String> = commands.iter().map(|c| command_name(c)).collect();
    let operation = match names.as_slice() {
        [one] => one.clone(),
        [first, rest @ ..] if rest.iter().all(|n| n == first) => format!("BATCH {first}"),
        _ => "BATCH".to_owned(),
    };
    span.record("otel.name", operation.as_str());
    span.record("db.operation.name", operation.as_str());
    if names.len() > 1 {
        span.record("db.operation.batch.size", names.len());
        span.record("db.query.summary", names.join(" ").as_str());
    }
    span
}

/// A command's name: its first argument, upper case (the driver's commands are ASCII).
fn command_name(cmd: &redis::Cmd) -> String {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).to_ascii_uppercase(),
        _ => "UNKNOWN".to_owned(),
    }
}

/// Records a failed round trip on its span (`otel.status_code`, `error.type`).
#[inline]
pub(crate) fn failed<T>(span: &Span, result: &Result<T, CacheError>) {
    let Err(e) = result else { return };
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type(e));
}

/// A low-cardinality name for an error (never its message, which may quote a key).
fn error_type(e: &CacheError) -> &'static str {
    match e {
        CacheError::Timeout(_) => "timeout",
        CacheError::Unavailable => "circuit_open",
        CacheError::Server { .. } => "server",
        CacheError::WrongType => "wrong_type",
        CacheError::WrongTopology(_) => "wrong_topology",
        CacheError::NoRuntime => "no_runtime",
        e if e.is_authentication_failure() => "auth",
        e if e.is_connection_fault() => "connection",
        _ => "other",
    }
}
