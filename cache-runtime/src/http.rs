//! axum routes of the seed: `GET /api/health/redis` and `GET /api/health/cache`
//! (cargo feature `http`), and `GET /metrics` for Prometheus ([`metrics_routes`]).
//!
//! ```no_run
//! # async fn run() {
//! let app = axum::Router::new()
//!     .merge(cache_runtime::http::health_routes())
//!     .merge(cache_runtime::http::metrics_routes());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::cache::Cache;

/// The health routes over the global cache ([`crate::global`]), mountable in any router.
pub fn health_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/api/health/redis", get(global_health))
        .route("/api/health/cache", get(global_stats))
}

/// The health routes over a given cache.
pub fn health_routes_for<S: Clone + Send + Sync + 'static>(cache: Cache) -> Router<S> {
    Router::new()
        .route("/api/health/redis", get(health))
        .route("/api/health/cache", get(stats))
        .with_state(cache)
}

/// `GET /metrics` over the global cache: the Prometheus text format of
/// [`crate::metrics::render`] (counters, latency histograms and gauges per namespace),
/// rendered from the runtime's own figures, so it works with or without a `metrics`
/// recorder installed. 503 when the cache configuration is invalid.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/metrics", get(global_metrics))
}

/// `GET /metrics` over a given cache.
pub fn metrics_routes_for<S: Clone + Send + Sync + 'static>(cache: Cache) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(cache)
}

fn disabled() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "status": "unhealthy",
            "connected": false,
            "error": "the cache configuration is invalid; see the log for the variable to fix",
            "timestamp": crate::health::timestamp(),
        })),
    )
        .into_response()
}

async fn global_health() -> Response {
    match crate::global() {
        Some(cache) => health(State(cache.clone())).await,
        None => disabled(),
    }
}

async fn global_stats() -> Response {
    match crate::global() {
        Some(cache) => stats(State(cache.clone())).await,
        None => disabled(),
    }
}

async fn health(State(cache): State<Cache>) -> Response {
    let report = cache.health().await;
    let code = if report.connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn stats(State(cache): State<Cache>) -> Response {
    Json(cache.stats().await).into_response()
}

async fn global_metrics() -> Response {
    match crate::global() {
        Some(cache) => metrics(State(cache.clone())).await,
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "# the cache configuration is invalid; see the log for the variable to fix\n",
        )
            .into_response(),
    }
}

async fn metrics(State(cache): State<Cache>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&cache),
    )
        .into_response()
}
