use cache_runtime::cache_result;

#[cache_result]
async fn compute((a, b): (u32, u32)) -> u32 {
    a + b
}

fn main() {}
