use cache_runtime::cache_result;

#[cache_result(namespace = "Analytics:v2")]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
