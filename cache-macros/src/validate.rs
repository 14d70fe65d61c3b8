//! Checks the arguments against the function they decorate and turns both into a [`Plan`]
//! for `expand.rs`. Every problem is reported (collected in a [`Ctxt`]), each on the token
//! it is about.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{
    Expr, ExprAsync, FnArg, GenericArgument, GenericParam, Ident, ItemFn, Pat, PathArguments,
    ReturnType, Stmt, Type, TypeParamBound,
};

use crate::args::{Args, Kind, TagPart};
use crate::ctxt::{closest, Ctxt};

/// One parameter that goes into the key.
pub(crate) struct Param {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// How the return value maps onto the runtime's entry points.
pub(crate) enum Shape {
    /// `Result<T, E>` (or an alias such as `anyhow::Result<T>`, `io::Result<T>`): only `Ok`
    /// is cached. `err` is `None` when the alias hides it (then it is inferred).
    Result {
        ok: Box<Type>,
        err: Option<Box<Type>>,
    },
    /// `Option<T>` without `cache_none`: only `Some` is cached.
    Option { some: Box<Type> },
    /// Anything else, and `Option<T>` with `cache_none = true`: every value is cached.
    Value,
}

impl Shape {
    fn tag(&self) -> &'static str {
        match self {
            Shape::Result { .. } => "ok",
            Shape::Option { .. } => "some",
            Shape::Value => "value",
        }
    }
}

/// What the receiver contributes to the key.
pub(crate) enum SelfMode {
    /// `include(self)`: the receiver is serialised; `span` is the `self` token.
    Include { span: Span },
    /// `skip(self)`: only the type of `Self` is mixed in.
    Skip,
}

/// Where the function body is.
pub(crate) enum Body {
    /// A native `async fn`: the whole block.
    Native,
    /// The shape `#[async_trait]` gives a method before we see it: a plain `fn` returning
    /// `Pin<Box<dyn Future<Output = R> + Send + 'async_trait>>` whose last expression is
    /// `Box::pin(async move { ... })`. The index is the statement holding that call.
    AsyncTrait { stmt: usize },
}

/// Everything `expand.rs` needs, already validated.
pub(crate) struct Plan {
    pub(crate) namespace: String,
    pub(crate) version: u32,
    /// `name = "..."`, or `None` for `module_path!()::function`.
    pub(crate) name: Option<String>,
    pub(crate) ttl_secs: u64,
    pub(crate) fingerprint: String,
    pub(crate) shape: Shape,
    /// The value type the body produces (`R` of `async fn f() -> R`).
    pub(crate) output: Type,
    pub(crate) user: Option<Param>,
    pub(crate) key_args: Vec<Param>,
    pub(crate) self_mode: Option<SelfMode>,
    /// The receiver is `&self` / `&mut self` (so `self` is already a reference).
    pub(crate) receiver_is_ref: bool,
    /// `type_name::<Self>()` is mixed into the key (methods, and functions naming `Self`), so
    /// the same method on two types never shares entries.
    pub(crate) mix_self_type: bool,
    pub(crate) type_params: Vec<Ident>,
    pub(crate) const_params: Vec<Ident>,
    pub(crate) companions: bool,
    pub(crate) body: Body,
    /// `cache = path`.
    pub(crate) cache: Option<syn::Path>,
    pub(crate) resilience: Resilience,
    /// `tags = [...]`, ready for `format!`.
    pub(crate) tags: Vec<Tag>,
}

/// One tag: a `format!` string (literal braces doubled, `{}` per placeholder) and the
/// parameters that fill it, spanned at the tag's literal.
pub(crate) struct Tag {
    pub(crate) span: proc_macro2::Span,
    pub(crate) format: String,
    pub(crate) params: Vec<Ident>,
}

/// The resilience options, validated (milliseconds; see the runtime's `Site::with_*`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Resilience {
    /// `None`: the configuration's default; `Some(0)`: off.
    pub(crate) fail_safe_ms: Option<u64>,
    pub(crate) soft_timeout_ms: Option<u64>,
    pub(crate) refresh_ahead_permille: Option<u16>,
    /// `None`: the configuration's default; `Some(None)`: off; `Some(Some(0))`: the
    /// configured lease.
    pub(crate) lock_ms: Option<Option<u64>>,
}

impl Resilience {
    /// The body may finish after the call returned (it must own its data).
    pub(crate) fn detached(&self) -> bool {
        self.soft_timeout_ms.is_some() || self.refresh_ahead_permille.is_some()
    }
}

