use cache_runtime::cache_result;

trait Quotes {
    #[cache_result]
    async fn quote(&self, symbol: &str) -> f64;
}

fn main() {}
