//! Code generation for `#[cache_function]`. Generated code reaches the
//! runtime only through `::tg_cache::...` paths.

use super::attr::{Args, TimeoutArg};
use super::check::{Piece, Plan, Policy, PolicySource};
use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, ItemFn, Type};

/// How a key writer writes a value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// With `KeyPart`, spanned on the value's type: where a type that is no
    /// key part is reported, once.
    Checked,
    /// Through the autoref probe that falls back to writing nothing: the
    /// helpers' copies of the key, which compile only when the checked
    /// copy does, so a missing `KeyPart` is reported once, not thrice.
    Quiet,
}

/// Statements that append the whole key to `__tg_buf: &mut String`.
fn key_writer(plan: &Plan, how: Write) -> TokenStream {
    let write = |value: TokenStream, span: proc_macro2::Span| match how {
        Write::Checked => {
            quote_spanned!(span=> ::tg_cache::KeyPart::write_key_part(#value, __tg_buf);)
        }
        Write::Quiet => quote!({
            #[allow(unused_imports)]
            use ::tg_cache::__private::{WriteKeyArg as _, WriteNothing as _};
            (&::tg_cache::__private::KeyArg(#value)).write(__tg_buf);
        }),
    };
    let mut out = TokenStream::new();
    let mut literal = format!("tg:fn:{}", plan.key_prefix);
    let flush = |literal: &mut String, out: &mut TokenStream| {
        if !literal.is_empty() {
            let l = std::mem::take(literal);
            out.extend(quote!(__tg_buf.push_str(#l);));
        }
    };
    for piece in &plan.pieces {
        match piece {
            Piece::Literal(s) => literal.push_str(s),
            Piece::Param(id) => {
                flush(&mut literal, &mut out);
                // Spanned on the parameter's type: a type that cannot be part
                // of a key is reported there.
                let span = plan
                    .key_params
                    .iter()
                    .find(|p| p.ident == *id)
                    .map_or_else(|| id.span(), |p| p.ty.span());
                out.extend(write(quote_spanned!(span=> &#id), span));
            }
            Piece::SelfField(field, span) => {
                flush(&mut literal, &mut out);
                out.extend(write(quote_spanned!(*span=> &self.#field), *span));
            }
            Piece::TypeName(t) => {
                flush(&mut literal, &mut out);
                out.extend(quote!(
                    ::tg_cache::KeyPart::write_key_part(::std::any::type_name::<#t>(), __tg_buf);
                ));
            }
            Piece::SelfType => {
                flush(&mut literal, &mut out);
                out.extend(quote!(
                    ::tg_cache::KeyPart::write_key_part(::std::any::type_name::<Self>(), __tg_buf);
                ));
            }
            Piece::Const(c) => {
                flush(&mut literal, &mut out);
                out.extend(quote!(::tg_cache::KeyPart::write_key_part(&#c, __tg_buf);));
            }
        }
    }
    flush(&mut literal, &mut out);
    out
}

/// An expression building the key as a `String`.
fn key_string(writer: &TokenStream) -> TokenStream {
    quote!({
        let mut __tg_owned = ::std::string::String::with_capacity(64);
        {
            let __tg_buf = &mut __tg_owned;
            #writer
        }
        __tg_owned
    })
}

/// `ty` with every lifetime `'static`: the nested check item may name the
/// function's lifetimes no more than its types.
fn static_lifetimes(mut ty: Type) -> Type {
    struct Statics;
    impl syn::visit_mut::VisitMut for Statics {
        fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
            *l = syn::Lifetime::new("'static", l.span());
        }
    }
    syn::visit_mut::VisitMut::visit_type_mut(&mut Statics, &mut ty);
    ty
}

/// `&T` for a parameter of type `T` or `&T` / `&mut T` (lifetime elided).
fn borrowed(ty: &Type) -> TokenStream {
    match ty {
        Type::Reference(r) => {
            let elem = &r.elem;
            quote!(&#elem)
        }
        other => quote!(&#other),
    }
}

pub(crate) fn expand(args: &Args, f: ItemFn, plan: Plan) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        modifiers,
        sig,
        block,
    } = f;
    // `default fn` (unstable specialization) is kept as written.
    let modifiers = modifiers.defaultness;
    let name = &sig.ident;
    let name_str = name.unraw().to_string();
    let key_prefix = &plan.key_prefix;
    let is_async = sig.asyncness.is_some();
    let ret = &plan.ret;
    let stored = &plan.stored;
    let alias = match &args.cache {
        Some(l) => quote!(::std::option::Option::Some(#l)),
        None => quote!(::std::option::Option::None),
    };
    let timeout = match &args.timeout {
        None => quote!(::tg_cache::Timeout::Default),
        Some(TimeoutArg::Named(id)) => {
            quote_spanned!(id.span()=> ::tg_cache::Timeout::from(::tg_cache::timeout::#id))
        }
        Some(TimeoutArg::Seconds(n, span)) => {
            quote_spanned!(*span=> ::tg_cache::Timeout::from(::std::time::Duration::from_secs(#n)))
        }
        Some(TimeoutArg::Expr(e)) => quote_spanned!(e.span()=> ::tg_cache::Timeout::from(#e)),
    };
    let timeout = match &args.jitter {
        Some((j, span)) => quote_spanned!(*span=> #timeout.jitter(#j)),
        None => timeout,
    };
    // Spanned on the return type, so that a type the cache cannot store is
    // reported there (and once) rather than on the attribute.
    let rs = stored.span();
    let policy = match plan.policy {
        Policy::Always => quote_spanned!(rs=> ::tg_cache::Always),
        Policy::OkOnly => quote_spanned!(rs=> ::tg_cache::OkOnly),
        Policy::SomeOnly => quote_spanned!(rs=> ::tg_cache::SomeOnly),
    };

    // Compile-time checks spanned on the user's tokens.
    // Key parameter types are checked by the key writer, spanned on them.
    let asserts = match &plan.policy_source {
        // `Always` because the return type does not read as a `Result` or an
        // `Option`: make sure it is not one behind an alias, where caching
        // every value would cache errors (the probe's inherent `kind`
        // methods win over the `ProbePlain` fallback).
        PolicySource::Syntax { probe: true } => {
            let rs = ret.span();
            quote_spanned!(rs=>
                ::tg_cache::__private::assert_cacheable::<#stored>();
                {
                    #[allow(unused_imports)]
                    use ::tg_cache::__private::ProbePlain as _;
                    ::tg_cache::__private::assert_plain(
                        ::tg_cache::__private::Probe::<#ret>::new().kind(),
                    );
                }
            )
        }
        PolicySource::Syntax { probe: false } => quote_spanned!(rs=>
            ::tg_cache::__private::assert_cacheable::<#stored>();
        ),
        PolicySource::Explicit => {
            let rs = ret.span();
            quote_spanned!(rs=>
                ::tg_cache::__private::assert_policy::<#policy, #ret>();
            )
        }
    };
    // What the single-flight hands to the callers waiting on a result it
    // does not store: a clone when the return type is `Clone`, else nothing
    // (they then compute it themselves).
    let share = quote!({
        #[allow(unused_imports)]
        use ::tg_cache::__private::{ShareClone as _, ShareNone as _};
        (&::tg_cache::__private::Share::<#ret>::new()).share()
    });

    let writer = key_writer(&plan, Write::Checked);
    let quiet_writer = key_writer(&plan, Write::Quiet);
    let sibling_key_string = key_string(&quiet_writer);
    // One copy of the key writer in the wrapper, used by the hit path and
    // by refreshes.
    let key_string = quote!({
        let mut __tg_owned = ::std::string::String::with_capacity(64);
        __tg_write_key(&mut __tg_owned);
        __tg_owned
    });
    // A signature that names a generic parameter of a surrounding impl
    // (which the attribute cannot see) would share one entry between the
    // impl's instantiations: a nested item cannot name it, so this fails
    // to compile, spanned on it (E0401), unless the key holds `Self`'s type.
    let impl_generic_check = if plan.key_has_self_type {
        quote!()
    } else {
        // Skipped parameters' types too: a `T` there varies the result as
        // much as one in a key parameter. (Not those that name the fn's own
        // generics or an `impl Trait`, which a nested item cannot name
        // either, and which are keyed or refused elsewhere.)
        let own: Vec<String> = sig
            .generics
            .params
            .iter()
            .filter_map(|g| match g {
                syn::GenericParam::Type(t) => Some(t.ident.to_string()),
                syn::GenericParam::Const(c) => Some(c.ident.to_string()),
                syn::GenericParam::Lifetime(_) => None,
            })
            .collect();
        let key_types: Vec<String> = plan
            .key_params
            .iter()
            .map(|p| p.ty.to_token_stream().to_string())
            .collect();
        let params = sig
            .inputs
            .iter()
            .filter_map(|a| match a {
                syn::FnArg::Typed(t) => Some((*t.ty).clone()),
                syn::FnArg::Receiver(_) => None,
            })
            .filter(|ty| {
                !key_types.contains(&ty.to_token_stream().to_string())
                    && !names_any(ty.to_token_stream(), &own)
            });
        let types = std::iter::once(ret.clone())
            .chain(params)
            .map(static_lifetimes);
        let checks = types.map(|ty| {
            let sp = ty.span();
            quote_spanned!(sp=> {
                #[allow(non_upper_case_globals, dead_code)]
                const ADD_self_type_EQ_true_TO_CACHE_FUNCTION_FOR_A_GENERIC_IMPL: ::core::marker::PhantomData<#ty> =
                    ::core::marker::PhantomData;
            })
        });
        quote!(#(#checks)*)
    };
    let path = quote!(::std::concat!(::std::module_path!(), "::", #name_str));

    let (body_fn, run, refresh, aw) = if is_async {
        (
            quote!(move || ::tg_cache::__private::run_body_async::<#ret, _>(async move #block)),
            quote!(__get_or_set_shared::<#policy, #ret, _, _>),
            quote!(__refresh::<#policy, #ret, _, _>),
            quote!(.await),
        )
    } else {
        (
            quote!(move || ::tg_cache::__private::run_body::<#ret, _>(move || -> #ret #block)),
            quote!(blocking().__get_or_set_shared::<#policy, #ret>),
            quote!(blocking().__refresh::<#policy, #ret>),
            quote!(),
        )
    };

    let wrapper = quote! {
        #(#attrs)*
        #vis #modifiers #sig {
            ::tg_cache::__private::inventory::submit! {
                ::tg_cache::CachedFunction {
                    key_prefix: #key_prefix,
                    path: #path,
                    file: ::std::file!(),
                    line: ::std::line!(),
                }
            }
            let _ = || { #asserts };
            #impl_generic_check
            static __TG_CACHE: ::std::sync::OnceLock<::std::option::Option<::tg_cache::__private::Resolved>> =
                ::std::sync::OnceLock::new();
            let __tg_cache = __TG_CACHE
                .get_or_init(|| ::tg_cache::__private::resolve(#alias, #key_prefix, #path))
                .as_ref();
            let __tg_mode = ::tg_cache::__private::current_mode();
            let __tg_write_key = |__tg_buf: &mut ::std::string::String| { #writer };
            let __tg_key: ::std::option::Option<::std::string::String> = match (__tg_cache, __tg_mode) {
                (::std::option::Option::Some(__tg_c), ::tg_cache::__private::CallMode::Normal) => {
                    match ::tg_cache::__private::local_hit::<#policy, #ret>(
                        __tg_c,
                        &__tg_write_key,
                    ) {
                        ::std::result::Result::Ok(__tg_hit) => return __tg_hit,
                        ::std::result::Result::Err(__tg_k) => ::std::option::Option::Some(__tg_k),
                    }
                }
                (::std::option::Option::Some(_), ::tg_cache::__private::CallMode::Refresh) => {
                    ::std::option::Option::Some(#key_string)
                }
                _ => ::std::option::Option::None,
            };
            let __tg_body = #body_fn;
            match (__tg_cache, __tg_key) {
                (::std::option::Option::Some(__tg_c), ::std::option::Option::Some(__tg_k))
                    if __tg_mode == ::tg_cache::__private::CallMode::Refresh =>
                {
                    __tg_c.cache.#refresh(&__tg_k, #timeout, __tg_body) #aw
                }
                (::std::option::Option::Some(__tg_c), ::std::option::Option::Some(__tg_k)) => {
                    __tg_c.cache.#run(&__tg_k, #timeout, #share, __tg_body) #aw
                }
                _ => __tg_body() #aw,
            }
        }
    };

    // Sibling helpers: same visibility, same lifetimes (and, for a generic
    // function, the same type and const parameters, which its key holds),
    // key values only.
    // (Without bounds: a key needs a type's name, not its traits.)
    let params: Vec<TokenStream> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Lifetime(l) => Some(quote!(#l)),
            GenericParam::Type(t) if plan.keyed_generics.contains(&t.ident) => {
                let id = &t.ident;
                Some(quote!(#id: ?::std::marker::Sized))
            }
            GenericParam::Const(c) if plan.keyed_generics.contains(&c.ident) => {
                let (id, ty) = (&c.ident, &c.ty);
                Some(quote!(const #id: #ty))
            }
            _ => None,
        })
        .collect();
    let generics = if params.is_empty() {
        quote!()
    } else {
        quote!(<#(#params),*>)
    };
    let where_clause = quote!();
    let self_param = if plan.key_uses_self {
        let recv = sig.inputs.iter().find_map(|a| match a {
            FnArg::Receiver(r) => Some(r.self_token),
            FnArg::Typed(_) => None,
        });
        quote!(&#recv,)
    } else {
        quote!()
    };
    let key_params = plan.key_params.iter().map(|p| {
        let id = &p.ident;
        let ty = borrowed(&p.ty);
        quote!(#id: #ty)
    });
    let key_params: Vec<TokenStream> = key_params.collect();
    let key_fn = format_ident!("{}_cache_key", name_str);
    let inv_fn = format_ident!("{}_invalidate", name_str);
    let inv_all_fn = format_ident!("{}_invalidate_all", name_str);
    let key_doc = format!(
        "The cache key [`{name_str}`] uses for these arguments (generated by `#[cache_function]`)."
    );
    let inv_doc = format!(
        "Removes the entry [`{name_str}`] cached for these arguments; `Ok(true)` if there was one (generated by `#[cache_function]`)."
    );
    let inv_all_doc = format!(
        "Invalidates every entry of [`{name_str}`] (all arguments) in O(1) (generated by `#[cache_function]`)."
    );
    let family = format!("tg:fn:{key_prefix}");
    let (asyncness, delete, invalidate_family) = if is_async {
        (
            quote!(async),
            quote!(__tg_c.delete(&__tg_key).await),
            quote!(__tg_c.invalidate_family(#family).await),
        )
    } else {
        (
            quote!(),
            quote!(__tg_c.blocking().delete(&__tg_key)),
            quote!(__tg_c.blocking().invalidate_family(#family)),
        )
    };
    let cache_fn = format_ident!("{}_cache", name_str);
    let family_fn = format_ident!("{}_key_family", name_str);
    let cache_doc = format!(
        "The cache [`{name_str}`] stores its entries in (generated by `#[cache_function]`)."
    );
    let family_doc =
        format!("The key family of [`{name_str}`]: `{family}` (generated by `#[cache_function]`).");

    quote! {
        #wrapper

        #[doc = #key_doc]
        #[allow(dead_code, clippy::needless_lifetimes)]
        #vis fn #key_fn #generics (#self_param #(#key_params),*) -> ::std::string::String #where_clause {
            #sibling_key_string
        }

        #[doc = #inv_doc]
        #[allow(dead_code, clippy::needless_lifetimes)]
        #vis #asyncness fn #inv_fn #generics (#self_param #(#key_params),*)
            -> ::std::result::Result<bool, ::tg_cache::Error> #where_clause
        {
            let __tg_key = #sibling_key_string;
            let __tg_c = ::tg_cache::__private::cache_for(#alias)?;
            #delete
        }

        #[doc = #inv_all_doc]
        #[allow(dead_code)]
        #vis #asyncness fn #inv_all_fn () -> ::std::result::Result<(), ::tg_cache::Error> {
            let __tg_c = ::tg_cache::__private::cache_for(#alias)?;
            #invalidate_family
        }

        #[doc = #cache_doc]
        #[allow(dead_code)]
        #vis fn #cache_fn () -> ::std::result::Result<&'static ::tg_cache::Cache, ::tg_cache::Error> {
            ::tg_cache::__private::cache_for(#alias)
        }

        #[doc = #family_doc]
        #[allow(dead_code)]
        #vis const fn #family_fn () -> &'static str {
            #family
        }
    }
}

/// Whether `tokens` hold `impl` or one of `idents` (a fn's own generics).
fn names_any(tokens: TokenStream, idents: &[String]) -> bool {
    tokens.into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => i == "impl" || idents.iter().any(|n| i == n),
        proc_macro2::TokenTree::Group(g) => names_any(g.stream(), idents),
        _ => false,
    })
}
