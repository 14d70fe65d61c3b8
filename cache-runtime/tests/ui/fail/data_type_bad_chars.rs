use cache_runtime::cache_user_specific;

#[cache_user_specific(data_type = "user reports")]
async fn report(user_id: &str) -> String {
    user_id.to_owned()
}

fn main() {}
