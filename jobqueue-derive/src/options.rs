//! The keys of `#[job(...)]`, parsed and checked.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{LitInt, LitStr};

use crate::{int_value, string_value};

const KEYS: &str = "queue, idempotent, external, bulk, retries, timeout, sensitive, name, \
                    collapsible, unique, budget, concurrency, rate";
const DEFAULT_UNIQUE_TTL_SECS: u64 = 3600;

#[derive(Default)]
pub(crate) struct JobAttr {
    pub queue: Option<LitStr>,
    pub name: Option<LitStr>,
    pub idempotent: Option<Span>,
    pub external: Option<Span>,
    pub bulk: Option<Span>,
    pub timeout_secs: Option<u64>,
    pub sensitive: Option<(LitStr, Vec<String>)>,
    pub retries: Option<(Span, LitInt)>,
    pub collapsible: Option<Collapse>,
    pub unique: Option<Unique>,
    pub budget: Option<Budget>,
    pub concurrency: Option<Limit>,
    pub rate: Option<Limit>,
}

/// `concurrency(limit = 2, key = "a,b")` or `rate(limit = 100, per = "1m", key = "a,b")`.
pub(crate) struct Limit {
    pub limit: u32,
    pub per_ms: Option<u64>,
    pub key: Vec<String>,
    pub key_lit: Option<LitStr>,
}

/// `budget(alloc = "100MB", retained = "10MB", time = "1s")`: bytes and milliseconds.
#[derive(Default)]
pub(crate) struct Budget {
    pub alloc: Option<u64>,
    pub retained: Option<u64>,
    pub time_ms: Option<u64>,
}

pub(crate) struct Collapse {
    pub span: Span,
    pub key: Vec<String>,
    pub key_lit: Option<LitStr>,
}

#[derive(Clone)]
pub(crate) struct Unique {
    pub lock: Lock,
    pub ttl_secs: u64,
    pub on_conflict: Conflict,
    pub key: Vec<String>,
    pub key_lit: Option<LitStr>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    UntilExecuting,
    UntilExecuted,
    UntilExpired,
    WhileExecuting,
    UntilAndWhileExecuting,
}

impl Lock {
    const NAMES: [(&'static str, Lock); 5] = [
        ("until_executing", Lock::UntilExecuting),
        ("until_executed", Lock::UntilExecuted),
        ("until_expired", Lock::UntilExpired),
        ("while_executing", Lock::WhileExecuting),
        ("until_and_while_executing", Lock::UntilAndWhileExecuting),
    ];

    pub(crate) fn variant(self) -> &'static str {
        match self {
            Lock::UntilExecuting => "UntilExecuting",
            Lock::UntilExecuted => "UntilExecuted",
            Lock::UntilExpired => "UntilExpired",
            Lock::WhileExecuting => "WhileExecuting",
            Lock::UntilAndWhileExecuting => "UntilAndWhileExecuting",
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Conflict {
    Reject,
    Replace,
    Reschedule,
    Log,
}

impl Conflict {
    const NAMES: [(&'static str, Conflict); 4] = [
        ("reject", Conflict::Reject),
        ("replace", Conflict::Replace),
        ("reschedule", Conflict::Reschedule),
        ("log", Conflict::Log),
    ];

    pub(crate) fn variant(self) -> &'static str {
        match self {
            Conflict::Reject => "Reject",
            Conflict::Replace => "Replace",
            Conflict::Reschedule => "Reschedule",
            Conflict::Log => "Log",
        }
    }
}

fn duplicate(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Error {
    meta.error(format!("`{key}` is given twice; keep one"))
}

fn flag(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<Span> {
    if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!(
            "`{key}` is a flag and takes no value: write `{key}`, or leave it out"
        )));
    }
    Ok(meta
        .path
        .get_ident()
        .map_or_else(Span::call_site, |i| i.span()))
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta<'_>,
    key: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate(meta, key));
    }
    *slot = Some(value);
    Ok(())
}

