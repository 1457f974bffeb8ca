//! Parsing of `#[invalidate_on(..)]` and `#[invalidate(..)]`.

use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Path, Token};

pub(crate) const TARGETS: &str = "model_key(..), function = path(..), key = \"..\", pattern = \"..\", page(view = \"..\", path = \"..\"), model = \"..\", cache = \"..\"";

/// One item of `#[invalidate(..)]`.
pub(crate) enum Item {
    /// `model_key(id, chronicle = chronicle_id)`: (filter name, field) pairs.
    ModelKey(Ident, Vec<(Ident, Ident)>),
    /// `function = path(field, ..)` or `function = path(..)` (all entries).
    Function(Path, Option<Vec<Ident>>),
    /// `key = ".."` with `{field}` placeholders.
    Key(LitStr),
    /// `pattern = ".."` with `{field}` placeholders.
    Pattern(LitStr),
    /// `page(view = "..", path = "..")`: a view's page, `{field}`
    /// placeholders in the path.
    Page(LitStr, LitStr),
    /// `model = ".."`.
    Model(LitStr),
    /// `cache = ".."`: the cache of model, key and pattern targets.
    Cache(LitStr),
}

pub(crate) struct Items(pub(crate) Vec<Item>);

impl Parse for Items {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            let name = input.call(Ident::parse_any)?;
            let item = match name.to_string().as_str() {
                "model_key" => {
                    let content;
                    syn::parenthesized!(content in input);
                    let mut pairs = Vec::new();
                    while !content.is_empty() {
                        let first: Ident = content.call(Ident::parse_any)?;
                        if content.peek(Token![=]) {
                            content.parse::<Token![=]>()?;
                            let field: Ident = content.call(Ident::parse_any)?;
                            pairs.push((first, field));
                        } else {
                            pairs.push((first.clone(), first));
                        }
                        if !content.is_empty() {
                            content.parse::<Token![,]>()?;
                        }
                    }
                    if pairs.is_empty() {
                        return Err(syn::Error::new(
                            name.span(),
                            "`model_key()` names no field; write `model_key(id)` or `model_key(chronicle = chronicle_id)`",
                        ));
                    }
                    Item::ModelKey(name, pairs)
                }
                "function" => {
                    input.parse::<Token![=]>()?;
                    let path: Path = input.call(Path::parse_mod_style)?;
                    let content;
                    syn::parenthesized!(content in input);
                    if content.peek(Token![..]) {
                        content.parse::<Token![..]>()?;
                        Item::Function(path, None)
                    } else {
                        let fields = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                            &content,
                            Ident::parse_any,
                        )?;
                        Item::Function(path, Some(fields.into_iter().collect()))
                    }
                }
                "page" => {
                    let content;
                    syn::parenthesized!(content in input);
                    let (mut view, mut path) = (None, None);
                    while !content.is_empty() {
                        let arg: Ident = content.call(Ident::parse_any)?;
                        content.parse::<Token![=]>()?;
                        let lit: LitStr = content.parse()?;
                        match arg.to_string().as_str() {
                            "view" if view.is_none() => view = Some(lit),
                            "path" if path.is_none() => path = Some(lit),
                            "view" | "path" => {
                                return Err(syn::Error::new(
                                    arg.span(),
                                    format!("`{arg}` is given twice in `page(..)`"),
                                ));
                            }
                            other => {
                                return Err(syn::Error::new(
                                    arg.span(),
                                    format!(
                                        "unknown argument `{other}` of `page(..)`; write `page(view = \"name\", path = \"/posts/{{slug}}\")`"
                                    ),
                                ));
                            }
                        }
                        if !content.is_empty() {
                            content.parse::<Token![,]>()?;
                        }
                    }
                    match (view, path) {
                        (Some(v), Some(p)) => Item::Page(v, p),
                        _ => {
                            return Err(syn::Error::new(
                                name.span(),
                                "`page(..)` needs a view and a path: `page(view = \"name\", path = \"/posts/{slug}\")`",
                            ));
                        }
                    }
                }
                "key" | "pattern" | "model" | "cache" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse().map_err(|e| {
                        syn::Error::new(e.span(), format!("`{name}` takes a string literal"))
                    })?;
                    match name.to_string().as_str() {
                        "key" => Item::Key(lit),
                        "pattern" => Item::Pattern(lit),
                        "model" => Item::Model(lit),
                        _ => Item::Cache(lit),
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("unknown invalidation target `{other}`; valid ones are: {TARGETS}"),
                    ));
                }
            };
            items.push(item);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Items(items))
    }
}

/// `#[invalidate_on(save, delete)]`.
pub(crate) struct Events(pub(crate) Vec<Ident>);

impl Parse for Events {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let list = Punctuated::<Ident, Token![,]>::parse_terminated_with(input, Ident::parse_any)?;
        Ok(Events(list.into_iter().collect()))
    }
}
