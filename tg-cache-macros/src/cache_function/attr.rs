//! Parsing of `#[cache_function(...)]`'s arguments into [`Args`]. Only syntax
//! here; checks against the function live in `check.rs`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitBool, LitStr, Token, UnOp};

pub(crate) const OPTIONS: &str =
    "key_prefix, timeout, jitter, key, skip, cache, cache_none, result, option, always, self_type";
pub(crate) const TIMEOUT_NAMES: [&str; 5] = ["SHORT", "MEDIUM", "LONG", "VERY_LONG", "DAY"];

/// The parsed attribute.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key_prefix: Option<LitStr>,
    pub(crate) timeout: Option<TimeoutArg>,
    /// `jitter = 0.1`: the fraction, and its literal's span.
    pub(crate) jitter: Option<(f64, Span)>,
    pub(crate) key: Option<LitStr>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) cache: Option<LitStr>,
    pub(crate) cache_none: Option<LitBool>,
    /// `self_type = true`: the key holds the type of `Self` (an associated
    /// function of a generic impl).
    pub(crate) self_type: Option<LitBool>,
    /// `result = true`, `option = true` or `always = true`, in order given.
    pub(crate) policies: Vec<PolicyArg>,
}

/// Which explicit policy argument.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    /// `result = true`: cache only `Ok`.
    Result,
    /// `option = true`: cache only `Some`.
    Option,
    /// `always = true`: cache every value.
    Always,
}

/// `result = true` / `option = true` / `always = true`, with its name token.
pub(crate) struct PolicyArg {
    pub(crate) kind: PolicyKind,
    pub(crate) name: Ident,
}

/// `timeout = ...`.
pub(crate) enum TimeoutArg {
    /// One of [`TIMEOUT_NAMES`].
    Named(Ident),
    /// Whole seconds.
    Seconds(u64, Span),
    /// Any other expression of a type convertible into `tg_cache::Timeout`.
    Expr(Box<Expr>),
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let name = input.call(Ident::parse_any)?;
            let n = name.to_string();
            if seen.contains(&n) {
                return Err(syn::Error::new(
                    name.span(),
                    format!("option `{n}` is given twice; keep one"),
                ));
            }
            match n.as_str() {
                "key_prefix" => args.key_prefix = Some(str_value(input, &name)?),
                "key" => args.key = Some(str_value(input, &name)?),
                "cache" => args.cache = Some(str_value(input, &name)?),
                "timeout" => {
                    eq(input, &name)?;
                    args.timeout = Some(timeout(input)?);
                }
                "jitter" => {
                    eq(input, &name)?;
                    args.jitter = Some(jitter(input)?);
                }
                "cache_none" => {
                    args.cache_none = Some(if input.peek(Token![=]) {
                        input.parse::<Token![=]>()?;
                        input.parse::<LitBool>().map_err(|e| {
                            syn::Error::new(
                                e.span(),
                                "expected `cache_none = true` or `cache_none = false`",
                            )
                        })?
                    } else {
                        LitBool::new(true, name.span())
                    });
                }
                "self_type" => {
                    input
                        .parse::<Token![=]>()
                        .map_err(|e| syn::Error::new(e.span(), "expected `self_type = true`"))?;
                    let value = input
                        .parse::<LitBool>()
                        .map_err(|e| syn::Error::new(e.span(), "expected `self_type = true`"))?;
                    if !value.value {
                        return Err(syn::Error::new(
                            value.span(),
                            "`self_type = false` says nothing; remove it",
                        ));
                    }
                    args.self_type = Some(value);
                }
                "result" | "option" | "always" => {
                    input
                        .parse::<Token![=]>()
                        .map_err(|e| syn::Error::new(e.span(), format!("expected `{n} = true`")))?;
                    let value = input
                        .parse::<LitBool>()
                        .map_err(|e| syn::Error::new(e.span(), format!("expected `{n} = true`")))?;
                    if !value.value {
                        return Err(syn::Error::new(
                            value.span(),
                            format!(
                                "`{n} = false` says nothing; remove it to let the return type decide what is cached"
                            ),
                        ));
                    }
                    let kind = match n.as_str() {
                        "result" => PolicyKind::Result,
                        "option" => PolicyKind::Option,
                        _ => PolicyKind::Always,
                    };
                    args.policies.push(PolicyArg {
                        kind,
                        name: name.clone(),
                    });
                }
                "skip" => {
                    let content;
                    syn::parenthesized!(content in input);
                    let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                        &content,
                        Ident::parse_any,
                    )?;
                    if names.is_empty() {
                        return Err(syn::Error::new(
                            name.span(),
                            "`skip()` names no parameter; write `skip(pool)` or remove it",
                        ));
                    }
                    args.skip = names.into_iter().collect();
                }
                _ => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("unknown option `{n}`; valid options are: {OPTIONS}"),
                    ));
                }
            }
            seen.push(n);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