/// `"a, b"` as field names.
fn key_fields(lit: &LitStr) -> Vec<String> {
    lit.value()
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

fn named<T: Copy>(lit: &LitStr, names: &[(&str, T)], key: &str) -> syn::Result<T> {
    let value = lit.value();
    names
        .iter()
        .find(|(n, _)| *n == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let choices: Vec<_> = names.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            syn::Error::new(
                lit.span(),
                format!(
                    "`{key}` must be one of {}, not \"{value}\"",
                    choices.join(", ")
                ),
            )
        })
}

/// `"30s"`, `"10m"`, `"2h"`, `"1d"` as seconds.
fn duration_secs(lit: &LitStr, key: &str) -> syn::Result<u64> {
    const UNITS: [(&str, u64); 4] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];
    quantity(lit, &UNITS).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}` must be a positive number with a unit s, m, h or d, as in \"10m\"; not \"{}\"",
                lit.value()
            ),
        )
    })
}

/// A duration in milliseconds: `"500ms"`, `"1s"`, `"2m"`.
fn duration_ms(lit: &LitStr, key: &str) -> syn::Result<u64> {
    const UNITS: [(&str, u64); 5] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    quantity(lit, &UNITS).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}` must be a positive number with a unit ms, s, m, h or d, as in \"1s\"; not \"{}\"",
                lit.value()
            ),
        )
    })
}

