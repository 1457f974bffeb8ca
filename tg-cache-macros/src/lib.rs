//! Procedural macros of [tg-cache](https://docs.rs/tg-cache). Use them
//! through the `tg-cache` facade, which they expand to.
#![forbid(unsafe_code)]

mod cache_function;
mod common;
mod invalidate;
mod key_part;

use proc_macro::TokenStream;

/// Caches a function's result, keyed by its arguments. See the `tg-cache`
/// crate documentation of `cache_function` for the options and the
/// generated helpers.
#[proc_macro_attribute]
pub fn cache_function(attr: TokenStream, item: TokenStream) -> TokenStream {
    cache_function::cache_function(attr.into(), item.into()).into()
}

/// Derives `tg_cache::Invalidate` for a model struct. See the `tg-cache`
/// crate documentation of `Invalidate` for the attributes.
#[proc_macro_derive(Invalidate, attributes(invalidate_on, invalidate))]
pub fn derive_invalidate(input: TokenStream) -> TokenStream {
    invalidate::derive(input.into()).into()
}

/// Derives `tg_cache::KeyPart` for a struct or enum, through its fields'
/// own impls. See the `tg-cache` crate documentation of `KeyPart`.
#[proc_macro_derive(KeyPart, attributes(key_part))]
pub fn derive_key_part(input: TokenStream) -> TokenStream {
    key_part::derive(input.into()).into()
}
