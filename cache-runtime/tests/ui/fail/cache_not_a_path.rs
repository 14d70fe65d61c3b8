use cache_runtime::cache_result;

#[cache_result(cache = "analytics")]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
