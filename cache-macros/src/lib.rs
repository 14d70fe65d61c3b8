//! Attribute macros of the caching framework. Use them through `cache_runtime`.
use proc_macro::TokenStream;

/// Caches the result of an async function (placeholder until the attribute lands).
#[proc_macro_attribute]
pub fn cache_result(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// Caches the result of an async function per user (placeholder until the attribute lands).
#[proc_macro_attribute]
pub fn cache_user_specific(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
