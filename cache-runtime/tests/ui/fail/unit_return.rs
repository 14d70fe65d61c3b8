use cache_runtime::cache_result;

#[cache_result]
async fn warm_up(x: u32) {
    let _ = x;
}

fn main() {}
