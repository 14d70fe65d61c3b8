//! `impl Trait` and non-serialisable arguments are fine when skipped.
#![allow(dead_code)]

use cache_runtime::{cache_result, cache_user_specific};

trait Db: Send + Sync {
    fn count(&self) -> u32;
}

struct Pool;

#[cache_result(skip(db, pool))]
async fn count(db: impl Db, pool: &Pool, table: &str) -> u32 {
    let _ = pool;
    db.count() + table.len() as u32
}

#[cache_user_specific(data_type = "profile", skip(db))]
async fn profile(db: &dyn Db, user_id: u64) -> String {
    format!("{user_id}:{}", db.count())
}

fn main() {
    let _ = count_cache_key("users");
    let _ = profile_cache_key(&7);
}
