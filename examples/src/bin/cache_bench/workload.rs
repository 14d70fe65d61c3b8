//! What is measured: the value, the decorated functions (ours), the hand-written redis-rs
//! baseline (raw), and a run counter on every body, so a hit phase can prove that no body ran.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cache_runtime::cache_result;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::harness::{Call, Outcome};

/// The value of the small-hit rows: ten fields including a 32-element `Vec<f64>` (~350 bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Portfolio {
    id: u32,
    owner: String,
    currency: String,
    total_value: f64,
    total_return: f64,
    win_rate: f64,
    sharpe_ratio: f64,
    trades: u64,
    updated_at: u64,
    daily_returns: Vec<f64>,
}

fn portfolio(id: u32) -> Portfolio {
    Portfolio {
        id,
        owner: format!("user_{id}"),
        currency: "USD".to_owned(),
        total_value: 100_000.0 + f64::from(id),
        total_return: 0.125,
        win_rate: 0.58,
        sharpe_ratio: 1.4,
        trades: 1_200,
        updated_at: 1_700_000_000,
        daily_returns: (0..32).map(|i| f64::from(i) * 0.001).collect(),
    }
}

fn large_bytes_value(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn large_text_value(len: u32) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// The body of the stampede row sleeps this long.
pub const SLOW_BODY: Duration = Duration::from_millis(50);

/// Counts the runs of one function body.
pub struct Body {
    pub name: &'static str,
    runs: AtomicU64,
}

impl Body {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            runs: AtomicU64::new(0),
        }
    }

    fn ran(&self) {
        self.runs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

static PORTFOLIO: Body = Body::new("cached_portfolio");
static SLOW: Body = Body::new("slow_portfolio");
static LARGE_BYTES: Body = Body::new("large_bytes");
static LARGE_TEXT: Body = Body::new("large_text");
/// Every decorated function's body.
pub static OURS: [&Body; 4] = [&PORTFOLIO, &SLOW, &LARGE_BYTES, &LARGE_TEXT];
/// Every body the baseline runs (one counter: the baseline is one generic function).
pub static RAW: Body = Body::new("baseline");

#[cache_result(ttl = 3600, namespace = "bench")]
async fn cached_portfolio(id: u32) -> Portfolio {
    PORTFOLIO.ran();
    portfolio(id)
}

#[cache_result(ttl = 3600, namespace = "bench")]
async fn slow_portfolio(id: u32) -> Portfolio {
    SLOW.ran();
    tokio::time::sleep(SLOW_BODY).await;
    portfolio(id)
}

#[cache_result(ttl = 3600, namespace = "bench")]
async fn large_bytes(len: u32) -> Vec<u8> {
    LARGE_BYTES.ran();
    large_bytes_value(len)
}

#[cache_result(ttl = 3600, namespace = "bench")]
async fn large_text(len: u32) -> String {
    LARGE_TEXT.ran();
    large_text_value(len)
}

fn check_portfolio(value: &Portfolio, id: u32) -> Outcome {
    if value.id == id && value.daily_returns.len() == 32 {
        Ok(())
    } else {
        Err(format!("wrong value for id {id}: got id {}", value.id))
    }
}

fn check_len(what: &str, got: usize, len: u32) -> Outcome {
    if got == len as usize {
        Ok(())
    } else {
        Err(format!("wrong {what}: {got} bytes instead of {len}"))
    }
}

/// `cached_portfolio(id)`, checked.
pub fn ours_hit() -> impl Call {
    |id: u32| async move { check_portfolio(&cached_portfolio(id).await, id) }
}

/// `slow_portfolio(id)`, checked.
pub fn ours_slow() -> impl Call {
    |id: u32| async move { check_portfolio(&slow_portfolio(id).await, id) }
}

/// `large_bytes(len)`, checked.
pub fn ours_large_bytes() -> impl Call {
    |len: u32| async move { check_len("Vec<u8>", large_bytes(len).await.len(), len) }
}

/// `large_text(len)`, checked.
pub fn ours_large_text() -> impl Call {
    |len: u32| async move { check_len("String", large_text(len).await.len(), len) }
}

/// The baseline: what one writes by hand on redis-rs. One `MultiplexedConnection`; a hit is
/// GET + bincode decode, a miss is GET, body, bincode encode, SET EX. Keys are `format!`ted.
#[derive(Clone)]
pub struct Raw {
    conn: redis::aio::MultiplexedConnection,
}

impl Raw {
    pub fn new(conn: redis::aio::MultiplexedConnection) -> Self {
        Self { conn }
    }

    /// The baseline's read-through: returns the stored value, or runs `body` and stores it.
    fn get_or_set<T, B>(
        &self,
        key: String,
        body: B,
    ) -> impl Future<Output = Result<T, String>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send,
        B: Future<Output = T> + Send + 'static,
    {
        let mut conn = self.conn.clone();
        async move {
            let hit: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("baseline GET {key}: {e}"))?;
            if let Some(value) = hit.and_then(|b| bincode::deserialize::<T>(&b).ok()) {
                return Ok(value);
            }
            RAW.ran();
            let value = body.await;
            let bytes = bincode::serialize(&value).map_err(|e| format!("bincode: {e}"))?;
            redis::cmd("SET")
                .arg(&key)
                .arg(bytes)
                .arg("EX")
                .arg(3600)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| format!("baseline SET {key}: {e}"))?;
            Ok(value)
        }
    }

    /// The baseline of `cached_portfolio`, checked.
    pub fn hit(&self) -> impl Call {
        let raw = self.clone();
        move |id: u32| {
            let read = raw.get_or_set(format!("baseline:p:{id}"), async move { portfolio(id) });
            async move { check_portfolio(&read.await?, id) }
        }
    }

    /// The baseline of `slow_portfolio`, checked.
    pub fn slow(&self) -> impl Call {
        let raw = self.clone();
        move |id: u32| {
            let body = async move {
                tokio::time::sleep(SLOW_BODY).await;
                portfolio(id)
            };
            let read = raw.get_or_set(format!("baseline:slow:{id}"), body);
            async move { check_portfolio(&read.await?, id) }
        }
    }

    /// The baseline of `large_bytes`, checked.
    pub fn large_bytes(&self) -> impl Call {
        let raw = self.clone();
        move |len: u32| {
            let body = async move { large_bytes_value(len) };
            let read = raw.get_or_set(format!("baseline:bytes:{len}"), body);
            async move { check_len("Vec<u8>", read.await?.len(), len) }
        }
    }

    /// The baseline of `large_text`, checked.
    pub fn large_text(&self) -> impl Call {
        let raw = self.clone();
        move |len: u32| {
            let body = async move { large_text_value(len) };
            let read = raw.get_or_set(format!("baseline:text:{len}"), body);
            async move { check_len("String", read.await?.len(), len) }
        }
    }
}
