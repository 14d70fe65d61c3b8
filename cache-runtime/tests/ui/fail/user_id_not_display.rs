use cache_runtime::cache_user_specific;

struct UserId(u64);

#[cache_user_specific(data_type = "reports")]
async fn report(user_id: UserId, kind: &str) -> String {
    format!("{}{kind}", user_id.0)
}

fn main() {}
