use cache_runtime::cache_result;

struct Metrics {
    total: u64,
}

#[cache_result]
async fn metrics(x: u32) -> Result<Metrics, String> {
    Ok(Metrics { total: u64::from(x) })
}

fn main() {}
