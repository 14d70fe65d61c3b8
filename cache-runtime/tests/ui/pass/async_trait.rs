//! `#[async_trait]` impls: the attribute sees the method after async_trait rewrote it into
//! `fn ... -> Pin<Box<dyn Future<Output = R> + Send>>` and caches the inner future.
#![allow(dead_code)]

use async_trait::async_trait;
use cache_runtime::cache_result;
use serde::Serialize;

#[async_trait]
trait Repo {
    async fn load(&self, id: u32) -> Result<String, String>;
    async fn count(&self, table: &str) -> usize;
}

#[derive(Serialize)]
struct Pg {
    shard: u8,
}

#[async_trait]
impl Repo for Pg {
    #[cache_result(skip(self), namespace = "general", ttl = 60)]
    async fn load(&self, id: u32) -> Result<String, String> {
        if id == 0 {
            return Err("no row".into());
        }
        Ok(format!("{}:{id}", self.shard))
    }

    #[cache_result(include(self))]
    async fn count(&self, table: &str) -> usize {
        table.len() + usize::from(self.shard)
    }
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let pg = Pg { shard: 1 };
    assert_send(pg.load(1));
    assert_send(pg.count("t"));
}
