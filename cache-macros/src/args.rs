//! Attribute arguments: parsed as real tokens (`ttl = 3600`, `skip(a, b)`), then converted
//! into typed values that keep the span of the token they came from. Value-level mistakes
//! (a zero TTL, a namespace with capitals, an unknown argument) are collected in a
//! [`Ctxt`]; mistakes that need the function signature are in `validate.rs`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, Token, UnOp};

use crate::ctxt::{closest, Ctxt};
use crate::duration;

/// Which attribute is being expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    CacheResult,
    UserSpecific,
}

impl Kind {
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Kind::CacheResult => "#[cache_result]",
            Kind::UserSpecific => "#[cache_user_specific]",
        }
    }

    pub(crate) fn default_namespace(self) -> &'static str {
        match self {
            Kind::CacheResult => "general",
            Kind::UserSpecific => "users",
        }
    }

    fn accepted(self) -> &'static [&'static str] {
        match self {
            Kind::CacheResult => &COMMON,
            Kind::UserSpecific => &USER_SPECIFIC,
        }
    }
}

const COMMON: [&str; 14] = [
    "ttl",
    "namespace",
    "name",
    "version",
    "fail_safe",
    "soft_timeout",
    "refresh_ahead",
    "distributed_lock",
    "skip",
    "include",
    "cache_none",
    "companions",
    "cache",
    "tags",
];
const USER_SPECIFIC: [&str; 16] = [
    "ttl",
    "namespace",
    "name",
    "version",
    "fail_safe",
    "soft_timeout",
    "refresh_ahead",
    "distributed_lock",
    "skip",
    "include",
    "cache_none",
    "companions",
    "cache",
    "tags",
    "data_type",
    "user",
];

/// One `name = value`, `name(a, b)` or bare `name`, as written.
struct RawArg {
    name: Ident,
    value: RawValue,
}

enum RawValue {
    Expr(Expr),
    List(Punctuated<Ident, Token![,]>),
    Bare,
}

impl Parse for RawArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = input.call(Ident::parse_any)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            RawValue::Expr(input.parse()?)
        } else if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            RawValue::List(content.parse_terminated(Ident::parse_any, Token![,])?)
        } else {
            RawValue::Bare
        };
        Ok(RawArg { name, value })
    }
}

/// A value with the span of the token it was written as.
#[derive(Clone, Debug)]
pub(crate) struct WithSpan<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// The typed arguments of one attribute. Absent arguments are `None` (defaults are applied
/// by the caller, which knows the function).
pub(crate) struct Args {
    pub(crate) kind: Kind,
    pub(crate) ttl_secs: Option<WithSpan<u64>>,
    pub(crate) namespace: Option<WithSpan<String>>,
    pub(crate) data_type: Option<WithSpan<String>>,
    pub(crate) version: Option<WithSpan<u32>>,
    /// `name = "billing::invoice"`: the function's identity in keys, instead of its module
    /// path and name (so moving or renaming it, or its crate, keeps its entries).
    pub(crate) name: Option<WithSpan<String>>,
    /// `fail_safe = "2h"` (ms) or `fail_safe = false` (`None` inside).
    pub(crate) fail_safe: Option<WithSpan<Option<u64>>>,
    /// `soft_timeout = "300ms"`, in ms.
    pub(crate) soft_timeout: Option<WithSpan<u64>>,
    /// `refresh_ahead = 0.8`, in thousandths of the TTL.
    pub(crate) refresh_ahead: Option<WithSpan<u16>>,
    /// `distributed_lock = true` (`Some(0)`: the configured lease), `= "30s"` (ms), or
    /// `= false` (`None` inside).
    pub(crate) distributed_lock: Option<WithSpan<Option<u64>>>,
    /// Parameter names (and possibly `self`) left out of the key.
    pub(crate) skip: Vec<Ident>,
    /// Only `self` is accepted: every other parameter is part of the key unless skipped.
    pub(crate) include: Vec<Ident>,
    pub(crate) user: Option<Ident>,
    pub(crate) cache_none: Option<WithSpan<bool>>,
    pub(crate) companions: Option<WithSpan<bool>>,
    /// `cache = path`: a function returning the `&'static Cache` to use.
    pub(crate) cache: Option<syn::Path>,
    /// `tags = ["trades:{user_id}", "market"]`.
    pub(crate) tags: Vec<TagTemplate>,
}

