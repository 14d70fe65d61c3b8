use cache_runtime::cache_result;

#[cache_result(ttl = 60)]
fn compute(x: u32) -> u32 {
    x * 2
}

fn main() {
    // The original function is still emitted, so callers type-check.
    let _: u32 = compute(1);
}