pub(crate) fn check(args: &Args, func: &ItemFn, cx: &mut Ctxt) -> Option<Plan> {
    let kind = args.kind;
    let body = body_kind(func);
    if body.is_none() {
        let token: &dyn ToTokens = &func.sig.fn_token;
        cx.error_spanned(
            token,
            format!(
                "{} needs an `async fn` (the cache is read and written asynchronously): add `async`",
                kind.attribute()
            ),
        );
    }
    let output = output_type(func, body.as_ref());
    let shape = output.as_ref().and_then(|ty| shape_of(ty, args, cx));
    if output.is_none() && body.is_some() {
        let at: TokenStream = match &func.sig.output {
            ReturnType::Default => func.sig.ident.to_token_stream(),
            ReturnType::Type(_, ty) => ty.to_token_stream(),
        };
        cx.error_spanned(
            at,
            format!(
                "{}: this function returns `()`, so there is nothing to cache",
                kind.attribute()
            ),
        );
    }
    if let Some(unsupported) = output
        .as_ref()
        .filter(|ty| body.is_some() && mentions(&ty.to_token_stream(), "impl"))
    {
        cx.error_spanned(unsupported, "a cached function must return a concrete type (a cached value is decoded into it); `impl Trait` cannot be decoded");
    }

    // Receiver and parameters.
    let skip_self = args.skip.iter().find(|s| *s == "self");
    let include_self = args.include.iter().find(|s| *s == "self");
    if let (Some(_), Some(second)) = (skip_self, include_self) {
        cx.error_spanned(
            second,
            "`self` cannot be both skipped and included: keep `skip(self)` or `include(self)`",
        );
    }
    let mut self_mode = None;
    let mut receiver_is_ref = false;
    let mut params: Vec<(Ident, &Type)> = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                receiver_is_ref = receiver.reference.is_some();
                self_mode = match (skip_self, include_self) {
                    (Some(_), _) => Some(SelfMode::Skip),
                    (None, Some(_)) => Some(SelfMode::Include { span: receiver.self_token.span }),
                    (None, None) => {
                        cx.error_spanned(
                            receiver.self_token,
                            format!(
                                "{} on a method: say whether `self` is part of the cache key; add `skip(self)` (entries are shared by all values of the type) or `include(self)` (the key includes `self`, which must implement `Serialize`)",
                                kind.attribute()
                            ),
                        );
                        Some(SelfMode::Skip)
                    }
                };
            }
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(p) if p.subpat.is_none() => params.push((p.ident.clone(), &typed.ty)),
                // `_` binds nothing, so the body cannot depend on it: never part of the key.
                Pat::Wild(_) => {}
                other => cx.error_spanned(
                    other,
                    "a cached function's parameters must be plain names so they can be part of the key: write e.g. `pair: (u32, u32)` and destructure it in the body",
                ),
            },
        }
    }
    if self_mode.is_none() {
        for name in skip_self.into_iter().chain(include_self) {
            cx.error_spanned(name, "this function has no `self` parameter");
        }
    }
    let names: Vec<String> = params.iter().map(|(i, _)| i.to_string()).collect();
    for skipped in args.skip.iter().filter(|s| *s != "self") {
        if !params.iter().any(|(i, _)| i == skipped) {
            unknown_param(skipped, "skip", &names, cx);
        }
    }

    // Tags name parameters (skipped ones too: a tag need not be part of the key).
    let mut tags = Vec::new();
    for template in &args.tags {
        let mut tag = Tag {
            span: template.lit.span(),
            format: String::new(),
            params: Vec::new(),
        };
        let mut known = true;
        for part in &template.parts {
            match part {
                TagPart::Text(text) => tag
                    .format
                    .push_str(&text.replace('{', "{{").replace('}', "}}")),
                TagPart::Param(name) => {
                    if !params.iter().any(|(i, _)| i == name) {
                        unknown_param(name, "tags", &names, cx);
                        known = false;
                    }
                    tag.format.push_str("{}");
                    tag.params.push(name.clone());
                }
            }
        }
        if known {
            tags.push(tag);
        }
    }

    // The user id of #[cache_user_specific].
    let mut user = None;
    if kind == Kind::UserSpecific {
        match &args.user {
            Some(name) => match params.iter().find(|(i, _)| i == name) {
                Some((ident, ty)) => user = Some(Param { ident: ident.clone(), ty: (*ty).clone() }),
                None => unknown_param(name, "user", &names, cx),
            },
            None => match params.iter().find(|(i, _)| i == "user_id") {
                Some((ident, ty)) => user = Some(Param { ident: ident.clone(), ty: (*ty).clone() }),
                None => cx.error_spanned(
                    &func.sig.ident,
                    "#[cache_user_specific] needs the user id: add a parameter named `user_id`, or name it with `user = <parameter>`",
                ),
            },
        }
        if let Some(u) = &user {
            if let Some(s) = args.skip.iter().find(|s| **s == u.ident) {
                cx.error_spanned(s, format!("`{}` is the user id, which is always part of the key; it cannot be skipped", u.ident));
            }
        }
    }

    let mut key_args = Vec::new();
    for (ident, ty) in params {
        if args.skip.contains(&ident) || user.as_ref().is_some_and(|u| u.ident == ident) {
            continue;
        }
        if mentions(&ty.to_token_stream(), "impl") {
            cx.error_spanned(
                ty,
                format!("`{ident}` has an `impl Trait` type, which cannot be part of the cache key; add `skip({ident})` if the result does not depend on it"),
            );
            continue;
        }
        key_args.push(Param {
            ident,
            ty: ty.clone(),
        });
    }

    let mut type_params = Vec::new();
    let mut const_params = Vec::new();
    for param in &func.sig.generics.params {
        match param {
            GenericParam::Type(t) => type_params.push(t.ident.clone()),
            GenericParam::Const(c) => const_params.push(c.ident.clone()),
            GenericParam::Lifetime(_) => {}
        }
    }

    let has_receiver = self_mode.is_some();
    let companions = args.companions.as_ref().map_or(!has_receiver, |c| c.value);
    if let Some(c) = args.companions.as_ref().filter(|c| c.value) {
        if matches!(body, Some(Body::AsyncTrait { .. })) {
            cx.error_at(c.span, "companions cannot be added to an `#[async_trait]` impl (a trait impl only holds the trait's items); remove `companions = true`");
        }
    }

    let resilience = resilience(args, func, cx);

    let (body, output, shape) = (body?, output?, shape?);
    let namespace = args
        .namespace
        .as_ref()
        .map_or_else(|| kind.default_namespace().to_owned(), |n| n.value.clone());
    let mix_self_type = has_receiver || mentions(&func.sig.to_token_stream(), "Self");
    let fingerprint = fingerprint(
        args,
        func,
        &shape,
        &output,
        user.as_ref(),
        &key_args,
        self_mode.as_ref(),
    );
    Some(Plan {
        namespace,
        version: args.version.as_ref().map_or(1, |v| v.value),
        name: args.name.as_ref().map(|n| n.value.clone()),
        ttl_secs: args.ttl_secs.as_ref().map_or(0, |t| t.value),
        fingerprint,
        shape,
        output,
        user,
        key_args,
        self_mode,
        receiver_is_ref,
        mix_self_type,
        type_params,
        const_params,
        companions,
        body,
        cache: args.cache.clone(),
        resilience,
        tags,
    })
}

