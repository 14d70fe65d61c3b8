use cache_runtime::cache_result;

#[cache_result]
async fn compute(x: u32) -> Result<u32, String> {
    Ok(format!("{x}"))
}

fn main() {}
