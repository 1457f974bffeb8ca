//! Checks and code generation for `#[derive(Invalidate)]`.

use super::attr::{Events, Item, Items};
use crate::common::{Errors, Token, bad_key_char, check_separators, key_text_char, split_template};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path};

/// A `key`/`pattern`/page path template split into literal text and field
/// placeholders.
enum Piece {
    Text(String),
    Field(Ident),
}

/// What a template builds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Template {
    Key,
    Pattern,
    /// A page's URL path: values are path segments, not key values.
    PagePath,
}

fn parse_template(
    lit: &LitStr,
    fields: &[Ident],
    kind: Template,
    errors: &mut Errors,
    field_list: &str,
) -> Vec<Piece> {
    let text = lit.value();
    let span = lit.span();
    let tokens = split_template(&text).unwrap_or_else(|msg| {
        errors.push(span, msg);
        Vec::new()
    });
    let pattern = kind == Template::Pattern;
    let what = match kind {
        Template::Key => "`key` template",
        Template::Pattern => "`pattern` template",
        Template::PagePath => "page `path`",
    };
    // A page path is the URL itself: its values need no separators.
    if kind != Template::PagePath {
        for msg in check_separators(&tokens, what) {
            errors.push(span, msg);
        }
    }
    let mut pieces = Vec::new();
    // The text of the current `:` segment, for placeholders in a page path.
    let mut segment = String::new();
    for token in tokens {
        if let Token::Placeholder(name) = token
            && pattern
            && text.starts_with("tg:view:")
            && segment.starts_with("path=")
        {
            errors.push(
                span,
                format!("`{{{name}}}` in the `path=` of a page pattern would be written as a key value (`'2024-recap` for a slug), never as the URL path the page is keyed on; write `page(view = \"..\", path = \"/..{{{name}}}..\")` instead"),
            );
        }
        match token {
            Token::Text(t) => match t.rsplit_once(':') {
                Some((_, tail)) => segment = tail.to_owned(),
                None => segment.push_str(t),
            },
            Token::Placeholder(_) => segment.push('_'),
        }
        match token {
            Token::Placeholder(name) => match fields.iter().find(|f| *f == name) {
                Some(f) => pieces.push(Piece::Field(Ident::new(&f.to_string(), span))),
                None => errors.push(
                    span,
                    format!("`{{{name}}}` in the template names no field; {field_list}"),
                ),
            },
            Token::Text(t) => {
                // Patterns may use glob characters, and a URL path any
                // printable text; keys may not.
                let bad = t.chars().find(|&c| {
                    c.is_whitespace()
                        || c.is_control()
                        || !(kind != Template::Key || key_text_char(c))
                });
                if let Some(bad) = bad {
                    errors.push(span, bad_key_char(bad));
                }
                pieces.push(Piece::Text(t.to_owned()));
            }
        }
    }
    pieces
}

/// Statements building the template into `__tg_s`.
fn build(pieces: &[Piece]) -> TokenStream {
    let mut out = TokenStream::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.extend(quote!(__tg_s.push_str(#t);)),
            Piece::Field(f) => out.extend(quote_spanned!(f.span()=>
                ::tg_cache::KeyPart::write_key_part(&self.#f, &mut __tg_s);
            )),
        }
    }
    out
}

/// The template with every placeholder replaced by `*`.
fn widened(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.as_str(),
            Piece::Field(_) => "*",
        })
        .collect()
}

/// The literal text before the first placeholder, if the whole template is literal.
fn literal(pieces: &[Piece]) -> Option<String> {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => Some(t.as_str()),
            Piece::Field(_) => None,
        })
        .collect()
}

/// The key family of a template whose first three segments are literal.
fn template_family(pieces: &[Piece]) -> Option<String> {
    let Some(Piece::Text(head)) = pieces.first() else {
        return None;
    };
    let rest = head.strip_prefix("tg:")?;
    let first = rest.find(':')?;
    let second = rest[first + 1..].find(':')?;
    Some(head[..3 + first + 1 + second].to_owned())
}

