//! `#[cache_user_specific]`: default `user_id`, `user = ...`, data types.
#![allow(dead_code)]

use cache_runtime::cache_user_specific;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Report {
    lines: Vec<String>,
}

#[cache_user_specific(ttl = 1800, data_type = "reports")]
async fn generate_user_report(user_id: &str, report_type: &str) -> Report {
    Report { lines: vec![format!("{user_id}:{report_type}")] }
}

#[cache_user_specific(data_type = "prompts", namespace = "ai", user = owner, ttl = "30m")]
async fn prompt(hash: String, owner: u64) -> Result<String, std::fmt::Error> {
    Ok(format!("{owner}:{hash}"))
}

#[cache_user_specific]
async fn defaults(user_id: uuid_like::Id) -> Option<u32> {
    Some(user_id.0)
}

mod uuid_like {
    pub struct Id(pub u32);
    impl std::fmt::Display for Id {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "id-{}", self.0)
        }
    }
}

fn main() {
    let _ = generate_user_report_cache_key("123", "weekly");
    drop(prompt_invalidate(&"h".to_owned(), &1));
    let _ = defaults_cache_key(&uuid_like::Id(1));
}