/// One tag as written: literal text and `{parameter}` placeholders.
pub(crate) struct TagTemplate {
    pub(crate) lit: syn::LitStr,
    pub(crate) parts: Vec<TagPart>,
}

pub(crate) enum TagPart {
    Text(String),
    /// A parameter's name, spanned at the tag's literal.
    Param(Ident),
}

impl Args {
    fn empty(kind: Kind) -> Self {
        Args {
            kind,
            ttl_secs: None,
            namespace: None,
            data_type: None,
            version: None,
            name: None,
            fail_safe: None,
            soft_timeout: None,
            refresh_ahead: None,
            distributed_lock: None,
            skip: Vec::new(),
            include: Vec::new(),
            user: None,
            cache_none: None,
            companions: None,
            cache: None,
            tags: Vec::new(),
        }
    }
}

/// Parses and converts the attribute's arguments. Never fails: errors go to `cx`, and the
/// arguments that were understood are returned so the signature can still be checked.
pub(crate) fn parse(kind: Kind, tokens: TokenStream, cx: &mut Ctxt) -> Args {
    let mut args = Args::empty(kind);
    let raw = match Punctuated::<RawArg, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(raw) => raw,
        Err(e) => {
            cx.push(e);
            return args;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    for arg in raw {
        let name = arg.name.to_string();
        if !kind.accepted().contains(&name.as_str()) {
            unknown(kind, &arg.name, cx);
            continue;
        }
        if seen.contains(&name) {
            cx.error_spanned(
                &arg.name,
                format!("duplicate argument `{name}`: give it once"),
            );
            continue;
        }
        seen.push(name.clone());
        convert(&mut args, &name, arg, cx);
    }
    args
}

fn unknown(kind: Kind, name: &Ident, cx: &mut Ctxt) {
    let text = name.to_string();
    if kind == Kind::CacheResult && USER_SPECIFIC.contains(&text.as_str()) {
        cx.error_spanned(
            name,
            format!("`{text}` is only accepted by #[cache_user_specific]; use that attribute for per-user entries"),
        );
        return;
    }
    let accepted = kind.accepted();
    let list = accepted
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = match closest(&text, accepted.iter().copied()) {
        Some(hint) => format!(
            "unknown argument `{text}` of {}: did you mean `{hint}`?",
            kind.attribute()
        ),
        None => format!(
            "unknown argument `{text}` of {}; expected one of {list}",
            kind.attribute()
        ),
    };
    cx.error_spanned(name, message);
}

fn convert(args: &mut Args, name: &str, arg: RawArg, cx: &mut Ctxt) {
    let RawArg { name: ident, value } = arg;
    match name {
        "ttl" => {
            args.ttl_secs =
                expr(&ident, value, "`ttl = 3600` or `ttl = \"1h\"`", cx).and_then(|e| ttl(&e, cx))
        }
        "namespace" => {
            args.namespace = expr(&ident, value, "`namespace = \"analytics\"`", cx)
                .and_then(|e| segment(&e, "namespace", cx));
        }
        "data_type" => {
            args.data_type = expr(&ident, value, "`data_type = \"reports\"`", cx)
                .and_then(|e| segment(&e, "data_type", cx));
        }
        "version" => {
            args.version = expr(&ident, value, "`version = 2`", cx).and_then(|e| version(&e, cx))
        }
        "fail_safe" => {
            const EXAMPLE: &str = "`fail_safe = \"2h\"` (how long past its TTL the last good value may be served) or `fail_safe = false`";
            args.fail_safe = expr(&ident, value, EXAMPLE, cx).and_then(|e| match &e {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) if !b.value => Some(WithSpan {
                    value: None,
                    span: b.span(),
                }),
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => {
                    cx.error_spanned(
                        b,
                        format!("`fail_safe = true` needs a window: write e.g. {EXAMPLE}"),
                    );
                    None
                }
                _ => positive_ms(&e, "fail_safe", EXAMPLE, cx).map(|w| WithSpan {
                    value: Some(w.value),
                    span: w.span,
                }),
            });
        }
        "soft_timeout" => {
            const EXAMPLE: &str = "`soft_timeout = \"300ms\"`";
            args.soft_timeout = expr(&ident, value, EXAMPLE, cx)
                .and_then(|e| positive_ms(&e, "soft_timeout", EXAMPLE, cx));
        }
        "refresh_ahead" => {
            args.refresh_ahead =
                expr(&ident, value, "`refresh_ahead = 0.8`", cx).and_then(|e| fraction(&e, cx));
        }
        "distributed_lock" => {
            const EXAMPLE: &str = "`distributed_lock = true` (the lease of CACHE_LOCK_LEASE), `distributed_lock = \"30s\"` or `distributed_lock = false`";
            args.distributed_lock = expr(&ident, value, EXAMPLE, cx).and_then(|e| match &e {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => Some(WithSpan {
                    value: b.value.then_some(0),
                    span: b.span(),
                }),
                _ => positive_ms(&e, "distributed_lock", EXAMPLE, cx).map(|w| WithSpan {
                    value: Some(w.value),
                    span: w.span,
                }),
            });
        }
        "name" => {
            args.name = expr(&ident, value, "`name = \"billing::invoice\"`", cx)
                .and_then(|e| site_name(&e, cx))
        }
        "cache_none" => args.cache_none = flag(&ident, value, cx),
        "cache" => {
            const EXAMPLE: &str = "`cache = crate::caches::analytics`, a function returning `&'static cache_runtime::Cache`";
            args.cache = expr(&ident, value, EXAMPLE, cx).and_then(|e| match e {
                Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Some(p.path),
                other => {
                    cx.error_spanned(
                        &other,
                        format!("expected the path of a function, e.g. {EXAMPLE}"),
                    );
                    None
                }
            });
        }
        "companions" => args.companions = flag(&ident, value, cx),
        "tags" => {
            args.tags =
                expr(&ident, value, TAGS_EXAMPLE, cx).map_or_else(Vec::new, |e| tags(&e, cx));
        }
        "user" => {
            args.user = expr(&ident, value, "`user = user_id` (a parameter name)", cx).and_then(
                |e| match e {
                    Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
                        match p.path.get_ident() {
                            Some(id) => Some(id.clone()),
                            None => {
                                cx.error_spanned(
                                    &p,
                                    "expected the name of one parameter, e.g. `user = user_id`",
                                );
                                None
                            }
                        }
                    }
                    other => {
                        cx.error_spanned(
                            &other,
                            "expected the name of one parameter, e.g. `user = user_id`",
                        );
                        None
                    }
                },
            );
        }
        "skip" | "include" => {
            let RawValue::List(list) = value else {
                cx.error_spanned(
                    &ident,
                    format!("expected `{name}(...)` with parameter names, e.g. `{name}(self)`"),
                );
                return;
            };
            if list.is_empty() {
                cx.error_spanned(&ident, format!("`{name}()` names no parameter"));
            }
            let names: Vec<Ident> = list.into_iter().collect();
            for (i, n) in names.iter().enumerate() {
                if names[..i].contains(n) {
                    cx.error_spanned(n, format!("`{n}` is listed twice"));
                }
            }
            if name == "skip" {
                args.skip = names;
            } else {
                for n in &names {
                    if n != "self" {
                        cx.error_spanned(
                            n,
                            format!("`include` only takes `self`: every parameter is part of the key unless listed in `skip(...)`, so `{n}` needs no `include`"),
                        );
                    }
                }
                args.include = names;
            }
        }
        _ => {}
    }
}

