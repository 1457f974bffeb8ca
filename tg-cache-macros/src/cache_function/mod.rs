//! `#[cache_function]`: `attr` parses, `check` validates against the
//! signature, `expand` generates.

mod attr;
mod check;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

pub(crate) fn cache_function(attr: TokenStream, item: TokenStream) -> TokenStream {
    let f = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => return not_a_fn(item),
    };
    let args = match syn::parse2::<attr::Args>(attr) {
        Ok(a) => a,
        Err(e) => return with_error(&f, e),
    };
    match check::check(&args, &f) {
        Ok(plan) => expand::expand(&args, f, plan),
        Err(e) => with_error(&f, e),
    }
}

/// The function unchanged plus the error, so the user sees this one error
/// and not a cascade from missing code.
fn with_error(f: &ItemFn, e: syn::Error) -> TokenStream {
    let e = e.to_compile_error();
    quote!(#e #f)
}

fn not_a_fn(item: TokenStream) -> TokenStream {
    match syn::parse2::<syn::Item>(item.clone()) {
        // A fn whose body does not parse: pass it through so rustc reports
        // the user's own syntax error as usual.
        Ok(syn::Item::Fn(_)) => item,
        Ok(other) => {
            let e = syn::Error::new_spanned(
                first_token(&other),
                "#[cache_function] can only be used on a function (`fn` or `async fn`) with a body",
            )
            .to_compile_error();
            quote!(#e #other)
        }
        Err(_) => {
            if let Ok(decl) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
                let e = syn::Error::new_spanned(
                    &decl.sig,
                    "#[cache_function] needs a function body to wrap; put it on the method's implementation, not its declaration",
                )
                .to_compile_error();
                return quote!(#e #decl);
            }
            item
        }
    }
}

fn first_token(item: &syn::Item) -> TokenStream {
    let tokens = quote!(#item);
    // Skip outer attributes (`#` followed by a bracket group).
    let mut iter = tokens.into_iter().peekable();
    while let Some(proc_macro2::TokenTree::Punct(p)) = iter.peek() {
        if p.as_char() != '#' {
            break;
        }
        iter.next();
        iter.next();
    }
    iter.next().map(TokenStream::from).unwrap_or_default()
}
