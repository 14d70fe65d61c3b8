//! Code generation. Generated code names runtime items only through
//! `::cache_runtime::__private`, prefixes its locals with `__cache_`, and allows the lints its
//! own tokens could trip, never the user's (the original body keeps its lints).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{parse_quote, Expr, FnArg, Ident, ItemFn, Pat, Stmt, TraitItemFn, Type};

use crate::args::{self, Kind};
use crate::ctxt::Ctxt;
use crate::validate::{self, Body, Param, Plan, SelfMode, Shape};

/// `#[cache_result(...)]` on `item`.
pub(crate) fn cache_result(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::CacheResult, args, item)
}

/// `#[cache_user_specific(...)]` on `item`.
pub(crate) fn cache_user_specific(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::UserSpecific, args, item)
}

fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(e) => {
            let e = match syn::parse2::<TraitItemFn>(item.clone()) {
                Ok(decl) if decl.default.is_none() => syn::Error::new_spanned(
                    &decl.sig.ident,
                    format!("{} goes on the implementation of this method (in the `impl` block), not on the trait's declaration", kind.attribute()),
                ),
                _ => syn::Error::new(e.span(), format!("{} applies to an `async fn` with a body: {e}", kind.attribute())),
            };
            return with_errors(item, &e);
        }
    };
    let mut cx = Ctxt::default();
    let args = args::parse(kind, args, &mut cx);
    let plan = validate::check(&args, &func, &mut cx);
    match (cx.finish(), plan) {
        (Ok(()), Some(plan)) => generate(&plan, func),
        (Err(e), _) => with_errors(item, &e),
        (Ok(()), None) => with_errors(
            item,
            &syn::Error::new(Span::call_site(), "cannot cache this function"),
        ),
    }
}

/// The original item, unchanged, after the errors: the rest of the crate still
/// type-checks against it and IDEs keep working (tokio's `token_stream_with_error`).
fn with_errors(item: TokenStream, error: &syn::Error) -> TokenStream {
    let mut out = error.to_compile_error();
    out.extend(item);
    out
}

fn generate(plan: &Plan, mut func: ItemFn) -> TokenStream {
    let entry = entry_point(plan);
    let copier = copier(plan);
    let mut extra = TokenStream::new();
    match plan.body {
        Body::Native => {
            if plan.companions {
                extra = companions(plan, &func);
            }
            let site = site(plan, &func.sig.ident);
            let key = key(plan, false);
            let block = &func.block;
            let output = &plan.output;
            let span = value_span(plan);
            // A fake return edge (tracing-attributes' habit): the async block's type is the
            // declared return type, so `?` and `return` in the body infer as in the original
            // function, and a mismatch points at the user's return type.
            let fake_return = quote_spanned! {output.span()=>
                #[allow(
                    unknown_lints,
                    unreachable_code,
                    clippy::diverging_sub_expression,
                    clippy::empty_loop,
                    clippy::let_unit_value,
                    clippy::let_with_type_underscore,
                    clippy::needless_return,
                    clippy::unreachable
                )]
                if false {
                    let __cache_fake_return: #output = loop {};
                    return __cache_fake_return;
                }
            };
            // The call and its `.await` carry the return type's span too, so an unserialisable
            // value is reported there, once.
            let call = quote_spanned! {span=>
                #entry(&__CACHE_SITE, __cache_key, #copier, async move {
                    #fake_return
                    #block
                })
                .await
            };
            let body: syn::Block = parse_quote!({
                #site
                #key
                #call
            });
            func.block = Box::new(body);
        }
        Body::AsyncTrait { stmt } => {
            // `Box::pin(async move { body })` -> `Box::pin(async move { key; cached(.., async move { body }) })`.
            let site = site(plan, &func.sig.ident);
            let key = key(plan, false);
            if let Some(Stmt::Expr(Expr::Call(call), None)) = func.block.stmts.get_mut(stmt) {
                if let Some(inner) = call.args.first_mut() {
                    let original = inner.clone();
                    *inner = parse_quote!(async move {
                        #site
                        #key
                        #entry(&__CACHE_SITE, __cache_key, #copier, #original).await
                    });
                }
            }
        }
    }
    let mut out = func.into_token_stream();
    out.extend(extra);
    out
}