fn expr(name: &Ident, value: RawValue, example: &str, cx: &mut Ctxt) -> Option<Expr> {
    match value {
        // A `macro_rules!` fragment (`name = $name`) arrives in an invisible group.
        RawValue::Expr(mut e) => loop {
            match e {
                Expr::Group(g) => e = *g.expr,
                other => break Some(other),
            }
        },
        RawValue::List(_) | RawValue::Bare => {
            cx.error_spanned(name, format!("`{name}` needs a value: {example}"));
            None
        }
    }
}

fn flag(name: &Ident, value: RawValue, cx: &mut Ctxt) -> Option<WithSpan<bool>> {
    match value {
        RawValue::Bare => Some(WithSpan {
            value: true,
            span: name.span(),
        }),
        RawValue::Expr(Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        })) => Some(WithSpan {
            value: b.value,
            span: b.span(),
        }),
        RawValue::Expr(other) => {
            cx.error_spanned(
                &other,
                format!("expected `{name} = true` or `{name} = false`"),
            );
            None
        }
        RawValue::List(_) => {
            cx.error_spanned(
                name,
                format!("expected `{name} = true` or `{name} = false`"),
            );
            None
        }
    }
}

fn ttl(e: &Expr, cx: &mut Ctxt) -> Option<WithSpan<u64>> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            match int.base10_parse::<u64>() {
                Ok(0) => {
                    cx.error_spanned(int, "`ttl = 0` would expire entries at once; give at least 1 second, or omit `ttl` to use the namespace's TTL");
                    None
                }
                Ok(secs) => Some(WithSpan {
                    value: secs,
                    span: int.span(),
                }),
                Err(_) => {
                    cx.error_spanned(int, "`ttl` must be a whole number of seconds that fits in a u64, e.g. `ttl = 3600`");
                    None
                }
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => match duration::parse_ttl_secs(&text.value()) {
            Ok(secs) => Some(WithSpan {
                value: secs,
                span: text.span(),
            }),
            Err(message) => {
                cx.error_spanned(text, message);
                None
            }
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => {
            cx.error_spanned(e, "`ttl` must be positive: a number of seconds (`ttl = 3600`) or a duration (`ttl = \"1h\"`)");
            None
        }
        other => {
            cx.error_spanned(other, "expected a number of seconds (`ttl = 3600`) or a duration string (`ttl = \"30m\"`, `\"1h30m\"`, `\"90s\"`, `\"1d\"`)");
            None
        }
    }
}

