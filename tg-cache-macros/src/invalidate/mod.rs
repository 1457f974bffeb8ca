//! `#[derive(Invalidate)]`: `attr` parses the attributes, `expand` checks
//! them against the struct's fields and generates the impl.

mod attr;
mod expand;

use proc_macro2::TokenStream;

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    match expand::expand(&input) {
        Ok(ts) => ts,
        Err(e) => {
            // The error, plus an impl that compiles, so only this error shows.
            let e = e.to_compile_error();
            let name = &input.ident;
            let (ig, tg, wc) = input.generics.split_for_impl();
            quote::quote! {
                #e
                const _: () = {
                    impl #ig ::tg_cache::Invalidate for #name #tg #wc {
                        const MODEL: &'static str = "";
                        const EVENTS: &'static [::tg_cache::Event] = &[];
                        fn targets(&self) -> ::tg_cache::Result<::std::vec::Vec<::tg_cache::Target>> {
                            ::std::result::Result::Ok(::std::vec::Vec::new())
                        }
                        fn all_targets() -> ::tg_cache::Result<::std::vec::Vec<::tg_cache::Target>> {
                            ::std::result::Result::Ok(::std::vec::Vec::new())
                        }
                    }
                };
            }
        }
    }
}
