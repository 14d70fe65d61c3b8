use cache_runtime::cache_result;

#[cache_result(cache_none = true)]
async fn compute(x: u32) -> Result<u32, String> {
    Ok(x)
}

fn main() {}
