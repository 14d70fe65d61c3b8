use cache_runtime::cache_result;

#[cache_result(ttl = "1 hour")]
async fn compute(x: u32) -> u32 {
    x
}

#[cache_result(ttl = "90")]
async fn compute2(x: u32) -> u32 {
    x
}

#[cache_result(ttl = 1.5)]
async fn compute3(x: u32) -> u32 {
    x
}

fn main() {}
