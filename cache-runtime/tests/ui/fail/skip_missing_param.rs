use cache_runtime::cache_result;

struct Pool;

#[cache_result(skip(pol))]
async fn compute(pool: &Pool, x: u32) -> u32 {
    let _ = pool;
    x
}

fn main() {}
