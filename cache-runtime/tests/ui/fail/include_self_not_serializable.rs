use cache_runtime::cache_result;

struct Service;

impl Service {
    #[cache_result(include(self))]
    async fn compute(&self, x: u32) -> u32 {
        x
    }
}

fn main() {}
