use cache_runtime::cache_result;

struct Query {
    symbol: String,
}

#[cache_result]
async fn search(query: &Query, limit: u32) -> Vec<String> {
    vec![query.symbol.clone(); limit as usize]
}

fn main() {}