/// The per-function constant data, as a `static __CACHE_SITE` (a `static` inside a generic
/// function is fine: it mentions no generic parameter).
fn site(plan: &Plan, name: &Ident) -> TokenStream {
    let namespace = &plan.namespace;
    let function = name.unraw().to_string();
    let identity = match &plan.name {
        Some(stable) => quote!(#stable),
        None => quote!(::core::concat!(::core::module_path!(), "::", #function)),
    };
    let version = proc_macro2::Literal::u32_unsuffixed(plan.version);
    let fingerprint = &plan.fingerprint;
    let ttl = proc_macro2::Literal::u64_unsuffixed(plan.ttl_secs);
    // Spanned at the path: a function of the wrong type is reported on the user's token.
    let cache = plan
        .cache
        .as_ref()
        .map(|path| quote_spanned!(path.span()=> .with_cache(#path)));
    let r = &plan.resilience;
    let mut options = TokenStream::new();
    if let Some(ms) = r.fail_safe_ms {
        options.extend(quote!(.with_fail_safe(#ms)));
    }
    if let Some(ms) = r.soft_timeout_ms {
        options.extend(quote!(.with_soft_timeout(#ms)));
    }
    if let Some(permille) = r.refresh_ahead_permille {
        options.extend(quote!(.with_refresh_ahead(#permille)));
    }
    match r.lock_ms {
        Some(Some(ms)) => options.extend(quote!(.with_distributed_lock(#ms))),
        Some(None) => options.extend(quote!(.without_distributed_lock())),
        None => {}
    }
    quote! {
        static __CACHE_SITE: ::cache_runtime::__private::Site = ::cache_runtime::__private::Site::new(
            #namespace,
            #identity,
            #version,
            #fingerprint,
            #ttl,
        )#cache #options;
    }
}

/// `let __cache_key = ...;`. Each `.arg`/`.user` call carries the span of the user's type,
/// so "`X` does not implement `Serialize`" points at the parameter's type.
///
/// `all_refs`: every parameter (and `self`) is a reference here (companions); otherwise only
/// those declared with a reference type are. Either way each `.arg` receives `&T` for the
/// parameter's type `T` (or `U` of `&U`), so the diagnostics of all copies are identical.
fn key(plan: &Plan, all_refs: bool) -> TokenStream {
    let k = quote!(__cache_k);
    let by_ref = |ident: &Ident, ty: &Type| {
        if all_refs || matches!(ty, Type::Reference(_)) {
            quote!(#ident)
        } else {
            quote_spanned!(ident.span()=> &#ident)
        }
    };
    let mut steps = TokenStream::new();
    if plan.mix_self_type {
        steps.extend(quote!(#k.type_param::<Self>();));
    }
    for t in &plan.type_params {
        steps.extend(quote!(#k.type_param::<#t>();));
    }
    for c in &plan.const_params {
        steps.extend(quote!(#k.arg(&#c);));
    }
    if let Some(user) = &plan.user {
        let value = by_ref(&user.ident, &user.ty);
        steps.extend(quote!(#k));
        steps.extend(quote_spanned!(user.ty.span()=> .user(#value);));
    }
    if let Some(SelfMode::Include { span }) = &plan.self_mode {
        let this = Ident::new("self", *span);
        let value = if all_refs || plan.receiver_is_ref {
            quote!(#this)
        } else {
            quote_spanned!(*span=> &#this)
        };
        steps.extend(quote!(#k));
        steps.extend(quote_spanned!(*span=> .arg(#value);));
    }
    for Param { ident, ty } in &plan.key_args {
        let value = by_ref(ident, ty);
        steps.extend(quote!(#k));
        steps.extend(quote_spanned!(ty.span()=> .arg(#value);));
    }
    // Tags are not part of the key (companions, which only delete, need none); a parameter
    // that is not `Display` is reported at the tag.
    for tag in plan.tags.iter().filter(|_| !all_refs) {
        let format = syn::LitStr::new(&tag.format, tag.span);
        let params = &tag.params;
        steps.extend(quote!(#k));
        steps.extend(quote_spanned!(tag.span=> .tag(::std::format!(#format #(, #params)*));));
    }
    // The stored type's shape is part of the key; spanned at the return type, so a type
    // that cannot be stored is reported there (once: rustc merges identical diagnostics).
    let stored = stored_type(plan);
    let new =
        quote_spanned!(value_span(plan)=> ::cache_runtime::__private::KeyBuilder::new::<#stored>);
    quote! {
        #[allow(unused_mut, clippy::used_underscore_binding)]
        let __cache_key = {
            let mut #k = #new(&__CACHE_SITE);
            #steps
            #k.finish()
        };
    }
}

/// The stored type: `T` of `Result<T, E>` / `Option<T>`, else the return type.
fn stored_type(plan: &Plan) -> TokenStream {
    match &plan.shape {
        Shape::Result { ok, .. } => ok.to_token_stream(),
        Shape::Option { some } => some.to_token_stream(),
        Shape::Value => plan.output.to_token_stream(),
    }
}

/// Whether L1 hits may clone a kept decoded copy of the stored type instead of decoding:
/// asked where the type is concrete, by autoref (the runtime's `engine/copier.rs`).
fn copier(plan: &Plan) -> TokenStream {
    let stored = stored_type(plan);
    quote! {{
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{L1ByClone as _, L1ByDecode as _};
        // The borrow picks the answer: needless only when the type can be cloned.
        #[allow(clippy::needless_borrow)]
        let __cache_copier = (&::cache_runtime::__private::L1Probe::<#stored>::NEW).l1_copy();
        __cache_copier
    }}
}

/// The span of the stored type (`T` of `Result<T, E>` / `Option<T>`, else the return type).
fn value_span(plan: &Plan) -> Span {
    match &plan.shape {
        Shape::Result { ok, .. } => ok.span(),
        Shape::Option { some } => some.span(),
        Shape::Value => plan.output.span(),
    }
}

/// `cached_result::<T, E, _>` / `cached_option::<T, _>` / `cached_value::<R, _>`, spanned
/// at the return type so an unserialisable value is reported there.
fn entry_point(plan: &Plan) -> TokenStream {
    let output = &plan.output;
    let span = value_span(plan);
    // A body that may finish in the background (soft timeout, refresh ahead) goes through
    // the `_detached` entries, which require it to be `Send + 'static`.
    let detached = plan.resilience.detached();
    let name = |base: &str| {
        let name = if detached {
            format!("{base}_detached")
        } else {
            base.to_owned()
        };
        Ident::new(&name, span)
    };
    match &plan.shape {
        Shape::Result { ok, err } => {
            let err = err
                .as_ref()
                .map_or_else(|| quote!(_), ToTokens::to_token_stream);
            let f = name("cached_result");
            quote_spanned!(span=> ::cache_runtime::__private::#f::<#ok, #err, _>)
        }
        Shape::Option { some } => {
            let f = name("cached_option");
            quote_spanned!(span=> ::cache_runtime::__private::#f::<#some, _>)
        }
        Shape::Value => {
            let f = name("cached_value");
            quote_spanned!(span=> ::cache_runtime::__private::#f::<#output, _>)
        }
    }
}

/// The companions of one function, next to it:
///
/// - `{name}_cache_key(..) -> Option<String>`: the full key of one call;
/// - `{name}_invalidate(..) -> Result<bool, CacheError>`: deletes that entry.
///
/// They take the key parameters in their original order, by reference when the function
/// takes them by value, and `&self` for methods. Each holds an identical copy of the site
/// (the key depends on its values, not on its address), so no shared item is needed and
/// they work in `impl` blocks, where a `static` cannot be declared. The key code of every
/// copy hands the same types to the same spans, so a type error in a key argument is
/// reported once (rustc merges identical diagnostics), not once per item.
fn companions(plan: &Plan, func: &ItemFn) -> TokenStream {
    let name = func.sig.ident.unraw();
    let vis = &func.vis;
    let generics = &func.sig.generics;
    let where_clause = &generics.where_clause;
    let key_name = format_ident!("{}_cache_key", name, span = func.sig.ident.span());
    let invalidate_name = format_ident!("{}_invalidate", name, span = func.sig.ident.span());
    let receiver = plan.self_mode.as_ref().map(|_| quote!(&self,));
    let in_key = |ident: &Ident| {
        plan.user.as_ref().is_some_and(|u| u.ident == *ident)
            || plan.key_args.iter().any(|p| p.ident == *ident)
    };
    let params: Vec<TokenStream> = func
        .sig
        .inputs
        .iter()
        .filter_map(|input| {
            let FnArg::Typed(t) = input else { return None };
            let Pat::Ident(p) = &*t.pat else { return None };
            if !in_key(&p.ident) {
                return None;
            }
            let ident = &p.ident;
            let ty: Type = match &*t.ty {
                Type::Reference(_) => (*t.ty).clone(),
                other => parse_quote!(&#other),
            };
            Some(quote!(#ident: #ty))
        })
        .collect();
    let site = site(plan, &func.sig.ident);
    let key = key(plan, true);
    let fn_name = name.to_string();
    let key_doc = format!(
        " The cache key of `{fn_name}` for these arguments, as stored (generated by the caching attribute).\n\n `None` when the cache is disabled (invalid configuration) or an argument cannot be serialised."
    );
    let invalidate_doc = format!(
        " Removes the cached entry of `{fn_name}` for these arguments (generated by the caching attribute),\n so that the next call runs the function again: call `{fn_name}` afterwards to refresh it.\n\n Returns `Ok(true)` when an entry was removed, `Ok(false)` when there was none.\n\n # Errors\n\n When the cache backend fails (Redis unreachable, timeout, ...)."
    );
    let allow = quote! {
        #[allow(
            dead_code,
            unused_qualifications,
            clippy::used_underscore_binding,
            clippy::trivially_copy_pass_by_ref,
            clippy::ref_option_ref,
            clippy::extra_unused_type_parameters,
            clippy::extra_unused_lifetimes,
            clippy::needless_lifetimes
        )]
    };
    quote! {
        #[doc = #key_doc]
        #allow
        #[must_use]
        #vis fn #key_name #generics (#receiver #(#params),*) -> ::core::option::Option<::std::string::String> #where_clause {
            #site
            #key
            ::cache_runtime::__private::key_of(&__CACHE_SITE, &__cache_key)
        }

        #[doc = #invalidate_doc]
        #allow
        #vis async fn #invalidate_name #generics (#receiver #(#params),*) -> ::core::result::Result<bool, ::cache_runtime::CacheError> #where_clause {
            #site
            #key
            ::cache_runtime::__private::invalidate(&__CACHE_SITE, __cache_key).await
        }
    }
}