fn version(e: &Expr, cx: &mut Ctxt) -> Option<WithSpan<u32>> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = e
    {
        if let Ok(v) = int.base10_parse::<u32>() {
            return Some(WithSpan {
                value: v,
                span: int.span(),
            });
        }
    }
    cx.error_spanned(
        e,
        "`version` must be a whole number between 0 and 4294967295, e.g. `version = 2`",
    );
    None
}

/// A key segment written by the user: `[a-z0-9_-]{1,64}`, so it never needs escaping.
const TAGS_EXAMPLE: &str =
    "`tags = [\"trades:{user_id}\", \"market\"]` (`{name}` is a parameter's value)";

/// `["a", "b:{param}"]`: each tag a string literal; `{{` and `}}` are literal braces.
fn tags(e: &Expr, cx: &mut Ctxt) -> Vec<TagTemplate> {
    let Expr::Array(array) = e else {
        cx.error_spanned(
            e,
            format!("expected a list of string literals, e.g. {TAGS_EXAMPLE}"),
        );
        return Vec::new();
    };
    if array.elems.is_empty() {
        cx.error_spanned(
            e,
            format!("`tags = []` tags nothing: remove it, or write e.g. {TAGS_EXAMPLE}"),
        );
    }
    let mut out = Vec::new();
    for elem in &array.elems {
        let Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) = elem
        else {
            cx.error_spanned(
                elem,
                format!("each tag is a string literal, e.g. {TAGS_EXAMPLE}"),
            );
            continue;
        };
        if let Some(parts) = tag_parts(lit, cx) {
            out.push(TagTemplate {
                lit: lit.clone(),
                parts,
            });
        }
    }
    out
}

