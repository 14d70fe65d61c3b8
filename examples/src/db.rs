//! The source of truth: an in-process SQLite database seeded with trades and prices, so
//! a cache miss costs a real query.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

/// Users seeded: `user_1` … `user_{USERS}`.
pub const USERS: u32 = 50;
/// Symbols seeded.
pub const SYMBOLS: [&str; 6] = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA"];

/// A handle to the database (cheap to clone).
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

/// Portfolio performance of one user over a timeframe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Performance {
    pub user_id: String,
    pub timeframe: String,
    pub trades: u64,
    pub total_return: f64,
    pub win_rate: f64,
    pub calculated_at: String,
}

/// A market quote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Quote {
    pub symbol: String,
    pub price: f64,
    pub volume: u64,
}

/// Errors of the database layer.
#[derive(Debug)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database error: {}", self.0)
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

impl Db {
    /// An in-memory database with deterministic seed data.
    pub fn seeded() -> Result<Self, DbError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE trades (user_id TEXT NOT NULL, symbol TEXT NOT NULL, day INTEGER NOT NULL, pnl REAL NOT NULL);
             CREATE INDEX trades_user ON trades(user_id, day);
             CREATE TABLE prices (symbol TEXT PRIMARY KEY, price REAL NOT NULL, volume INTEGER NOT NULL);",
        )?;
        {
            let tx = conn.unchecked_transaction()?;
            let mut insert = tx.prepare("INSERT INTO trades VALUES (?1, ?2, ?3, ?4)")?;
            // A small LCG keeps the data deterministic without a rand dependency.
            let mut state: u64 = 42;
            let mut next = || {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 33) as f64 / f64::from(u32::MAX >> 1)
            };
            for user in 1..=USERS {
                for trade in 0..200u32 {
                    let symbol = SYMBOLS[(trade as usize) % SYMBOLS.len()];
                    let day = (next() * 365.0) as i64;
                    let pnl = (next() - 0.45) * 1000.0;
                    insert.execute(params![format!("user_{user}"), symbol, day, pnl])?;
                }
            }
            drop(insert);
            for (i, symbol) in SYMBOLS.iter().enumerate() {
                tx.execute(
                    "INSERT INTO prices VALUES (?1, ?2, ?3)",
                    params![
                        symbol,
                        100.0 + 25.5 * i as f64,
                        1_000_000 + 10_000 * i as i64
                    ],
                )?;
            }
            tx.commit()?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, DbError>) -> Result<T, DbError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn)
    }

    /// Computes performance from the trades of the last `days` days.
    pub fn performance(&self, user_id: &str, timeframe: &str) -> Result<Performance, DbError> {
        let days: i64 = match timeframe {
            "7d" => 7,
            "30d" => 30,
            "90d" => 90,
            "1y" => 365,
            other => {
                return Err(DbError(format!(
                    "unknown timeframe {other:?}: use 7d, 30d, 90d or 1y"
                )))
            }
        };
        self.with(|c| {
            let (trades, total, wins): (u64, f64, u64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(pnl), 0), COALESCE(SUM(pnl > 0), 0) FROM trades WHERE user_id = ?1 AND day >= 365 - ?2",
                params![user_id, days],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(Performance {
                user_id: user_id.to_owned(),
                timeframe: timeframe.to_owned(),
                trades,
                total_return: (total * 100.0).round() / 100.0,
                win_rate: if trades == 0 { 0.0 } else { wins as f64 / trades as f64 },
                calculated_at: cache_runtime::health::timestamp(),
            })
        })
    }

    /// The latest quote of a symbol.
    pub fn quote(&self, symbol: &str) -> Result<Option<Quote>, DbError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT price, volume FROM prices WHERE symbol = ?1")?;
            let mut rows = stmt.query(params![symbol])?;
            match rows.next()? {
                Some(row) => Ok(Some(Quote {
                    symbol: symbol.to_owned(),
                    price: row.get(0)?,
                    volume: row.get(1)?,
                })),
                None => Ok(None),
            }
        })
    }
}
