//! `#[derive(Job)]`: reads `#[job(...)]` and writes the `jobqueue::Job` impl.
//!
//! Every mistake in the attribute is a compile error pointing at the attribute itself and
//! saying what to write instead.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitInt, LitStr};

mod options;

use options::{Collapse, JobAttr, Limit, Unique};

/// Implements `jobqueue::Job` from a `#[job(...)]` attribute. See the `jobqueue` crate.
#[proc_macro_derive(Job, attributes(job))]
pub fn derive_job(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "a job cannot be generic: its class name on the wire must name one type; \
             write one job struct per concrete type",
        ));
    }
    let fields = match &input.data {
        Data::Struct(data) => field_names(&data.fields),
        Data::Enum(data) => return Err(not_a_struct(data.enum_token.span)),
        Data::Union(data) => return Err(not_a_struct(data.union_token.span)),
    };

    let mut attr = JobAttr::default();
    for a in input.attrs.iter().filter(|a| a.path().is_ident("job")) {
        a.parse_nested_meta(|meta| attr.parse_key(&meta))?;
    }
    attr.check(fields.as_deref())?;

    let name = attr
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), LitStr::value);
    let queue = attr
        .queue
        .as_ref()
        .map_or_else(|| "default".to_owned(), LitStr::value);
    let idempotent = attr.idempotent.is_some();
    let external = attr.external.is_some();
    let bulk = attr.bulk.is_some();
    let sensitive = key_tokens(
        attr.sensitive
            .as_ref()
            .map_or(&[][..], |(_, fields)| fields),
    );
    let timeout = match attr.timeout_secs {
        Some(secs) => {
            quote!(::core::option::Option::Some(::core::time::Duration::from_secs(#secs)))
        }
        None => quote!(::core::option::Option::None),
    };
    let retries = match &attr.retries {
        Some((_, n)) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let collapse = match &attr.collapsible {
        Some(Collapse { key, .. }) => {
            let key = key_tokens(key);
            quote!(::core::option::Option::Some(::jobqueue::CollapseSpec { key: #key }))
        }
        None => quote!(::core::option::Option::None),
    };
    let unique = match attr.effective_unique() {
        Some(Unique {
            lock,
            ttl_secs,
            on_conflict,
            key,
            ..
        }) => {
            let lock = syn::Ident::new(lock.variant(), Span::call_site());
            let on_conflict = syn::Ident::new(on_conflict.variant(), Span::call_site());
            let key = key_tokens(&key);
            quote!(::core::option::Option::Some(::jobqueue::UniqueSpec {
                lock: ::jobqueue::UniqueLock::#lock,
                ttl: ::core::time::Duration::from_secs(#ttl_secs),
                on_conflict: ::jobqueue::OnConflict::#on_conflict,
                key: #key,
            }))
        }
        None => quote!(::core::option::Option::None),
    };

    let budget = {
        let budget = attr.budget.unwrap_or_default();
        let bytes = |n: Option<u64>| match n {
            Some(n) => quote!(::core::option::Option::Some(#n)),
            None => quote!(::core::option::Option::None),
        };
        let (alloc, retained) = (bytes(budget.alloc), bytes(budget.retained));
        let time = match budget.time_ms {
            Some(ms) => {
                quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms)))
            }
            None => quote!(::core::option::Option::None),
        };
        quote!(::jobqueue::Budget { alloc: #alloc, retained: #retained, time: #time })
    };

    let concurrency = match &attr.concurrency {
        Some(Limit { limit, key, .. }) => {
            let key = key_tokens(key);
            quote!(::core::option::Option::Some(::jobqueue::ConcurrencyLimit { limit: #limit, key: #key }))
        }
        None => quote!(::core::option::Option::None),
    };
    let rate = match &attr.rate {
        Some(Limit {
            limit,
            per_ms: Some(per_ms),
            key,
            ..
        }) => {
            let key = key_tokens(key);
            quote!(::core::option::Option::Some(::jobqueue::RateLimit {
                limit: #limit,
                per: ::core::time::Duration::from_millis(#per_ms),
                key: #key,
            }))
        }
        _ => quote!(::core::option::Option::None),
    };

    Ok(quote! {
        #[automatically_derived]
        impl ::jobqueue::Job for #ident {
            const NAME: &'static str = #name;
            const OPTIONS: ::jobqueue::JobOptions = ::jobqueue::JobOptions {
                queue: #queue,
                idempotent: #idempotent,
                external: #external,
                bulk: #bulk,
                timeout: #timeout,
                sensitive: #sensitive,
                retry: ::jobqueue::RetryPolicy::derive(#idempotent, #external, #retries),
                collapse: #collapse,
                unique: #unique,
                budget: #budget,
                concurrency: #concurrency,
                rate: #rate,
            };
        }
    })
}

fn not_a_struct(span: Span) -> syn::Error {
    syn::Error::new(
        span,
        "#[derive(Job)] works on structs: a job is a plain struct of its arguments",
    )
}

/// The named fields of a struct; `None` for tuple and unit structs.
fn field_names(fields: &Fields) -> Option<Vec<String>> {
    match fields {
        Fields::Named(named) => Some(
            named
                .named
                .iter()
                .filter_map(|f| f.ident.as_ref().map(ToString::to_string))
                .collect(),
        ),
        _ => None,
    }
}

fn key_tokens(key: &[String]) -> TokenStream2 {
    quote!(&[#(#key),*])
}

/// A string value: `key = "..."`.
fn string_value(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> syn::Result<LitStr> {
    let value = meta.value().map_err(|_| {
        meta.error(format!(
            "`{key}` takes a string value: write `{key} = \"{example}\"`"
        ))
    })?;
    value.parse::<LitStr>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("`{key}` takes a string value: write `{key} = \"{example}\"`"),
        )
    })
}

/// A whole-number value: `key = N`.
fn int_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<(LitInt, u32)> {
    let message = format!("`{key}` takes a whole number: write `{key} = 3`");
    let value = meta.value().map_err(|_| meta.error(&message))?;
    let lit = value
        .parse::<LitInt>()
        .map_err(|e| syn::Error::new(e.span(), &message))?;
    let n = lit
        .base10_parse::<u32>()
        .map_err(|e| syn::Error::new(e.span(), &message))?;
    Ok((lit, n))
}
