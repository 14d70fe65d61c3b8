use cache_runtime::cache_user_specific;

#[cache_user_specific(data_type = "reports", user = acount)]
async fn report(account: &str, kind: &str) -> String {
    format!("{account}{kind}")
}

fn main() {}
