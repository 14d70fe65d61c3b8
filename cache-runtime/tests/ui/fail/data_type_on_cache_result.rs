use cache_runtime::cache_result;

#[cache_result(data_type = "reports")]
async fn report(user_id: &str) -> String {
    user_id.to_owned()
}

fn main() {}
