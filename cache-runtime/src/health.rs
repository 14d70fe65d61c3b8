//! `health()` and `stats()` in the seed's JSON shapes, for Redis and the embedded store.
//!
//! Anything a managed service withholds (INFO fields, CONFIG) comes back `null`, never an
//! error. Key counts on Redis come from one bounded SCAN pass: exact when it finishes within
//! its budget, otherwise extrapolated and marked `approximate`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::{PoolStats, ScanBudget, Store};
use crate::cache::Cache;
use crate::counters::NamespaceCounters;
use crate::error::CacheError;
use crate::namespace::Namespace;

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
    /// How the L1 hears about writes made elsewhere, `null` without an L1: the same as
    /// [`l1_mode`](Self::l1_mode) (kept for existing readers).
    pub l1_invalidation: Option<&'static str>,
    /// Whether the L1 is serving (its invalidation stream is up), `null` without an L1.
    pub l1_active: Option<bool>,
    /// How the L1 is kept coherent right now, `null` without an L1: `tracking` (the server
    /// reports every change of a key, whoever made it; see the README's "L1 modes") or
    /// `pubsub` (the fallback where the server refuses tracking: only this library's
    /// writers announce their changes).
    pub l1_mode: Option<&'static str>,
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
    /// Client connections as the server counts them (summed over a cluster's nodes).
    pub clients: ClientsInfo,
    /// Our connection pool.
    pub pool: PoolInfo,
    /// Each node of a Redis Cluster (absent for a single server).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeHealth>,
}

/// One node of a cluster in [`HealthInfo`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port`.
    pub address: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// `ok`, `failing` (the cluster cannot reach it) or `unreachable: <why>`.
    pub status: String,
    /// Hash slots it serves.
    pub slots: u32,
    /// `redis_version`.
    pub version: Option<String>,
    /// Round trip of a request to it, in milliseconds.
    pub latency_ms: Option<f64>,
}

/// One node of a cluster in [`StatsReport`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct NodeStats {
    /// `host:port`.
    pub address: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// Bytes in use.
    pub used_memory: Option<u64>,
    /// Bytes in use, human-readable.
    pub used_memory_human: Option<String>,
    /// Its memory limit (0: none).
    pub maxmemory: Option<u64>,
    /// Keys it holds (a replica holds its primary's).
    pub keys: Option<u64>,
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
    /// Each node of a Redis Cluster (absent for a single server): `memory` and `keys`
    /// above are the sums over the primaries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStats>,
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
        let backend = self.backend();
        let ping = self.ping().await;
        let mut info = HealthInfo {
            pool: pool_info(self.pool_stats()),
            ..HealthInfo::default()
        };
        // Facts a server withholds (ACL, managed service) stay null.
        let mut problem = None;
        if ping.is_ok() {
            if let Ok(facts) = backend.server_facts().await {
                info.server = ServerInfo {
                    version: facts.version,
                    mode: facts.mode,
                    uptime: facts.uptime_secs,
                };
                info.clients = ClientsInfo {
                    connected: facts.clients_connected,
                    blocked: facts.clients_blocked,
                };
                info.nodes = facts
                    .nodes
                    .into_iter()
                    .map(|n| NodeHealth {
                        address: n.address,
                        role: n.role,
                        status: n.status,
                        slots: n.slots,
                        version: n.version,
                        latency_ms: n.latency_ms,
                    })
                    .collect();
                problem = facts.problem;
            }
        }
        // Answering is not enough for a cluster that cannot serve every slot.
        let healthy = ping.is_ok() && problem.is_none();
        let l1 = self.inner.l1.is_some();
        HealthReport {
            status: if healthy { "healthy" } else { "unhealthy" },
            connected: ping.is_ok(),
            backend: self.backend_kind(),
            latency_ms: ping.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
            error: match ping {
                Err(e) => Some(match (&e, backend.last_fault()) {
                    // The breaker hides the cause; report the fault that opened it.
                    (CacheError::Unavailable, Some(last)) => format!("{e}; last error: {last}"),
                    // A lasting fault (refused credentials, TLS) holds the breaker open.
                    _ if e.is_lasting() && backend.circuit_open() => format!(
                        "{e} (until then, calls run without the cache, which retries by itself)"
                    ),
                    _ => e.to_string(),
                }),
                Ok(_) => problem,
            },
            circuit_open: backend.circuit_open(),
            l1_invalidation: backend.invalidation_mode().filter(|_| l1),
            l1_active: l1.then(|| self.l1_active()),
            l1_mode: backend.invalidation_mode().filter(|_| l1),
            info,
            timestamp: timestamp(),
        }
    }

    /// Memory, key counts and counters (the seed's `/api/health/cache`). Bounded in time
    /// on a large database: see [`STATS_SCAN_BUDGET`] and [`STATS_TIME_BUDGET`].
    pub async fn stats(&self) -> StatsReport {
        let backend = self.backend();
        let counters: BTreeMap<String, NamespaceCounters> = self.counters().into_iter().collect();
        let mut by_namespace: BTreeMap<String, u64> = Namespace::BUILT_IN
            .iter()
            .map(|n| (n.as_str().to_owned(), 0))
            .collect();
        let mut report = StatsReport {
            memory: MemoryStats::default(),
            keys: KeyStats::default(),
            counters,
            nodes: Vec::new(),
            error: None,
            timestamp: timestamp(),
        };
        match backend.memory_facts().await {
            Ok(m) => {
                report.memory = MemoryStats {
                    used_memory: m.used,
                    used_memory_human: m.used_human,
                    maxmemory: m.max,
                    maxmemory_policy: m.policy,
                };
                report.nodes = m
                    .nodes
                    .into_iter()
                    .map(|n| NodeStats {
                        address: n.address,
                        role: n.role,
                        used_memory_human: n.used_memory.map(crate::backend::human_bytes),
                        used_memory: n.used_memory,
                        maxmemory: n.maxmemory,
                        keys: n.keys,
                    })
                    .collect();
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report.keys.total = backend.key_total().await.ok().flatten();
        let budget = ScanBudget {
            max_keys: STATS_SCAN_BUDGET,
            max_time: STATS_TIME_BUDGET,
        };
        match backend
            .count_namespaces(self.keys().prefix_with_colon(), budget)
            .await
        {
            Ok(count) => {
                // A partial pass is extrapolated to the whole database.
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
                report.keys.by_namespace = by_namespace;
            }
            Err(e) => {
                // Unknown, not zero: leave the counts out.
                report.error = Some(e.to_string());
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
}
