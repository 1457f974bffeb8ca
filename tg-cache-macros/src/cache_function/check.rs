//! Checks of the attribute against the function's signature, producing the
//! [`Plan`] that `expand.rs` turns into code. Every error is spanned on the
//! token at fault.

use super::attr::{Args, PolicyKind};
use crate::common::{Errors, Token, bad_key_char, check_separators, key_text_char, split_template};
use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

/// What part of a result is cached.
pub(crate) enum Policy {
    /// Every value (`tg_cache::Always`).
    Always,
    /// `Ok` values of a `Result` (`tg_cache::OkOnly`).
    OkOnly,
    /// `Some` values of an `Option` (`tg_cache::SomeOnly`).
    SomeOnly,
}

/// One piece of the key after `tg:fn:<prefix>`.
pub(crate) enum Piece {
    /// Literal text (already valid key text).
    Literal(String),
    /// A parameter's value, escaped at run time.
    Param(Ident),
    /// `self.<field>`, escaped at run time.
    SelfField(Ident, Span),
    /// The name of a type parameter's type (`std::any::type_name`).
    TypeName(Ident),
    /// The name of `Self`'s type.
    SelfType,
    /// A const parameter's value.
    Const(Ident),
}

/// A parameter that is part of the key.
pub(crate) struct KeyParam {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// How the policy was chosen.
pub(crate) enum PolicySource {
    /// From the return type as written. `probe`: it reads as neither a
    /// `Result` nor an `Option`, so the expansion checks that it is not one
    /// behind an alias.
    Syntax { probe: bool },
    /// From `result = true`, `option = true` or `always = true`: the stored
    /// type is not known here, so the policy is asserted against the return
    /// type instead.
    Explicit,
}

pub(crate) struct Plan {
    pub(crate) key_prefix: String,
    pub(crate) pieces: Vec<Piece>,
    /// The key holds `Self`'s type (a method, a signature naming `Self`, or
    /// `self_type = true`); else the expansion checks that the signature
    /// uses no generic parameter of a surrounding impl.
    pub(crate) key_has_self_type: bool,
    /// The type and const parameters the key holds (the helpers take them).
    pub(crate) keyed_generics: Vec<Ident>,
    pub(crate) key_params: Vec<KeyParam>,
    pub(crate) key_uses_self: bool,
    pub(crate) policy: Policy,
    pub(crate) policy_source: PolicySource,
    /// The type that is stored in the cache (meaningful for
    /// [`PolicySource::Syntax`]).
    pub(crate) stored: Type,
    pub(crate) ret: Type,
}

fn valid_prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Percent-escapes a parameter name as the runtime escapes key text.
pub(crate) fn escape_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'@' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Finds `impl Trait`, `Self` or a use of one of `generics` in a type.
struct TypeUses<'a> {
    generics: &'a [Ident],
    impl_trait: bool,
    generic: bool,
    reference: bool,
    self_type: bool,
}

impl<'ast> Visit<'ast> for TypeUses<'_> {
    fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
        self.impl_trait = true;
    }
    fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
        self.reference = true;
        syn::visit::visit_type_reference(self, r);
    }
    fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
        if p.qself.is_none()
            && let Some(first) = p.path.segments.first()
        {
            if self.generics.contains(&first.ident) {
                self.generic = true;
            }
            if first.ident == "Self" {
                self.self_type = true;
            }
        }
        syn::visit::visit_type_path(self, p);
    }
}

fn type_uses<'a>(ty: &Type, generics: &'a [Ident]) -> TypeUses<'a> {
    let mut v = TypeUses {
        generics,
        impl_trait: false,
        generic: false,
        reference: false,
        self_type: false,
    };
    v.visit_type(ty);
    v
}

