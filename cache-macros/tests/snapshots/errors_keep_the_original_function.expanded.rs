::core::compile_error! {
    "`ttl = 0` would expire entries at once; give at least 1 second, or omit `ttl` to use the namespace's TTL"
}
::core::compile_error! {
    "unknown argument `namespce` of #[cache_result]: did you mean `namespace`?"
}
::core::compile_error! {
    "#[cache_result] needs an `async fn` (the cache is read and written asynchronously): add `async`"
}
fn not_async(x: u32) -> u32 {
    x
}
