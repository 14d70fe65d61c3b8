use cache_runtime::{cache_result, cache_user_specific};

// `{name}` must be a parameter: reported on the tag, with a hint.
#[cache_result(ttl = 60, tags = ["trades:{user}", "market"])]
async fn unknown_placeholder(user_id: String) -> u32 {
    user_id.len() as u32
}

// Braces: `{{`/`}}` are literal, a lone one is a mistake.
#[cache_result(ttl = 60, tags = ["a}b", "c{d", "{}", "ok {{braces}}"])]
async fn braces(x: u32) -> u32 {
    x
}

// A list of non-empty string literals.
#[cache_result(ttl = 60, tags = [])]
async fn empty_list(x: u32) -> u32 {
    x
}

#[cache_user_specific(ttl = 60, tags = ["", 42, "{self}"])]
async fn bad_items(user_id: &str) -> u32 {
    user_id.len() as u32
}

// A placeholder's value must be `Display`.
#[cache_result(ttl = 60, tags = ["by {ids}"])]
async fn not_display(ids: Vec<u32>) -> u32 {
    ids.len() as u32
}

fn main() {}
