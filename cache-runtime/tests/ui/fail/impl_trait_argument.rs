use cache_runtime::cache_result;

trait Db {}

#[cache_result]
async fn compute(db: impl Db, x: u32) -> u32 {
    let _ = db;
    x
}

fn main() {}