/// Checks the resilience options against each other and the signature.
fn resilience(args: &Args, func: &ItemFn, cx: &mut Ctxt) -> Resilience {
    let r = Resilience {
        fail_safe_ms: args.fail_safe.as_ref().map(|f| f.value.unwrap_or(0)),
        soft_timeout_ms: args.soft_timeout.as_ref().map(|t| t.value),
        refresh_ahead_permille: args.refresh_ahead.as_ref().map(|f| f.value),
        lock_ms: args.distributed_lock.as_ref().map(|l| l.value),
    };
    if let Some(soft) = &args.soft_timeout {
        if !matches!(r.fail_safe_ms, Some(ms) if ms > 0) {
            cx.error_at(
                soft.span,
                "`soft_timeout` answers a slow call with the last good value, which only `fail_safe` keeps: add e.g. `fail_safe = \"1h\"`",
            );
        }
    }
    // A body that outlives its call (the soft timeout returned, or a refresh ahead runs
    // after the hit) cannot borrow from the caller.
    let option = match (&args.soft_timeout, &args.refresh_ahead) {
        (Some(_), _) => Some("soft_timeout"),
        (None, Some(_)) => Some("refresh_ahead"),
        (None, None) => None,
    };
    if let Some(option) = option {
        for input in &func.sig.inputs {
            match input {
                FnArg::Receiver(receiver) if receiver.reference.is_some() => cx.error_spanned(
                    receiver,
                    format!("`{option}` runs the body in the background after the call returns, so it cannot borrow `self`: take `self: Arc<Self>` (or a clone), or remove `{option}`"),
                ),
                FnArg::Typed(typed) if !matches!(&*typed.pat, Pat::Wild(_)) && borrows(&typed.ty.to_token_stream()) => cx.error_spanned(
                    &typed.ty,
                    format!("`{option}` runs the body in the background after the call returns, so parameters must own their data: take e.g. `String` instead of `&str`, `Arc<Pool>` instead of `&Pool`"),
                ),
                _ => {}
            }
        }
    }
    r
}