fn tag_parts(lit: &syn::LitStr, cx: &mut Ctxt) -> Option<Vec<TagPart>> {
    let text = lit.value();
    if text.is_empty() {
        cx.error_spanned(
            lit,
            "a tag cannot be empty; write e.g. `\"market\"` or `\"trades:{user_id}\"`",
        );
        return None;
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    cx.error_spanned(lit, "unclosed `{` in a tag: write `{name}` for a parameter's value, or `{{` for a literal brace");
                    return None;
                }
                let Ok(ident) = syn::parse_str::<Ident>(&name) else {
                    cx.error_spanned(lit, format!("`{{{name}}}` in a tag must name a parameter, e.g. `{{user_id}}` (write `{{{{` and `}}}}` for literal braces)"));
                    return None;
                };
                if ident == "self" {
                    cx.error_spanned(
                        lit,
                        "a tag cannot use `{self}`: name a parameter, e.g. `{user_id}`",
                    );
                    return None;
                }
                if !literal.is_empty() {
                    parts.push(TagPart::Text(std::mem::take(&mut literal)));
                }
                parts.push(TagPart::Param(Ident::new(&name, lit.span())));
            }
            '}' => {
                cx.error_spanned(
                    lit,
                    "unmatched `}` in a tag: write `}}` for a literal brace",
                );
                return None;
            }
            other => literal.push(other),
        }
    }
    if !literal.is_empty() {
        parts.push(TagPart::Text(literal));
    }
    Some(parts)
}

fn segment(e: &Expr, what: &str, cx: &mut Ctxt) -> Option<WithSpan<String>> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(text),
        ..
    }) = e
    else {
        cx.error_spanned(
            e,
            format!("expected a string literal, e.g. `{what} = \"analytics\"`"),
        );
        return None;
    };
    let value = text.value();
    if let Err(problem) = check_segment(&value) {
        cx.error_spanned(text, format!("invalid {what} {value:?}: {problem}"));
        return None;
    }
    Some(WithSpan {
        value,
        span: text.span(),
    })
}

/// A positive duration string (`"300ms"`, `"2h"`), in milliseconds, at most a year.
fn positive_ms(e: &Expr, what: &str, example: &str, cx: &mut Ctxt) -> Option<WithSpan<u64>> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(text),
        ..
    }) = e
    else {
        cx.error_spanned(e, format!("expected a duration string, e.g. {example}"));
        return None;
    };
    let parsed = cache_grammar::parse_duration(&text.value()).and_then(|d| {
        if d.is_zero() {
            Err(format!("`{what}` must be longer than zero"))
        } else if d.as_secs() > 31_536_000 {
            Err(format!("`{what}` is longer than a year"))
        } else {
            Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        }
    });
    match parsed {
        Ok(ms) => Some(WithSpan {
            value: ms,
            span: text.span(),
        }),
        Err(message) => {
            cx.error_spanned(text, format!("{message}; e.g. {example}"));
            None
        }
    }
}

/// `refresh_ahead = 0.8`: a fraction of the TTL strictly between 0 and 1, in thousandths.
fn fraction(e: &Expr, cx: &mut Ctxt) -> Option<WithSpan<u16>> {
    const WHY: &str = "`refresh_ahead` is the share of the TTL after which a hit starts a background refresh: a number strictly between 0 and 1, e.g. `refresh_ahead = 0.8`";
    let Expr::Lit(ExprLit {
        lit: Lit::Float(f), ..
    }) = e
    else {
        cx.error_spanned(e, WHY);
        return None;
    };
    match f.base10_parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => {
            // Thousandths: finer would not change which hit refreshes.
            let permille = (x * 1000.0).round().clamp(1.0, 999.0) as u16;
            Some(WithSpan {
                value: permille,
                span: f.span(),
            })
        }
        _ => {
            cx.error_spanned(f, WHY);
            None
        }
    }
}

