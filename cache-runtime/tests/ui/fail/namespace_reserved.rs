use cache_runtime::cache_result;

// The runtime refuses `__…` namespaces (its own keys live there): so does the attribute.
#[cache_result(namespace = "__index")]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
