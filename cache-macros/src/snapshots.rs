//! Expansion snapshots: representative inputs, expanded and pretty-printed, compared with
//! `tests/snapshots/*.expanded.rs`. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p
//! cache-macros` and review the diff.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand;

fn check(name: &str, expanded: TokenStream) {
    let file: syn::File = match syn::parse2(expanded.clone()) {
        Ok(file) => file,
        Err(e) => panic!("{name}: the expansion does not parse: {e}\n{expanded}"),
    };
    let pretty = prettyplease::unparse(&file);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.expanded.rs"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(&path, &pretty).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}: run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert!(
        expected == pretty,
        "expansion of {name} changed; review and run with UPDATE_SNAPSHOTS=1\n--- expected\n{expected}\n--- actual\n{pretty}"
    );
}

#[test]
fn result_fn() {
    check(
        "result_fn",
        expand::cache_result(
            quote!(ttl = 3600, namespace = "analytics"),
            quote! {
                /// Portfolio metrics.
                pub async fn calculate_portfolio_metrics(user_id: &str, timeframe: &str) -> Result<Metrics, DbError> {
                    let rows = db::load(user_id, timeframe).await?;
                    Ok(Metrics::from(rows))
                }
            },
        ),
    );
}

#[test]
fn user_specific() {
    check(
        "user_specific",
        expand::cache_user_specific(
            quote!(ttl = 1800, data_type = "reports", skip(db)),
            quote! {
                pub(crate) async fn generate_user_report(db: &Pool, user_id: &str, report_type: String) -> Report {
                    build(db, user_id, &report_type).await
                }
            },
        ),
    );
}

#[test]
fn generic_fn() {
    check(
        "generic_fn",
        expand::cache_result(
            quote!(ttl = "1h30m"),
            quote! {
                async fn describe<'a, T, const N: usize>(items: &'a [T], label: String) -> std::io::Result<String>
                where
                    T: serde::Serialize + Send + Sync,
                {
                    Ok(format!("{label}: {}", items.len().min(N)))
                }
            },
        ),
    );
}

#[test]
fn method_skip_self() {
    let method = expand::cache_result(
        quote!(skip(self), namespace = "trading", companions = true),
        quote! {
            async fn quote(&self, symbol: &str) -> Option<Quote> {
                self.client.fetch(symbol).await
            }
        },
    );
    check("method_skip_self", quote!(impl Feed { #method }));
}

#[test]
fn option_cache_none() {
    check(
        "option_cache_none",
        expand::cache_result(
            quote!(cache_none = true, version = 2),
            quote! {
                async fn find(id: u64) -> Option<User> {
                    None
                }
            },
        ),
    );
}

#[test]
fn async_trait_method() {
    // What `#[async_trait]` hands to the attribute (async-trait >= 0.1.44).
    let method = expand::cache_result(
        quote!(include(self)),
        quote! {
            fn load<'life0, 'async_trait>(&'life0 self, id: u32)
                -> ::core::pin::Pin<Box<dyn ::core::future::Future<Output = Result<Row, DbError>> + ::core::marker::Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    let __self = self;
                    let id = id;
                    let __ret: Result<Row, DbError> = { __self.db.load(id).await };
                    #[allow(unreachable_code)]
                    __ret
                })
            }
        },
    );
    check("async_trait_method", quote!(impl Repo for Pg { #method }));
}

#[test]
fn errors_keep_the_original_function() {
    check(
        "errors_keep_the_original_function",
        expand::cache_result(
            quote!(ttl = 0, namespce = "x"),
            quote! {
                fn not_async(x: u32) -> u32 {
                    x
                }
            },
        ),
    );
}
