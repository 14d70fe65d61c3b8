//! The distributed single-flight lock: `SET key token NX PX lease` to take it, and a
//! compare-and-delete script to release it, so only its owner releases it (a lock whose
//! lease ran out may have been taken by another process since). An owner that dies holds
//! it at most for the lease.

use std::time::Duration;

use super::RedisBackend;
use crate::error::CacheError;

/// Deletes the lock only if it still holds our token. Sent with EVAL: one round trip, no
/// script cache to miss after a restart or failover.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl RedisBackend {
    pub(super) async fn take_lock(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, CacheError> {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(token).arg("NX").arg("PX").arg(ms);
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub(super) async fn release_lock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE).arg(1).arg(key).arg(token);
        let _: i64 = self.query(&cmd).await?;
        Ok(())
    }
}
