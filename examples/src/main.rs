//! A small Tradistry-like service over the cache.
//!
//! ```text
//! cargo run -p cache-examples --bin tradistry-server            # embedded cache
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p cache-examples --bin tradistry-server
//! ```
//!
//! Routes:
//! - `GET  /api/portfolio/{user_id}/performance?timeframe=30d` — `#[cache_user_specific]`
//! - `POST /api/ai/chat` `{"user_id": "...", "message": "..."}` — AI responses by prompt hash
//! - `GET  /api/quotes/{user_id}/{symbol}` — trading-data caching
//! - `DELETE /api/users/{user_id}/cache` — clears the user's entries in every namespace
//! - `GET  /api/health/redis`, `GET /api/health/cache` — health and statistics
//! - `GET  /metrics` — Prometheus text format (counters, latency histograms, gauges)
//! - `GET  /api/db/queries` — how many queries reached the database (to see the cache work)

mod db;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cache_runtime::service::{prompt_hash, CacheService};
use cache_runtime::{cache_user_specific, CacheConfig};
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError, Performance};

#[derive(Clone)]
struct App {
    db: Db,
    service: CacheService,
    db_queries: Arc<AtomicU64>,
}

/// Expensive analytics, cached per user in namespace `analytics` for 30 minutes.
#[cache_user_specific(
    ttl = 1800,
    namespace = "analytics",
    data_type = "performance",
    skip(app)
)]
async fn portfolio_performance(
    app: &App,
    user_id: &str,
    timeframe: &str,
) -> Result<Performance, DbError> {
    app.db_queries.fetch_add(1, Ordering::Relaxed);
    let (db, user, tf) = (app.db.clone(), user_id.to_owned(), timeframe.to_owned());
    tokio::task::spawn_blocking(move || db.performance(&user, &tf))
        .await
        .map_err(|e| DbError(e.to_string()))?
}

#[derive(Deserialize)]
struct Timeframe {
    timeframe: Option<String>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn performance(
    State(app): State<App>,
    Path(user_id): Path<String>,
    Query(q): Query<Timeframe>,
) -> Response {
    let timeframe = q.timeframe.unwrap_or_else(|| "30d".to_owned());
    match portfolio_performance(&app, &user_id, &timeframe).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    user_id: String,
    message: String,
}

#[derive(Serialize, Deserialize)]
struct ChatResponse {
    content: String,
    prompt_hash: String,
    cached: bool,
}

async fn chat(State(app): State<App>, Json(req): Json<ChatRequest>) -> Response {
    let hash = prompt_hash(&req.message);
    match app
        .service
        .get_ai_response::<String>(&req.user_id, &hash)
        .await
    {
        Ok(Some(content)) => {
            return Json(ChatResponse {
                content,
                prompt_hash: hash,
                cached: true,
            })
            .into_response()
        }
        Ok(None) => {}
        // Fail open: the cache never makes the endpoint fail.
        Err(e) => tracing::warn!(error = %e, "AI cache read failed"),
    }
    // Stands in for a model call.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let content = format!(
        "Here is an analysis of {:?} ({} characters).",
        req.message,
        req.message.chars().count()
    );
    if let Err(e) = app
        .service
        .cache_ai_response(&req.user_id, &hash, &content, None)
        .await
    {
        tracing::warn!(error = %e, "AI cache write failed");
    }
    Json(ChatResponse {
        content,
        prompt_hash: hash,
        cached: false,
    })
    .into_response()
}

async fn quote(
    State(app): State<App>,
    Path((user_id, symbol)): Path<(String, String)>,
) -> Response {
    match app
        .service
        .get_trading_data::<db::Quote>(&user_id, &symbol, "quote")
        .await
    {
        Ok(Some(q)) => return Json(q).into_response(),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "quote cache read failed"),
    }
    app.db_queries.fetch_add(1, Ordering::Relaxed);
    let (db, sym) = (app.db.clone(), symbol.clone());
    let found = tokio::task::spawn_blocking(move || db.quote(&sym)).await;
    match found {
        Ok(Ok(Some(q))) => {
            if let Err(e) = app
                .service
                .cache_trading_data(&user_id, &symbol, "quote", &q, None)
                .await
            {
                tracing::warn!(error = %e, "quote cache write failed");
            }
            Json(q).into_response()
        }
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no quote for {symbol:?}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn clear_user(State(app): State<App>, Path(user_id): Path<String>) -> Response {
    match app.service.clear_all_user_cache(&user_id).await {
        Ok(cleared) => {
            Json(serde_json::json!({ "user_id": user_id, "cleared": cleared })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn db_queries(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "queries": app.db_queries.load(Ordering::Relaxed) }))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/api/portfolio/{user_id}/performance", get(performance))
        .route("/api/ai/chat", post(chat))
        .route("/api/quotes/{user_id}/{symbol}", get(quote))
        .route("/api/users/{user_id}/cache", delete(clear_user))
        .route("/api/db/queries", get(db_queries))
        .with_state(app)
        .merge(cache_runtime::http::health_routes())
        .merge(cache_runtime::http::metrics_routes())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match CacheConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cache = match cache_runtime::init(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let db = match Db::seeded() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let app = App {
        db,
        service: CacheService::new(cache),
        db_queries: Arc::default(),
    };
    let bind = std::env::var("BIND").unwrap_or_else(|_| {
        format!(
            "127.0.0.1:{}",
            std::env::var("PORT").unwrap_or_else(|_| "8000".into())
        )
    });
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {bind}: {e}; set PORT or BIND to a free address");
            return std::process::ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("tradistry-server listening on http://{addr}"),
        Err(_) => println!("tradistry-server listening on {bind}"),
    }
    if let Err(e) = axum::serve(listener, router(app)).await {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