/// Whether a type's tokens hold a reference or a lifetime other than `'static`
/// (`&'static str` owns nothing but outlives any call, so it is fine).
fn borrows(tokens: &TokenStream) -> bool {
    let tokens: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let is_static_lifetime = |at: usize| {
        matches!(tokens.get(at), Some(TokenTree::Punct(p)) if p.as_char() == '\'')
            && matches!(tokens.get(at + 1), Some(TokenTree::Ident(i)) if i == "static")
    };
    let mut at = 0;
    while let Some(tt) = tokens.get(at) {
        match tt {
            TokenTree::Punct(p) if p.as_char() == '&' && !is_static_lifetime(at + 1) => {
                return true
            }
            TokenTree::Punct(p) if p.as_char() == '\'' && !is_static_lifetime(at) => return true,
            // `'static` after `&`, or on its own: skip the lifetime's name.
            TokenTree::Punct(p) if p.as_char() == '\'' => at += 1,
            TokenTree::Group(g) if borrows(&g.stream()) => return true,
            _ => {}
        }
        at += 1;
    }
    false
}

fn unknown_param(name: &Ident, argument: &str, names: &[String], cx: &mut Ctxt) {
    let hint = match closest(&name.to_string(), names.iter().map(String::as_str)) {
        Some(close) => format!("; did you mean `{close}`?"),
        None if names.is_empty() => "; the function has no named parameters".to_owned(),
        None => format!(
            "; parameters: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    cx.error_spanned(
        name,
        format!("`{argument}` names `{name}`, which is not a parameter of this function{hint}"),
    );
}

fn body_kind(func: &ItemFn) -> Option<Body> {
    if func.sig.asyncness.is_some() {
        return Some(Body::Native);
    }
    async_trait_future(func).map(|(stmt, _)| Body::AsyncTrait { stmt })
}

/// Finds `Box::pin(async move { ... })` as the last expression of a non-async fn.
pub(crate) fn async_trait_future(func: &ItemFn) -> Option<(usize, &ExprAsync)> {
    future_output(&func.sig.output)?;
    let (index, stmt) = func.block.stmts.iter().enumerate().next_back()?;
    let Stmt::Expr(Expr::Call(call), None) = stmt else {
        return None;
    };
    let Expr::Path(path) = &*call.func else {
        return None;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
        return None;
    }
    match call.args.first() {
        Some(Expr::Async(block)) => Some((index, block)),
        _ => None,
    }
}

/// `R` of `Pin<Box<dyn Future<Output = R> + ...>>`.
fn future_output(output: &ReturnType) -> Option<&Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let pinned = single_generic(ty, "Pin")?;
    let boxed = single_generic(pinned, "Box")?;
    let Type::TraitObject(object) = boxed else {
        return None;
    };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(t) = bound else {
            return None;
        };
        let last = t.path.segments.last().filter(|s| s.ident == "Future")?;
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
            _ => None,
        })
    })
}

fn single_generic<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    generic_types(ty, name).and_then(|types| types.first().copied())
}

/// The type arguments of `ty` when its last path segment is `name`.
fn generic_types<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a Type>> {
    let Type::Path(path) = ty else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last().filter(|s| s.ident == name)?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    Some(
        args.args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
    )
}

fn output_type(func: &ItemFn, body: Option<&Body>) -> Option<Type> {
    let ty = match body {
        Some(Body::AsyncTrait { .. }) => future_output(&func.sig.output)?.clone(),
        _ => match &func.sig.output {
            ReturnType::Default => return None,
            ReturnType::Type(_, ty) => (**ty).clone(),
        },
    };
    match &ty {
        Type::Tuple(t) if t.elems.is_empty() => None,
        Type::Paren(p) => Some((*p.elem).clone()),
        _ => Some(ty),
    }
}

fn shape_of(ty: &Type, args: &Args, cx: &mut Ctxt) -> Option<Shape> {
    let cache_none = args.cache_none.as_ref();
    if let Some(types) = generic_types(ty, "Result") {
        if let Some(c) = cache_none {
            cx.error_at(c.span, "`cache_none` applies to functions returning `Option<T>`; this one returns a `Result`");
        }
        return match types.as_slice() {
            [ok] => Some(Shape::Result {
                ok: Box::new((*ok).clone()),
                err: None,
            }),
            [ok, err] => Some(Shape::Result {
                ok: Box::new((*ok).clone()),
                err: Some(Box::new((*err).clone())),
            }),
            _ => {
                cx.error_spanned(ty, "expected `Result<T, E>` or a `Result<T>` alias");
                None
            }
        };
    }
    if let Some(types) = generic_types(ty, "Option") {
        if let [some] = types.as_slice() {
            return Some(if cache_none.is_some_and(|c| c.value) {
                Shape::Value
            } else {
                Shape::Option {
                    some: Box::new((*some).clone()),
                }
            });
        }
    }
    if let Some(c) = cache_none {
        cx.error_at(
            c.span,
            "`cache_none` applies to functions returning `Option<T>`",
        );
    }
    Some(Shape::Value)
}