/// `Result<T, ..>` → (OkOnly, T); `Option<T>` → (SomeOnly, T); else Always.
fn policy_of(ret: &Type, cache_none: bool) -> (Policy, Type) {
    if let Type::Path(p) = ret
        && p.qself.is_none()
        && let Some(last) = p.path.segments.last()
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(GenericArgument::Type(first)) = args.args.first()
    {
        if last.ident == "Result" {
            return (Policy::OkOnly, first.clone());
        }
        if last.ident == "Option" && !cache_none {
            return (Policy::SomeOnly, first.clone());
        }
    }
    (Policy::Always, ret.clone())
}

fn is_option(ret: &Type) -> bool {
    matches!(ret, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

pub(crate) fn check(args: &Args, f: &ItemFn) -> syn::Result<Plan> {
    let mut errors = Errors::default();
    let sig = &f.sig;

    if let Some(c) = &sig.constness {
        errors.push(
            c.span(),
            "#[cache_function] cannot be used on a `const fn`: a cache lookup happens at run time; remove `const`",
        );
    }

    // key_prefix
    let key_prefix = match &args.key_prefix {
        None => {
            errors.push(
                Span::call_site(),
                "missing `key_prefix`: write `#[cache_function(key_prefix = \"name\")]`, a name unique to this function (letters, digits, `_`, `-`, `.`)",
            );
            String::new()
        }
        Some(lit) => {
            let v = lit.value();
            if v.is_empty() {
                errors.push(lit.span(), "`key_prefix` must not be empty; name it after the function, e.g. `key_prefix = \"char_scenes\"`");
            } else if let Some(bad) = v.chars().find(|c| !valid_prefix_char(*c)) {
                errors.push(
                    lit.span(),
                    format!("`key_prefix` may only contain letters, digits, `_`, `-` and `.`; found {bad:?}"),
                );
            }
            v
        }
    };

    if let (Some((_, span)), Some(t)) = (&args.jitter, &args.timeout)
        && super::attr::never_expires(t)
    {
        errors.push(
            *span,
            "`jitter` spreads lifetimes, and this timeout never expires or caches nothing; remove `jitter`, or give a timeout that expires",
        );
    }

    if let Some(alias) = &args.cache
        && alias.value().trim().is_empty()
    {
        errors.push(alias.span(), "`cache` names a configured cache alias and must not be empty; remove it to use the default cache");
    }

    // generics
    let type_generics: Vec<Ident> = sig
        .generics
        .type_params()
        .map(|t| t.ident.clone())
        .collect();

    // parameters
    let mut params: Vec<(Ident, Type)> = Vec::new();
    let mut receiver: Option<Span> = None;
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => receiver = Some(r.self_token.span),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                    params.push((pi.ident.clone(), (*pt.ty).clone()));
                }
                other => errors.push(
                    other.span(),
                    "#[cache_function] needs a plain `name: Type` parameter here, so the key can name it; bind it to a name and destructure inside the function",
                ),
            },
        }
    }
    let param_names = || {
        let names: Vec<String> = params.iter().map(|(i, _)| i.to_string()).collect();
        if names.is_empty() {
            "the function has no parameters".to_owned()
        } else {
            format!("parameters are: {}", names.join(", "))
        }
    };

    let has_self = receiver.is_some();
    let mut skip_self = false;
    for s in &args.skip {
        if s == "self" {
            if has_self {
                skip_self = true;
            } else {
                errors.push(
                    s.span(),
                    format!(
                        "`skip(self)`: the function has no `self` receiver; {}",
                        param_names()
                    ),
                );
            }
            continue;
        }
        if !params.iter().any(|(i, _)| i == s) {
            errors.push(
                s.span(),
                format!(
                    "`skip({s})`: there is no parameter named `{s}`; {}",
                    param_names()
                ),
            );
        }
    }
    let skipped = |i: &Ident| args.skip.iter().any(|s| s == i);

    // key pieces: first the function's own generic parameters and the type
    // of `Self`, which can change the result as much as any argument.
    let mut pieces = Vec::new();
    let const_generics: Vec<Ident> = sig
        .generics
        .const_params()
        .map(|c| c.ident.clone())
        .collect();
    // A type parameter seen only in skipped parameters (a pool's type)
    // follows the `skip`; one seen nowhere (`count::<Character>()`) can
    // change the result, and is keyed on its type's name. (One seen in a
    // key parameter or the return type is an error below.)
    let in_skipped = |t: &Ident| {
        params
            .iter()
            .filter(|(i, _)| args.skip.iter().any(|s| s == i))
            .any(|(_, ty)| type_uses(ty, std::slice::from_ref(t)).generic)
    };
    let keyed_types: Vec<Ident> = type_generics
        .iter()
        .filter(|t| !in_skipped(t))
        .cloned()
        .collect();
    for t in &keyed_types {
        pieces.push(Piece::Literal(format!(
            ":{}=",
            escape_name(&t.unraw().to_string())
        )));
        pieces.push(Piece::TypeName(t.clone()));
    }
    for c in &const_generics {
        pieces.push(Piece::Literal(format!(
            ":{}=",
            escape_name(&c.unraw().to_string())
        )));
        pieces.push(Piece::Const(c.clone()));
    }
    let signature_names_self = sig.inputs.iter().any(|a| match a {
        FnArg::Receiver(_) => true,
        FnArg::Typed(pt) => type_uses(&pt.ty, &[]).self_type,
    }) || matches!(&sig.output, ReturnType::Type(_, ty) if type_uses(ty, &[]).self_type);
    let key_has_self_type = signature_names_self || args.self_type.is_some();
    if key_has_self_type {
        pieces.push(Piece::Literal(":Self=".into()));
        pieces.push(Piece::SelfType);
    }
    let mut key_uses_self = false;
    let mut names_self = false;
    let mut in_key: Vec<Ident> = Vec::new();
    match &args.key {
        None => {
            for (ident, _) in params.iter().filter(|(i, _)| !skipped(i)) {
                pieces.push(Piece::Literal(format!(
                    ":{}=",
                    escape_name(&ident.unraw().to_string())
                )));
                pieces.push(Piece::Param(ident.clone()));
                in_key.push(ident.clone());
            }
        }
        Some(lit) => {
            let template = lit.value();
            let span = lit.span();
            pieces.push(Piece::Literal(":".into()));
            let tokens = split_template(&template).unwrap_or_else(|msg| {
                errors.push(span, format!("`key`: {msg}; write e.g. `key = \"{{character_id}}\"`, or remove `key` to use every parameter"));
                Vec::new()
            });
            for msg in check_separators(&tokens, "`key` template") {
                errors.push(span, msg);
            }
            for token in tokens {
                let name = match token {
                    Token::Text(text) => {
                        if let Some(bad) = text.chars().find(|c| !key_text_char(*c)) {
                            errors.push(span, bad_key_char(bad));
                        }
                        pieces.push(Piece::Literal(text.to_owned()));
                        continue;
                    }
                    Token::Placeholder(name) => name,
                };
                if let Some(field) = name.strip_prefix("self.") {
                    names_self = true;
                    if skip_self {
                        errors.push(span, format!("`{{self.{field}}}` is in the `key` template but `self` is also in `skip(..)`; remove one"));
                    } else if !has_self {
                        errors.push(span, format!("`{{self.{field}}}` in the `key` template, but the function has no `self` parameter"));
                    } else if syn::parse_str::<Ident>(field).is_err() {
                        errors.push(span, format!("`{{self.{field}}}` is not a field name"));
                    } else {
                        key_uses_self = true;
                        pieces.push(Piece::SelfField(Ident::new(field, span), span));
                    }
                    continue;
                }
                match params.iter().find(|(i, _)| i.unraw() == name) {
                    Some((ident, _)) if skipped(ident) => errors.push(
                        span,
                        format!("`{{{name}}}` is in the `key` template but `{name}` is also in `skip(..)`; remove one"),
                    ),
                    Some((ident, _)) => {
                        pieces.push(Piece::Param(ident.clone()));
                        if !in_key.contains(ident) {
                            in_key.push(ident.clone());
                        }
                    }
                    None => errors.push(
                        span,
                        format!("`{{{name}}}` in the `key` template names no parameter; {}, or `{{self.field}}`", param_names()),
                    ),
                }
            }
            // After a misspelt placeholder, "parameter not in template" would
            // only repeat the same mistake.
            let misspelt = !errors.is_empty();
            for (ident, _) in &params {
                if !misspelt && !skipped(ident) && !in_key.contains(ident) {
                    errors.push(
                        ident.span(),
                        format!("parameter `{ident}` is not in the `key` template, so calls that differ only in `{ident}` would share an entry; add `{{{ident}}}` to the template or `skip({ident})`"),
                    );
                }
            }
        }
    }

    if let Some(recv) = receiver
        && !skip_self
        && !names_self
    {
        errors.push(
            recv,
            "`self` is not part of the key, so calls on different instances would share one entry; name a field, e.g. key = \"{self.id}\", or add skip(self) if every instance gives the same result",
        );
    }

    // key parameter types
    let mut key_params = Vec::new();
    for (ident, ty) in &params {
        if !in_key.contains(ident) {
            continue;
        }
        let uses = type_uses(ty, &type_generics);
        if uses.impl_trait || uses.generic {
            errors.push(
                ty.span(),
                format!("parameter `{ident}` has a generic or `impl Trait` type, which a cache key cannot tell apart from other types; use a concrete type, or leave it out of the key with `skip({ident})`"),
            );
        }
        key_params.push(KeyParam {
            ident: ident.clone(),
            ty: ty.clone(),
        });
    }

    // return type
    let ret: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let uses = type_uses(&ret, &type_generics);
    if uses.impl_trait {
        errors.push(ret.span(), "#[cache_function] cannot cache an `impl Trait` return type: a cached value must be a concrete type it can deserialize; return a concrete type");
    } else if uses.reference {
        errors.push(ret.span(), "#[cache_function] cannot cache a borrowed return type: cached values outlive the call; return owned data (e.g. `String`, `Vec<T>`, `Arc<T>`)");
    } else if uses.generic {
        errors.push(ret.span(), "#[cache_function] cannot cache a return type that depends on a generic parameter: the cache could not tell the instantiations apart; use a concrete type");
    }
    let cache_none = args.cache_none.as_ref().is_some_and(|b| b.value);
    if let Some(b) = &args.cache_none
        && !is_option(&ret)
    {
        errors.push(
            b.span(),
            "`cache_none` only applies to functions returning `Option<T>`; remove it",
        );
    }
    for p in args.policies.iter().skip(1) {
        let first = &args.policies[0].name;
        let msg = if p.kind == args.policies[0].kind {
            format!("`{}` is given twice; keep one", p.name)
        } else {
            format!(
                "`{} = true` conflicts with `{first} = true`: say at most one of `result`, `option` and `always`",
                p.name
            )
        };
        errors.push(p.name.span(), msg);
    }
    if let (Some(b), Some(p)) = (&args.cache_none, args.policies.first()) {
        errors.push(
            b.span(),
            format!("`cache_none` cannot be combined with `{} = true`; to cache `None` too, say `always = true` alone", p.name),
        );
    }
    let (policy, stored, policy_source) = match args.policies.first().map(|p| p.kind) {
        None => {
            let (policy, stored) = policy_of(&ret, cache_none);
            let probe = matches!(policy, Policy::Always) && !is_option(&ret);
            (policy, stored, PolicySource::Syntax { probe })
        }
        Some(kind) => {
            let policy = match kind {
                PolicyKind::Result => Policy::OkOnly,
                PolicyKind::Option => Policy::SomeOnly,
                PolicyKind::Always => Policy::Always,
            };
            (policy, ret.clone(), PolicySource::Explicit)
        }
    };

    errors.finish()?;
    Ok(Plan {
        key_prefix,
        pieces,
        key_has_self_type,
        keyed_generics: keyed_types.into_iter().chain(const_generics).collect(),
        key_params,
        key_uses_self,
        policy,
        policy_source,
        stored,
        ret,
    })
}
