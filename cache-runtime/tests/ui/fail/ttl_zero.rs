use cache_runtime::cache_result;

#[cache_result(ttl = 0)]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
