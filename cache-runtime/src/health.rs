//! `health()` and `stats()` in the seed's JSON shapes, for Redis and the embedded store.
//!
//! Anything a managed service withholds (INFO fields, CONFIG) comes back `null`, never an
//! error. Key counts on Redis come from one bounded SCAN pass: exact when it finishes within
//! its budget, otherwise extrapolated and marked `approximate`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::{Backend, PoolStats};
use crate::namespace::Namespace;
use crate::store::{Cache, NamespaceCounters};

/// Most keys examined by one `stats()` SCAN pass before counts are extrapolated.
pub const STATS_SCAN_BUDGET: u64 = 200_000;
/// Longest one `stats()` SCAN pass runs before counts are extrapolated.
pub const STATS_TIME_BUDGET: Duration = Duration::from_secs(2);

/// `GET /api/health/redis`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `healthy` or `unhealthy`.
    pub status: &'static str,
    /// Whether a round trip succeeded.
    pub connected: bool,
    /// `redis` or `embedded`.
    pub backend: &'static str,
    /// Round trip of the PING, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Why it is unhealthy (never a password).
    pub error: Option<String>,
    /// Whether calls currently bypass Redis after repeated failures (circuit breaker).
    pub circuit_open: bool,
    /// Server, clients and pool.
    pub info: HealthInfo,
    /// UTC, ISO 8601.
    pub timestamp: String,
}

/// `info` of [`HealthReport`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct HealthInfo {
    /// Server facts.
    pub server: ServerInfo,
    /// Client connections as the server counts them.
    pub clients: ClientsInfo,
    /// Our connection pool.
    pub pool: PoolInfo,
}

/// `info.server`.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: Option<String>,
    /// `standalone`, `cluster`, `sentinel` or `embedded`.
    pub mode: Option<String>,
    /// Seconds since the server started.
    pub uptime: Option<u64>,
}

/// `info.clients`.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ClientsInfo {
    /// `connected_clients`.
    pub connected: Option<u64>,
    /// `blocked_clients`.
    pub blocked: Option<u64>,
}

/// `info.pool`.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct PoolInfo {
    /// `REDIS_CONNECTION_POOL_MAX_SIZE`.
    pub max_connections: Option<usize>,
    /// Connections opened.
    pub created_connections: Option<usize>,
    /// `max - busy`.
    pub available_connections: Option<usize>,
}

/// `GET /api/health/cache`.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StatsReport {
    /// Memory of the store.
    pub memory: MemoryStats,
    /// Key counts.
    pub keys: KeyStats,
    /// Hits, misses, stores, errors and hit ratio per namespace, in this process.
    pub counters: BTreeMap<String, NamespaceCounters>,
    /// Why some fields are null (never a password).
    pub error: Option<String>,
    /// UTC, ISO 8601.
    pub timestamp: String,
}

/// `memory` of [`StatsReport`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Bytes in use.
    pub used_memory: Option<u64>,
    /// Bytes in use, human-readable.
    pub used_memory_human: Option<String>,
    /// The memory limit (0: none), `null` when withheld.
    pub maxmemory: Option<u64>,
    /// The eviction policy, `null` when withheld.
    pub maxmemory_policy: Option<String>,
}