/// Whether an identifier occurs anywhere in the tokens (`impl` of `impl Trait`, `Self`).
fn mentions(tokens: &TokenStream, ident: &str) -> bool {
    tokens.clone().into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == ident,
        TokenTree::Group(g) => mentions(&g.stream(), ident),
        _ => false,
    })
}

/// The signature as the key sees it: attribute, storage shape, user parameter, data type,
/// key parameters with their types, and the return type. Any change gives new keys, so a
/// changed signature never decodes old values.
///
/// The tokens are printed by [`canonical`], not by `TokenStream`'s `Display` (whose spacing
/// may change between compiler releases and would silently change every key).
#[allow(clippy::too_many_arguments)]
fn fingerprint(
    args: &Args,
    func: &ItemFn,
    shape: &Shape,
    output: &Type,
    user: Option<&Param>,
    key_args: &[Param],
    self_mode: Option<&SelfMode>,
) -> String {
    let mut out = String::new();
    out.push_str(match args.kind {
        Kind::CacheResult => "cache_result",
        Kind::UserSpecific => "cache_user_specific",
    });
    out.push(';');
    out.push_str(shape.tag());
    if let Some(user) = user {
        out.push_str(";user=");
        out.push_str(&canonical(&user.ty.to_token_stream()));
        // data_type defaults to the function name; the function path is in the key anyway.
        let data_type = args
            .data_type
            .as_ref()
            .map_or_else(|| func.sig.ident.to_string(), |d| d.value.clone());
        out.push_str(";data_type=");
        out.push_str(&data_type);
    }
    out.push_str(";(");
    let mut first = true;
    if let Some(SelfMode::Include { .. }) = self_mode {
        out.push_str("self");
        first = false;
    }
    for param in key_args {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&param.ident.to_string());
        out.push(':');
        out.push_str(&canonical(&param.ty.to_token_stream()));
    }
    out.push_str(")->");
    out.push_str(&canonical(&output.to_token_stream()));
    out
}

/// A stable rendering of tokens: a space only between two words (identifiers, literals),
/// nothing elsewhere (`&'a str`, `Vec<u8>`, `Result<Metrics,DbError>`).
pub(crate) fn canonical(tokens: &TokenStream) -> String {
    fn walk(tokens: TokenStream, out: &mut String, last_word: &mut bool) {
        for tt in tokens {
            match tt {
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                        proc_macro2::Delimiter::Brace => ("{", "}"),
                        proc_macro2::Delimiter::Bracket => ("[", "]"),
                        proc_macro2::Delimiter::None => ("", ""),
                    };
                    out.push_str(open);
                    *last_word = false;
                    walk(g.stream(), out, last_word);
                    out.push_str(close);
                    *last_word = false;
                }
                TokenTree::Ident(i) => {
                    if *last_word {
                        out.push(' ');
                    }
                    out.push_str(&i.to_string());
                    *last_word = true;
                }
                TokenTree::Literal(l) => {
                    if *last_word {
                        out.push(' ');
                    }
                    out.push_str(&l.to_string());
                    *last_word = true;
                }
                TokenTree::Punct(p) => {
                    out.push(p.as_char());
                    *last_word = false;
                }
            }
        }
    }
    let mut out = String::new();
    let mut last_word = false;
    walk(tokens.clone(), &mut out, &mut last_word);
    out
}

#[cfg(test)]
mod tests {
    use super::canonical;
    use quote::quote;

    #[test]
    fn canonical_tokens() {
        assert_eq!(canonical(&quote!(&'a str)), "&'a str");
        assert_eq!(
            canonical(&quote!(Result<Metrics, DbError>)),
            "Result<Metrics,DbError>"
        );
        assert_eq!(canonical(&quote!(&[u8])), "&[u8]");
        assert_eq!(canonical(&quote!(dyn Fn(u8) -> u8)), "dyn Fn(u8)->u8");
        assert_eq!(canonical(&quote!([u8; 4])), "[u8;4]");
    }
}
