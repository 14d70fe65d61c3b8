use cache_runtime::cache_result;

#[cache_result(skip(self))]
async fn compute(x: u32) -> u32 {
    x
}

fn main() {}