/// `name = "..."`: 1 to 200 of `[A-Za-z0-9_:.-]`, as a module path is. It is written into
/// keys in place of `module::function`, so no braces (a Redis Cluster hash tag) or glob
/// characters (namespace clearing matches keys with SCAN patterns).
fn site_name(e: &Expr, cx: &mut Ctxt) -> Option<WithSpan<String>> {
    const EXAMPLE: &str = "`name = \"billing::invoice\"`";
    let Expr::Lit(ExprLit {
        lit: Lit::Str(text),
        ..
    }) = e
    else {
        cx.error_spanned(e, format!("expected a string literal, e.g. {EXAMPLE}"));
        return None;
    };
    let value = text.value();
    let problem = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
    {
        Some("only letters, digits, `_`, `:`, `.` and `-` are allowed (it is written into keys)")
    } else {
        None
    };
    if let Some(problem) = problem {
        cx.error_spanned(
            text,
            format!("invalid name {value:?}: {problem}; use a stable identifier, e.g. {EXAMPLE}"),
        );
        return None;
    }
    Some(WithSpan {
        value,
        span: text.span(),
    })
}

pub(crate) fn check_segment(value: &str) -> Result<(), String> {
    cache_grammar::check_name(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn errors(kind: Kind, tokens: TokenStream) -> Vec<String> {
        let mut cx = Ctxt::default();
        let _ = parse(kind, tokens, &mut cx);
        match cx.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_all_options() {
        let mut cx = Ctxt::default();
        let args = parse(
            Kind::UserSpecific,
            quote!(
                ttl = "1h30m",
                namespace = "ai",
                data_type = "reports",
                version = 3,
                name = "reports::v2.monthly-by_user",
                skip(self, db),
                user = uid,
                cache_none = true,
                companions = false,
                cache = crate::caches::analytics
            ),
            &mut cx,
        );
        assert!(cx.finish().is_ok());
        assert_eq!(args.ttl_secs.map(|t| t.value), Some(5400));
        assert_eq!(args.namespace.map(|t| t.value).as_deref(), Some("ai"));
        assert_eq!(args.data_type.map(|t| t.value).as_deref(), Some("reports"));
        assert_eq!(args.version.map(|t| t.value), Some(3));
        assert_eq!(
            args.name.map(|t| t.value).as_deref(),
            Some("reports::v2.monthly-by_user")
        );
        assert_eq!(args.skip.len(), 2);
        assert_eq!(args.user.map(|u| u.to_string()).as_deref(), Some("uid"));
        assert_eq!(args.cache_none.map(|b| b.value), Some(true));
        assert_eq!(args.companions.map(|b| b.value), Some(false));
        assert!(args.cache.is_some());
    }

    #[test]
    fn names_are_key_safe() {
        for bad in ["", "a b", "{user:1}", "a*", "x?", "é", &"a".repeat(201)] {
            let all = errors(Kind::CacheResult, quote!(name = #bad));
            assert_eq!(all.len(), 1, "{bad:?}: {all:?}");
            assert!(all[0].starts_with("invalid name"), "{}", all[0]);
        }
        assert_eq!(
            errors(Kind::CacheResult, quote!(name = 5)),
            ["expected a string literal, e.g. `name = \"billing::invoice\"`"]
        );
        assert!(errors(Kind::CacheResult, quote!(name = "billing::invoice")).is_empty());
    }

    #[test]
    fn reports_every_error() {
        let all = errors(
            Kind::CacheResult,
            quote!(
                ttl = 0,
                namespce = "x",
                namespace = "A",
                version = -1,
                data_type = "r",
                ttl = 5
            ),
        );
        assert_eq!(all.len(), 6, "{all:#?}");
        assert!(all[1].contains("did you mean `namespace`?"), "{}", all[1]);
        assert!(all[4].contains("only accepted by #[cache_user_specific]"));
        assert!(all[5].contains("duplicate argument `ttl`"));
    }

    #[test]
    fn segments() {
        assert!(check_segment("analytics").is_ok());
        assert!(check_segment("a-b_c9").is_ok());
        assert!(check_segment("").is_err());
        assert!(check_segment("Users").is_err());
        assert!(check_segment("a:b").is_err());
        assert!(check_segment(&"a".repeat(65)).is_err());
        assert!(check_segment(&"a".repeat(64)).is_ok());
        assert!(
            check_segment("__index").is_err(),
            "reserved, as in the runtime"
        );
    }
}
