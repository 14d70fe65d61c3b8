use cache_runtime::{cache_result, Cache};

fn fresh_cache() -> Cache {
    Cache::in_memory()
}

#[cache_result(cache = fresh_cache)]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
