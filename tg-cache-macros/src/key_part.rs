//! `#[derive(KeyPart)]`: a struct or enum written into cache keys through
//! its fields' own `KeyPart` impls, so every escaping rule still holds.
//!
//! * A struct with one field is written as that field (a newtype such as
//!   `struct CharacterId(i64)` keys like its `i64`).
//! * A struct with several fields is written as the tuple of its fields,
//!   `(a,b,c)`, in declaration order; a unit struct as `()`.
//! * An enum is written as its variant's name, followed by the tuple of its
//!   fields if it has any: `Active`, `Range(1,5)`.
//! * `#[key_part(skip)]` leaves a field out (it must not change what the
//!   value identifies).
//!
//! Generated code reaches the runtime through `::tg_cache` paths only.

use crate::common::Errors;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Index};

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    match expand(&input) {
        Ok(t) => t,
        Err(e) => e.to_compile_error(),
    }
}

/// Whether a field says `#[key_part(skip)]`; other `key_part` contents are
/// errors.
fn skipped(field: &syn::Field, errors: &mut Errors) -> bool {
    let mut skip = false;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("key_part")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("unknown `key_part` option; the only one is `skip`"))
            }
        });
        if let Err(e) = r {
            errors.push(e.span(), e);
        }
    }
    skip
}

/// Statements writing `values` (expressions of field references, with
/// their types' spans) to `out`: one value as itself, several as a tuple
/// `(a,b)`.
fn write_values(values: &[(TokenStream, Span)]) -> TokenStream {
    let write = |(v, span): &(TokenStream, Span)| quote_spanned!(*span=> ::tg_cache::KeyPart::write_key_part(#v, out););
    match values {
        [one] => write(one),
        many => tuple(many.iter().map(write)),
    }
}

/// `(a,b,..)` around the writes.
fn tuple(writes: impl Iterator<Item = TokenStream>) -> TokenStream {
    let parts = writes.enumerate().map(|(i, w)| {
        let sep = (i > 0).then(|| quote!(out.push(',');));
        quote!(#sep #w)
    });
    quote!(out.push('('); #(#parts)* out.push(')');)
}

/// The fields kept in the key: how to reach each, and its type's span
/// (where a field type that is no key part is reported).
fn kept(
    fields: &Fields,
    errors: &mut Errors,
    access: impl Fn(usize, &syn::Field) -> TokenStream,
) -> Vec<(TokenStream, Span)> {
    fields
        .iter()
        .enumerate()
        .filter(|(_, f)| !skipped(f, errors))
        .map(|(i, f)| (access(i, f), f.ty.span()))
        .collect()
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let mut errors = Errors::default();
    let body = match &input.data {
        Data::Struct(s) => {
            let values = kept(&s.fields, &mut errors, |i, f| match &f.ident {
                Some(id) => quote!(&self.#id),
                None => {
                    let i = Index::from(i);
                    quote!(&self.#i)
                }
            });
            if values.is_empty() {
                quote!(out.push_str("()");)
            } else {
                write_values(&values)
            }
        }
        Data::Enum(e) => {
            let arms = e.variants.iter().map(|v| {
                let vname = &v.ident;
                let text = vname.to_string();
                let bindings: Vec<_> = (0..v.fields.len())
                    .map(|i| format_ident!("__tg_f{i}"))
                    .collect();
                let pattern = match &v.fields {
                    Fields::Named(named) => {
                        let names = named.named.iter().map(|f| f.ident.as_ref());
                        quote!({ #(#names: #bindings),* })
                    }
                    Fields::Unnamed(_) => quote!((#(#bindings),*)),
                    Fields::Unit => quote!(),
                };
                let values = kept(&v.fields, &mut errors, |i, _| {
                    let b = &bindings[i];
                    quote!(#b)
                });
                let fields = if values.is_empty() {
                    quote!()
                } else {
                    tuple(values.iter().map(|(v, span)| {
                        quote_spanned!(*span=> ::tg_cache::KeyPart::write_key_part(#v, out);)
                    }))
                };
                quote!(Self::#vname #pattern => {
                    out.push_str(#text);
                    #fields
                })
            });
            if e.variants.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            }
        }
        Data::Union(u) => {
            errors.push(
                u.union_token.span,
                "`#[derive(KeyPart)]` works on structs and enums; a union's active field is unknown: implement `tg_cache::KeyPart` by hand",
            );
            quote!()
        }
    };
    errors.finish()?;
    let mut generics = input.generics.clone();
    for t in generics.type_params_mut() {
        t.bounds.push(syn::parse_quote!(::tg_cache::KeyPart));
    }
    let (ig, tg, wc) = generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #ig ::tg_cache::KeyPart for #name #tg #wc {
            #[allow(unused_variables)]
            fn write_key_part(&self, out: &mut ::std::string::String) {
                #body
            }
        }
    })
}