fn suffixed(path: &Path, suffix: &str) -> Path {
    let mut p = path.clone();
    if let Some(last) = p.segments.last_mut() {
        last.ident = format_ident!("{}{}", last.ident, suffix, span = last.ident.span());
    }
    p
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let fields: Vec<Ident> = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => f.named.iter().filter_map(|f| f.ident.clone()).collect(),
            _ => {
                return Err(syn::Error::new(
                    name.span(),
                    "#[derive(Invalidate)] needs a struct with named fields: its targets name fields (`model_key(id)`), which a tuple or unit struct does not have",
                ));
            }
        },
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span(),
                "#[derive(Invalidate)] works on structs with named fields (a model row), not on enums",
            ));
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                "#[derive(Invalidate)] works on structs with named fields, not on unions",
            ));
        }
    };
    let field_list = format!(
        "`{name}` has the fields: {}",
        fields
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut errors = Errors::default();
    let check_field = |f: &Ident, errors: &mut Errors| -> bool {
        if fields.contains(f) {
            true
        } else {
            errors.push(f.span(), format!("no field `{f}`; {field_list}"));
            false
        }
    };

    // events
    let mut events: Vec<(String, Span)> = Vec::new();
    let mut saw_events = false;
    let mut items: Vec<Item> = Vec::new();
    for attr in &input.attrs {
        if attr.path().is_ident("invalidate_on") {
            saw_events = true;
            let Events(list) = attr.parse_args()?;
            if list.is_empty() {
                errors.push(
                    attr.span(),
                    "`#[invalidate_on()]` names no event; write `#[invalidate_on(save, delete)]`",
                );
            }
            for ev in list {
                let s = ev.to_string();
                if s != "save" && s != "delete" {
                    errors.push(
                        ev.span(),
                        format!("unknown event `{s}`; the events are `save` and `delete`"),
                    );
                } else if events.iter().any(|(e, _)| *e == s) {
                    errors.push(ev.span(), format!("event `{s}` is given twice; keep one"));
                } else {
                    events.push((s, ev.span()));
                }
            }
        } else if attr.path().is_ident("invalidate") {
            let Items(list) = attr.parse_args()?;
            items.extend(list);
        }
    }
    if !saw_events {
        events = vec![
            ("save".into(), Span::call_site()),
            ("delete".into(), Span::call_site()),
        ];
    }
    let events = events.iter().map(|(e, _)| {
        if e == "save" {
            quote!(::tg_cache::Event::Save)
        } else {
            quote!(::tg_cache::Event::Delete)
        }
    });

    // model name and cache
    let mut model: Option<LitStr> = None;
    let mut cache: Option<LitStr> = None;
    for item in &items {
        match item {
            Item::Model(l) => {
                if model.is_some() {
                    errors.push(l.span(), "`model` is given twice; keep one");
                } else if l.value().is_empty() {
                    errors.push(l.span(), "`model` must not be empty");
                }
                model = Some(l.clone());
            }
            Item::Cache(l) => {
                if cache.is_some() {
                    errors.push(l.span(), "`cache` is given twice; keep one");
                }
                cache = Some(l.clone());
            }
            _ => {}
        }
    }
    let model_name = model
        .as_ref()
        .map_or_else(|| name.to_string(), LitStr::value);
    let cache_expr = match &cache {
        Some(l) => quote!(::tg_cache::caches(#l)?),
        None => quote!(::tg_cache::cache()),
    };

    // targets
    let mut one = Vec::new();
    let mut all = Vec::new();
    let mut has_targets = false;
    for item in &items {
        match item {
            Item::ModelKey(kw, pairs) => {
                has_targets = true;
                let mut ok = true;
                for (_, f) in pairs {
                    ok &= check_field(f, &mut errors);
                }
                if !ok {
                    continue;
                }
                let filters = pairs.iter().map(|(n, f)| {
                    let n = n.to_string();
                    quote_spanned!(f.span()=> (#n, &self.#f as &dyn ::tg_cache::KeyPart))
                });
                one.push(quote_spanned!(kw.span()=>
                    ::tg_cache::Target::key(
                        #cache_expr,
                        ::tg_cache::CacheKeyGenerator::make_model_key(#model_name, &[#(#filters),*]),
                    )
                ));
                all.push(quote!(::tg_cache::Target::family(
                    #cache_expr,
                    ::tg_cache::CacheKeyGenerator::model_prefix(#model_name),
                )));
            }
            Item::Function(path, args) => {
                has_targets = true;
                let cache_fn = suffixed(path, "_cache");
                let family_fn = suffixed(path, "_key_family");
                let whole = quote_spanned!(path.span()=>
                    ::tg_cache::Target::family(#cache_fn()?, #family_fn())
                );
                match args {
                    None => one.push(whole.clone()),
                    Some(fs) => {
                        let mut ok = true;
                        for f in fs {
                            ok &= check_field(f, &mut errors);
                        }
                        if !ok {
                            continue;
                        }
                        let key_fn = suffixed(path, "_cache_key");
                        let args = fs.iter().map(|f| quote_spanned!(f.span()=> &self.#f));
                        one.push(quote_spanned!(path.span()=>
                            ::tg_cache::Target::key(#cache_fn()?, #key_fn(#(#args),*))
                        ));
                    }
                }
                all.push(whole);
            }
            Item::Key(lit) | Item::Pattern(lit) => {
                has_targets = true;
                let is_pattern = matches!(item, Item::Pattern(_));
                let kind = if is_pattern {
                    Template::Pattern
                } else {
                    Template::Key
                };
                let pieces = parse_template(lit, &fields, kind, &mut errors, &field_list);
                let stmts = build(&pieces);
                if is_pattern {
                    one.push(quote!({
                        let mut __tg_s = ::std::string::String::new();
                        #stmts
                        ::tg_cache::Target::pattern(#cache_expr, __tg_s)
                    }));
                    let w = widened(&pieces);
                    all.push(quote!(::tg_cache::Target::pattern(#cache_expr, #w)));
                } else {
                    one.push(quote!({
                        let mut __tg_s = ::std::string::String::new();
                        #stmts
                        ::tg_cache::Target::key(#cache_expr, __tg_s)
                    }));
                    all.push(match (literal(&pieces), template_family(&pieces)) {
                        (Some(k), _) => quote!(::tg_cache::Target::key(#cache_expr, #k)),
                        (None, Some(fam)) => quote!(::tg_cache::Target::family(#cache_expr, #fam)),
                        (None, None) => {
                            let w = widened(&pieces);
                            quote!(::tg_cache::Target::pattern(#cache_expr, #w))
                        }
                    });
                }
            }
            Item::Page(view, path) => {
                has_targets = true;
                let pieces =
                    parse_template(path, &fields, Template::PagePath, &mut errors, &field_list);
                if !path.value().starts_with('/') {
                    errors.push(
                        path.span(),
                        "a page `path` is a URL path and starts with `/`",
                    );
                }
                let mut stmts = TokenStream::new();
                for p in &pieces {
                    match p {
                        Piece::Text(t) => stmts.extend(quote!(.literal(#t))),
                        Piece::Field(f) => {
                            stmts.extend(quote_spanned!(f.span()=> .segment(&self.#f)))
                        }
                    }
                }
                one.push(quote!(::tg_cache::Target::page(
                    #cache_expr,
                    #view,
                    &::tg_cache::key::PagePath::new() #stmts .finish(),
                )));
                all.push(quote!(::tg_cache::Target::family(
                    #cache_expr,
                    ::tg_cache::CacheKeyGenerator::view_prefix(#view),
                )));
            }
            Item::Model(_) | Item::Cache(_) => {}
        }
    }
    if !has_targets {
        if fields.iter().any(|f| f == "id") {
            let id = Ident::new("id", Span::call_site());
            one.push(quote!(::tg_cache::Target::key(
                #cache_expr,
                ::tg_cache::CacheKeyGenerator::make_model_key(#model_name, &[("id", &self.#id as &dyn ::tg_cache::KeyPart)]),
            )));
            all.push(quote!(::tg_cache::Target::family(
                #cache_expr,
                ::tg_cache::CacheKeyGenerator::model_prefix(#model_name),
            )));
        } else {
            errors.push(
                name.span(),
                format!("`{name}` has no `id` field, so there is no default target; say what to invalidate, e.g. `#[invalidate(model_key(pk))]` or `#[invalidate(function = get_scenes(pk))]`"),
            );
        }
    }
    errors.finish()?;

    let (ig, tg, wc) = input.generics.split_for_impl();
    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #ig ::tg_cache::Invalidate for #name #tg #wc {
                const MODEL: &'static str = #model_name;
                const EVENTS: &'static [::tg_cache::Event] = &[#(#events),*];

                fn targets(&self) -> ::tg_cache::Result<::std::vec::Vec<::tg_cache::Target>> {
                    ::std::result::Result::Ok(::std::vec![#(#one),*])
                }

                fn all_targets() -> ::tg_cache::Result<::std::vec::Vec<::tg_cache::Target>> {
                    let mut __tg_all: ::std::vec::Vec<::tg_cache::Target> = ::std::vec![#(#all),*];
                    let mut __tg_seen = ::std::vec::Vec::with_capacity(__tg_all.len());
                    __tg_all.retain(|t| {
                        if __tg_seen.contains(t) {
                            false
                        } else {
                            __tg_seen.push(t.clone());
                            true
                        }
                    });
                    ::std::result::Result::Ok(__tg_all)
                }
            }
        };
    })
}