/// A size in bytes: `"512KB"`, `"100MB"`, `"1GiB"` (KB, MB, GB count in thousands; KiB, MiB,
/// GiB in 1024s).
fn bytes(lit: &LitStr, key: &str) -> syn::Result<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
    ];
    quantity(lit, &UNITS).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key}` must be a positive number of bytes with a unit B, KB, MB, GB, KiB, MiB or GiB, as in \"100MB\"; not \"{}\"",
                lit.value()
            ),
        )
    })
}

/// A positive whole number followed by one of `units`, scaled by it.
fn quantity(lit: &LitStr, units: &[(&str, u64)]) -> Option<u64> {
    let text = lit.value();
    let text = text.trim();
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let (_, scale) = units.iter().find(|(name, _)| *name == unit.trim())?;
    number.checked_mul(*scale).filter(|n| *n > 0)
}

impl JobAttr {
    pub(crate) fn parse_key(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match key.as_str() {
            "queue" => {
                let lit = string_value(meta, "queue", "emails")?;
                let value = lit.value();
                if value.is_empty() || value.chars().any(char::is_whitespace) {
                    return Err(syn::Error::new(
                        lit.span(),
                        "a queue name must be non-empty with no white space, as in \"emails\" or \"reports.daily\"",
                    ));
                }
                set_once(&mut self.queue, lit, meta, "queue")
            }
            "name" => {
                let lit = string_value(meta, "name", "Billing::ChargeJob")?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
                }
                set_once(&mut self.name, lit, meta, "name")
            }
            "idempotent" => {
                let span = flag(meta, "idempotent")?;
                set_once(&mut self.idempotent, span, meta, "idempotent")
            }
            "external" => {
                let span = flag(meta, "external")?;
                set_once(&mut self.external, span, meta, "external")
            }
            "bulk" => {
                let span = flag(meta, "bulk")?;
                set_once(&mut self.bulk, span, meta, "bulk")
            }
            "sensitive" => {
                let lit = string_value(meta, "sensitive", "password,card_number")?;
                let fields = key_fields(&lit);
                set_once(&mut self.sensitive, (lit, fields), meta, "sensitive")
            }
            "timeout" => {
                let lit = string_value(meta, "timeout", "30s")?;
                let secs = duration_secs(&lit, "timeout")?;
                set_once(&mut self.timeout_secs, secs, meta, "timeout")
            }
            "retries" => {
                let span = meta
                    .path
                    .get_ident()
                    .map_or_else(Span::call_site, |i| i.span());
                let (lit, _) = int_value(meta, "retries")?;
                set_once(&mut self.retries, (span, lit), meta, "retries")
            }
            "collapsible" => {
                let span = meta
                    .path
                    .get_ident()
                    .map_or_else(Span::call_site, |i| i.span());
                let mut collapse = Collapse {
                    span,
                    key: Vec::new(),
                    key_lit: None,
                };
                if meta.input.peek(syn::token::Paren) {
                    meta.parse_nested_meta(|inner| {
                        if inner.path.is_ident("key") {
                            let lit = string_value(&inner, "key", "account_id,kind")?;
                            collapse.key = key_fields(&lit);
                            collapse.key_lit = Some(lit);
                            Ok(())
                        } else {
                            Err(inner.error("unknown key in `collapsible(...)`; the only key is `key = \"field,...\"`"))
                        }
                    })?;
                } else {
                    flag(meta, "collapsible")?;
                }
                set_once(&mut self.collapsible, collapse, meta, "collapsible")
            }
            "budget" => {
                if !meta.input.peek(syn::token::Paren) {
                    return Err(meta.error(
                        "`budget` takes limits: write `budget(alloc = \"100MB\", retained = \"10MB\", time = \"1s\")`",
                    ));
                }
                let mut budget = Budget::default();
                meta.parse_nested_meta(|inner| {
                    let inner_key = inner
                        .path
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    match inner_key.as_str() {
                        "alloc" => {
                            let lit = string_value(&inner, "alloc", "100MB")?;
                            budget.alloc = Some(bytes(&lit, "alloc")?);
                        }
                        "retained" => {
                            let lit = string_value(&inner, "retained", "10MB")?;
                            budget.retained = Some(bytes(&lit, "retained")?);
                        }
                        "time" => {
                            let lit = string_value(&inner, "time", "1s")?;
                            budget.time_ms = Some(duration_ms(&lit, "time")?);
                        }
                        _ => {
                            return Err(inner.error(
                                "unknown key in `budget(...)`; expected alloc, retained or time",
                            ))
                        }
                    }
                    Ok(())
                })?;
                set_once(&mut self.budget, budget, meta, "budget")
            }
            "concurrency" | "rate" => {
                let rate = key == "rate";
                let example = if rate {
                    "`rate(limit = 100, per = \"1m\", key = \"account_id\")`"
                } else {
                    "`concurrency(limit = 2, key = \"shop_id\")`"
                };
                if !meta.input.peek(syn::token::Paren) {
                    return Err(meta.error(format!("`{key}` takes a limit: write {example}")));
                }
                let mut limit = Limit {
                    limit: 0,
                    per_ms: None,
                    key: Vec::new(),
                    key_lit: None,
                };
                meta.parse_nested_meta(|inner| {
                    let inner_key = inner
                        .path
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    match inner_key.as_str() {
                        "limit" => {
                            let (lit, n) = int_value(&inner, "limit")?;
                            if n == 0 {
                                return Err(syn::Error::new(
                                    lit.span(),
                                    "`limit` must be at least 1",
                                ));
                            }
                            limit.limit = n;
                        }
                        "per" if rate => {
                            let lit = string_value(&inner, "per", "1m")?;
                            limit.per_ms = Some(duration_ms(&lit, "per")?);
                        }
                        "key" => {
                            let lit = string_value(&inner, "key", "account_id")?;
                            limit.key = key_fields(&lit);
                            limit.key_lit = Some(lit);
                        }
                        _ => {
                            let expected = if rate {
                                "limit, per or key"
                            } else {
                                "limit or key"
                            };
                            return Err(inner.error(format!(
                                "unknown key in `{key}(...)`; expected {expected}"
                            )));
                        }
                    }
                    Ok(())
                })?;
                if limit.limit == 0 {
                    return Err(meta.error(format!("`{key}` needs a `limit`: write {example}")));
                }
                if rate && limit.per_ms.is_none() {
                    return Err(meta.error(format!("`rate` needs a period `per`: write {example}")));
                }
                let slot = if rate {
                    &mut self.rate
                } else {
                    &mut self.concurrency
                };
                set_once(slot, limit, meta, &key)
            }
            "unique" => {
                let mut unique = Unique {
                    lock: Lock::UntilExecuted,
                    ttl_secs: DEFAULT_UNIQUE_TTL_SECS,
                    on_conflict: Conflict::Reject,
                    key: Vec::new(),
                    key_lit: None,
                };
                let mut conflict_given = false;
                if meta.input.peek(syn::token::Paren) {
                    meta.parse_nested_meta(|inner| {
                        let inner_key = inner.path.get_ident().map(ToString::to_string).unwrap_or_default();
                        match inner_key.as_str() {
                            "lock" => {
                                let lit = string_value(&inner, "lock", "until_executed")?;
                                unique.lock = named(&lit, &Lock::NAMES, "lock")?;
                            }
                            "ttl" => {
                                let lit = string_value(&inner, "ttl", "10m")?;
                                unique.ttl_secs = duration_secs(&lit, "ttl")?;
                            }
                            "on_conflict" => {
                                let lit = string_value(&inner, "on_conflict", "reject")?;
                                unique.on_conflict = named(&lit, &Conflict::NAMES, "on_conflict")?;
                                conflict_given = true;
                            }
                            "key" => {
                                let lit = string_value(&inner, "key", "account_id,kind")?;
                                unique.key = key_fields(&lit);
                                unique.key_lit = Some(lit);
                            }
                            _ => return Err(inner.error(
                                "unknown key in `unique(...)`; expected lock, ttl, on_conflict or key",
                            )),
                        }
                        Ok(())
                    })?;
                } else {
                    flag(meta, "unique")?;
                }
                // A job waiting for a running twin should run later, not be refused.
                if !conflict_given && unique.lock == Lock::WhileExecuting {
                    unique.on_conflict = Conflict::Reschedule;
                }
                set_once(&mut self.unique, unique, meta, "unique")
            }
            _ => Err(meta.error(format!(
                "unknown key `{}` in #[job(...)]; expected one of: {KEYS}",
                if key.is_empty() { "?".to_owned() } else { key }
            ))),
        }
    }

    /// Checks the combination of keys and that named key fields exist.
    pub(crate) fn check(&self, fields: Option<&[String]>) -> syn::Result<()> {
        if let (Some((span, _)), None) = (&self.retries, &self.idempotent) {
            return Err(syn::Error::new(
                *span,
                "`retries` needs `idempotent`: re-running a job that is not idempotent can \
                 leave state inconsistent. Add `idempotent` if running it twice is safe; \
                 otherwise remove `retries`",
            ));
        }
        let named = [
            self.collapsible
                .as_ref()
                .and_then(|c| c.key_lit.as_ref().map(|l| ("key", l, &c.key))),
            self.unique
                .as_ref()
                .and_then(|u| u.key_lit.as_ref().map(|l| ("key", l, &u.key))),
            self.sensitive
                .as_ref()
                .map(|(l, names)| ("sensitive", l, names)),
            self.concurrency
                .as_ref()
                .and_then(|c| c.key_lit.as_ref().map(|l| ("key", l, &c.key))),
            self.rate
                .as_ref()
                .and_then(|r| r.key_lit.as_ref().map(|l| ("key", l, &r.key))),
        ];
        for (what, lit, names) in named.into_iter().flatten() {
            let Some(fields) = fields else {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("`{what}` names fields, so it needs a struct with named fields"),
                ));
            };
            if names.is_empty() {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "`{what}` names no field; list fields as \"a,b\" or leave `{what}` out"
                    ),
                ));
            }
            if let Some(missing) = names.iter().find(|k| !fields.contains(k)) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "`{what}` names `{missing}`, which is not a field of this struct (fields: {})",
                        fields.join(", ")
                    ),
                ));
            }
        }
        if let Some(collapse) = &self.collapsible {
            if self.unique.is_some() {
                return Err(syn::Error::new(
                    collapse.span,
                    "a job is either `collapsible` (the newest one runs) or `unique` (the first one runs), not both",
                ));
            }
        }
        Ok(())
    }

    /// The uniqueness lock: the one asked for, or, for an external job that is not
    /// idempotent, a while-executing lock so two copies never call out at once.
    pub(crate) fn effective_unique(&self) -> Option<Unique> {
        self.unique.clone().or_else(|| {
            (self.external.is_some() && self.idempotent.is_none()).then_some(Unique {
                lock: Lock::WhileExecuting,
                ttl_secs: DEFAULT_UNIQUE_TTL_SECS,
                on_conflict: Conflict::Reschedule,
                key: Vec::new(),
                key_lit: None,
            })
        })
    }
}
