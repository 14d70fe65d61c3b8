use cache_runtime::cache_user_specific;

struct Service;

impl Service {
    #[cache_user_specific(ttl = 0, namespace = "Users", data_type = "a b", tll = 5, skip(db), cache_none = true)]
    fn report(&self, account: &str) -> Vec<u8> {
        account.as_bytes().to_vec()
    }
}

fn main() {}