/// `keys` of [`StatsReport`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct KeyStats {
    /// Keys in the database (all of them, ours or not).
    pub total: Option<u64>,
    /// Our keys per namespace (the five of the seed always present).
    pub by_namespace: BTreeMap<String, u64>,
    /// Whether `by_namespace` was extrapolated from a partial scan.
    pub approximate: bool,
    /// Keys examined to count `by_namespace`.
    pub scanned: u64,
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ` (no clock crate needed).
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `INFO` text into `field -> value`.
fn parse_info(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect()
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

fn pool_info(stats: Option<PoolStats>) -> PoolInfo {
    stats.map_or_else(PoolInfo::default, |p| PoolInfo {
        max_connections: Some(p.max_connections),
        created_connections: Some(p.created_connections),
        available_connections: Some(p.available_connections),
    })
}

impl Cache {
    /// Liveness and server facts (the seed's `/api/health/redis`).
    pub async fn health(&self) -> HealthReport {
        let ping = self.ping().await;
        let mut info = HealthInfo {
            pool: pool_info(self.pool_stats()),
            ..HealthInfo::default()
        };
        match self.backend() {
            Backend::Memory(_) => {
                info.server = ServerInfo {
                    version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                    mode: Some("embedded".to_owned()),
                    uptime: Some(self.inner.started.elapsed().as_secs()),
                };
            }
            Backend::Redis(r) if ping.is_ok() => {
                if let Ok(text) = r.info("server").await {
                    let f = parse_info(&text);
                    info.server = ServerInfo {
                        version: f.get("redis_version").map(|s| (*s).to_owned()),
                        mode: f.get("redis_mode").map(|s| (*s).to_owned()),
                        uptime: f.get("uptime_in_seconds").and_then(|s| s.parse().ok()),
                    };
                }
                if let Ok(text) = r.info("clients").await {
                    let f = parse_info(&text);
                    info.clients = ClientsInfo {
                        connected: f.get("connected_clients").and_then(|s| s.parse().ok()),
                        blocked: f.get("blocked_clients").and_then(|s| s.parse().ok()),
                    };
                }
            }
            Backend::Redis(_) => {}
        }
        HealthReport {
            status: if ping.is_ok() { "healthy" } else { "unhealthy" },
            connected: ping.is_ok(),
            backend: self.backend_kind(),
            latency_ms: ping.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
            error: ping.err().map(|e| match (&e, self.backend()) {
                // The breaker hides the cause; report the fault that opened it.
                (crate::CacheError::Unavailable, Backend::Redis(r)) => match r.last_fault() {
                    Some(last) => format!("{e}; last error: {last}"),
                    None => e.to_string(),
                },
                _ => e.to_string(),
            }),
            circuit_open: self.backend().circuit_open(),
            info,
            timestamp: timestamp(),
        }
    }

    /// Memory, key counts and counters (the seed's `/api/health/cache`). Bounded in time
    /// on a large database: see [`STATS_SCAN_BUDGET`] and [`STATS_TIME_BUDGET`].
    pub async fn stats(&self) -> StatsReport {
        let counters: BTreeMap<String, NamespaceCounters> = self.counters().into_iter().collect();
        let mut by_namespace: BTreeMap<String, u64> = Namespace::BUILT_IN
            .iter()
            .map(|n| (n.as_str().to_owned(), 0))
            .collect();
        let prefix = format!("{}:", self.keys().prefix());
        let mut report = StatsReport {
            memory: MemoryStats::default(),
            keys: KeyStats::default(),
            counters,
            error: None,
            timestamp: timestamp(),
        };
        match self.backend() {
            Backend::Memory(m) => {
                let (entries, bytes) = m.usage();
                let names = m.namespaces(&prefix);
                for (ns, n) in names {
                    by_namespace.insert(ns, n);
                }
                report.memory = MemoryStats {
                    used_memory: Some(bytes),
                    used_memory_human: Some(human_bytes(bytes)),
                    maxmemory: Some(m.config().max_bytes),
                    maxmemory_policy: Some("tinylfu".to_owned()),
                };
                report.keys = KeyStats {
                    total: Some(entries),
                    by_namespace,
                    approximate: false,
                    scanned: entries,
                };
            }
            Backend::Redis(r) => {
                match r.info("memory").await {
                    Ok(text) => {
                        let f = parse_info(&text);
                        let used = f.get("used_memory").and_then(|s| s.parse().ok());
                        report.memory = MemoryStats {
                            used_memory: used,
                            used_memory_human: f
                                .get("used_memory_human")
                                .map(|s| (*s).to_owned())
                                .or_else(|| used.map(human_bytes)),
                            maxmemory: f.get("maxmemory").and_then(|s| s.parse().ok()),
                            maxmemory_policy: f.get("maxmemory_policy").map(|s| (*s).to_owned()),
                        };
                    }
                    Err(e) => report.error = Some(e.to_string()),
                }
                let total = r.raw(&redis::cmd("DBSIZE")).await;
                report.keys.total = match total {
                    Ok(redis::Value::Int(n)) => u64::try_from(n).ok(),
                    _ => None,
                };
                match r
                    .count_namespaces(&prefix, STATS_SCAN_BUDGET, STATS_TIME_BUDGET)
                    .await
                {
                    Ok(count) => {
                        let scale = match (count.complete, report.keys.total) {
                            (false, Some(total)) if count.scanned > 0 => {
                                total as f64 / count.scanned as f64
                            }
                            _ => 1.0,
                        };
                        for (ns, n) in count.by_namespace {
                            by_namespace.insert(ns, (n as f64 * scale).round() as u64);
                        }
                        report.keys.approximate = !count.complete;
                        report.keys.scanned = count.scanned;
                    }
                    Err(e) => {
                        // Unknown, not zero: leave the counts out.
                        by_namespace.clear();
                        report.error = Some(e.to_string());
                    }
                }
                report.keys.by_namespace = by_namespace;
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 200 * 1024), "5.20M");
    }

    #[test]
    fn info_parsing_ignores_sections() {
        let f = parse_info("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n");
        assert_eq!(f.get("redis_version"), Some(&"7.0.15"));
        assert_eq!(f.get("redis_mode"), Some(&"standalone"));
    }
}