fn eq(input: ParseStream, name: &Ident) -> syn::Result<()> {
    input
        .parse::<Token![=]>()
        .map(drop)
        .map_err(|e| syn::Error::new(e.span(), format!("expected `=` after `{name}`")))
}

fn str_value(input: ParseStream, name: &Ident) -> syn::Result<LitStr> {
    eq(input, name)?;
    input.parse::<LitStr>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`{name}` takes a string literal, e.g. `{name} = \"...\"`"),
        )
    })
}

/// `jitter = <fraction>`: a number literal strictly between 0 and 1.
fn jitter(input: ParseStream) -> syn::Result<(f64, Span)> {
    let expr: Expr = input.parse()?;
    let bad = |span| {
        syn::Error::new(
            span,
            "`jitter` is a fraction of the timeout strictly between 0 and 1, e.g. `jitter = 0.1` (lifetimes from 90% to 100% of the timeout)",
        )
    };
    let value = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().map_err(|_| bad(f.span()))?,
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>().map_err(|_| bad(i.span()))?,
        _ => return Err(bad(expr.span())),
    };
    // At least a millionth: what a jitter is kept in.
    if !(1e-6..1.0).contains(&value) {
        return Err(bad(expr.span()));
    }
    Ok((value, expr.span()))
}

/// Whether a timeout argument never expires or caches nothing (`None`,
/// `Timeout::Never`, `Timeout::NoCache`, `0`): what a jitter cannot spread.
pub(crate) fn never_expires(t: &TimeoutArg) -> bool {
    match t {
        TimeoutArg::Seconds(0, _) => true,
        TimeoutArg::Expr(e) => match &**e {
            Expr::Path(p) => p.path.segments.last().is_some_and(|s| {
                matches!(s.ident.to_string().as_str(), "None" | "Never" | "NoCache")
            }),
            _ => false,
        },
        _ => false,
    }
}

fn timeout(input: ParseStream) -> syn::Result<TimeoutArg> {
    let expr: Expr = input.parse()?;
    match &expr {
        Expr::Path(p)
            if p.qself.is_none()
                && p.path.leading_colon.is_none()
                && p.path.segments.len() == 1 =>
        {
            let ident = &p.path.segments[0].ident;
            if TIMEOUT_NAMES.contains(&ident.to_string().as_str()) {
                Ok(TimeoutArg::Named(ident.clone()))
            } else {
                Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "unknown timeout `{ident}`; use one of {}, whole seconds (`timeout = 300`), or a Duration expression (`timeout = Duration::from_secs(300)`)",
                        TIMEOUT_NAMES.join(", ")
                    ),
                ))
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => {
            let secs = i.base10_parse::<u64>().map_err(|_| {
                syn::Error::new(
                    i.span(),
                    "timeout seconds must be a whole number that fits in u64",
                )
            })?;
            Ok(TimeoutArg::Seconds(secs, i.span()))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => Err(syn::Error::new(
            f.span(),
            "timeout takes whole seconds; for sub-second timeouts write `timeout = Duration::from_millis(..)`",
        )),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(syn::Error::new(
            expr.span(),
            "timeout cannot be negative; use a positive number of seconds, or tg_cache::Timeout::NoCache to not cache",
        )),
        Expr::Lit(_) => Err(syn::Error::new(
            expr.span(),
            format!(
                "expected a timeout: one of {}, whole seconds, or a Duration expression",
                TIMEOUT_NAMES.join(", ")
            ),
        )),
        _ => Ok(TimeoutArg::Expr(Box::new(expr))),
    }
}
