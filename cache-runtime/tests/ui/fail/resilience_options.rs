use cache_runtime::cache_result;

// A soft timeout returns the stale value only fail-safe keeps.
#[cache_result(ttl = 60, soft_timeout = "300ms")]
async fn no_window(x: u32) -> Result<u32, String> {
    Ok(x)
}

// A fraction of the TTL, strictly between 0 and 1.
#[cache_result(ttl = 60, refresh_ahead = 1.5)]
async fn too_late(x: u32) -> u32 {
    x
}

// `fail_safe` needs a window; durations are positive.
#[cache_result(ttl = 60, fail_safe = true, distributed_lock = "0s")]
async fn no_duration(x: u32) -> u32 {
    x
}

// The body of a soft timeout or refresh ahead outlives the call: it cannot borrow.
#[cache_result(ttl = 60, fail_safe = "1h", soft_timeout = "1s", refresh_ahead = 0.8)]
async fn borrows(symbol: &str, rows: Vec<&'static str>) -> u32 {
    symbol.len() as u32 + rows.len() as u32
}

struct Repo;

impl Repo {
    #[cache_result(ttl = 60, refresh_ahead = 0.8, skip(self))]
    async fn method(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
