//! Property tests of the Redis scripts (`jobqueue/src/backend/redis/lua/*.lua`) against what
//! a foreign producer can write: payloads pushed straight into a real Redis (and a real
//! Redis Cluster) with `LPUSH` and `ZADD`, then taken through the scripts by the library's
//! own worker and broker calls (fetch, settle and acknowledge, take due jobs, unpark jobs
//! set aside by per-key limits, remove, forget, batch add and done).
//!
//! - `every_foreign_payload_on_redis_*` and `every_foreign_payload_on_a_cluster_*`: a
//!   worker takes generated payloads (bytes that are not UTF-8, JSON that is not a job,
//!   fields of the wrong type, numbers JSON does not have, limits headers in and out of
//!   range wherever a producer may write them, huge and negative times) and every one is
//!   accounted for: it ran, or it is in the dead or retry set with a named error, or it
//!   stays in the sorted set it was put in; nothing is left in a queue, an in-flight list
//!   or set aside; no concurrency slot is left held, and every rate key left has an expiry.
//! - `memory_and_redis_*`: the same generated steps on the in-memory broker and on Redis
//!   give the same answers and leave the same jobs in queues, sets, in-flight lists and
//!   set-aside lists after every step.
//! - The tests after them pin cases on both backends, found by the properties. Those
//!   marked `#[ignore]` are differences between the backends still open, each named in its
//!   attribute (run them with `-- --ignored`); the generators above leave their shapes out
//!   so that the properties look past them.
//!
//! Cases are few per property (a worker case starts and stops a worker on a real server):
//! the counts are the constants below, whatever `PROPTEST_CASES` says. A failure is shrunk
//! for at most a minute and not written to a file.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jobqueue::backend::{
    BatchCallbacks, BatchStatus, Fetched, LimitsRead, Location, Move, Push, Settle, Source, Span,
};
use jobqueue::job::LimitTag;
use jobqueue::retry::error_class;
use jobqueue::{Broker, ClusterBroker, ClusterConfig, RedisBroker, RedisConfig, SortedSet};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::heartbeat::beat;
use support::jobs::{self, Note, ShopJob};
use support::{eventually, start, Backend, RedisCluster, RedisServer};

/// How long a case may wait for its jobs: a guard against hangs.
const LIMIT: Duration = Duration::from_secs(30);
/// The lease of a fetch that applies limits.
const LEASE: Duration = Duration::from_secs(60);
/// Cases of the worker on one Redis (each starts and stops a worker).
const WORKER_CASES: u32 = 48;
/// Cases of the worker on a cluster.
const CLUSTER_CASES: u32 = 24;
/// Cases of the model (each up to 40 steps on both brokers).
const MODEL_CASES: u32 = 48;
/// How the Redis broker hands on a payload that is not UTF-8: this marker, then its bytes
/// in hex (`backend/redis/codec.rs`); the dead set keeps that text as the argument.
const RAW_MARKER: &str = "\u{0}jobqueue-raw-bytes:";

// ---------------------------------------------------------------------------------------
// Running properties: a runtime and a namespace per case, so that a failed case (its
// worker left running) leaves nothing behind for the next or for shrinking.

static CASE: AtomicUsize = AtomicUsize::new(0);

/// A namespace no other case uses.
fn namespace() -> String {
    format!("case{}", CASE.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `test` on `cases` values of `strategy`, shrinking a failure for at most a minute;
/// failures are not persisted (no file is written beside the tests).
fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON string.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// A payload as the library reads it from Redis: its text, or the marker and its hex.
fn as_read(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("{RAW_MARKER}{}", hex(bytes)),
    }
}

// ---------------------------------------------------------------------------------------
// Foreign payloads: what a producer other than this library may write, and where each
// must end.

/// The order a producer writes a job's fields in.
#[derive(Clone, Debug)]
enum Layout {
    /// The header first (`collapse`, `limits`, `jid`), as the client writes it.
    Fixed,
    /// Keys sorted (Python's `sort_keys`, Go's maps, `jq -S`): `args` first.
    Sorted,
    /// Any order, by these weights.
    Shuffled(Vec<u8>),
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        Just(Layout::Fixed),
        Just(Layout::Sorted),
        prop::collection::vec(any::<u8>(), 12).prop_map(Layout::Shuffled),
    ]
}

/// A layout that never begins with the header, so that a due job passes through the
/// process (which keeps its bytes as they are) rather than straight to its queue.
fn unfixed_layout() -> impl Strategy<Value = Layout> {
    Just(Layout::Sorted)
}

/// A JSON object of `fields` (name, value as raw JSON text) in the order `layout` gives.
fn arrange(layout: &Layout, fields: Vec<(&str, String)>) -> String {
    let header = ["collapse", "limits", "jid"];
    let mut fields: Vec<(usize, (&str, String))> = fields.into_iter().enumerate().collect();
    match layout {
        Layout::Fixed => fields.sort_by_key(|(i, (name, _))| {
            let at = header
                .iter()
                .position(|h| h == name)
                .unwrap_or(header.len());
            (at, *i)
        }),
        Layout::Sorted => fields.sort_by(|a, b| a.1 .0.cmp(b.1 .0)),
        Layout::Shuffled(weights) => {
            fields.sort_by_key(|(i, _)| (weights[i % weights.len()], *i));
        }
    }
    let body: Vec<String> = fields
        .into_iter()
        .map(|(_, (name, value))| format!("{}:{value}", js(name)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Limits text from a grammar of words in range and out of it, each key distinct (a key
/// named twice is invalid, the subject of `a_header_naming_one_key_twice_*`): per limit its spec and key, and
/// the separator.
#[derive(Clone, Debug)]
struct LimitsText {
    limits: Vec<(String, &'static str)>,
    separator: &'static str,
}

impl LimitsText {
    /// The text, its keys made distinct by `salt` and their place.
    fn render(&self, salt: &str) -> String {
        let mut words = Vec::new();
        for (n, (spec, key)) in self.limits.iter().enumerate() {
            let key = match *key {
                "LONG" => "k".repeat(513),
                "" => String::new(),
                key => format!("{key}{salt}{n}"),
            };
            words.push(spec.clone());
            words.push(key);
        }
        words.join(self.separator)
    }
}

/// Mostly `good`, sometimes `bad`.
fn mostly(
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> BoxedStrategy<&'static str> {
    prop_oneof![5 => prop::sample::select(good), 1 => prop::sample::select(bad)].boxed()
}

fn limits_text() -> impl Strategy<Value = LimitsText> {
    let count = || {
        mostly(
            &["1", "2", "7", "1000000", "007"],
            &[
                "1000001",
                "0",
                "99999999999999999999",
                "-1",
                "+1",
                "1e3",
                "",
                " 1",
            ],
        )
    };
    let period = mostly(
        &["100", "0.5", "5.", "316224000", "86400.25"],
        &[
            "316224001",
            "316224000.0000001",
            "0",
            ".5",
            "1e300",
            "nan",
            "inf",
            "0x10",
            "-1",
            "",
            "1/2",
        ],
    );
    let spec = prop_oneof![
        3 => count().prop_map(|n| format!("c{n}")),
        3 => (count(), period).prop_map(|(n, per)| format!("r{n}/{per}")),
        1 => (prop::sample::select(&["x", "C", "R", "", "cr", "c/"][..]), count())
            .prop_map(|(kind, n)| format!("{kind}{n}")),
    ];
    let key = mostly(
        &["k", "a@b%c,d.e_f-g:h", "K.9"],
        &["k/x", "ключ", "LONG", "k\"q", "k\\", "", "k\u{0}"],
    );
    let separator = mostly(&[" "], &["  ", "\t", " \u{b}", "\n"]);
    (prop::collection::vec((spec, key), 1..=5), separator)
        .prop_map(|(limits, separator)| LimitsText { limits, separator })
}

/// JSON that is not a job.
const NOT_JOBS: &[&str] = &[
    "null",
    "[1,2,3]",
    "\"job\"",
    "42",
    "true",
    "{}",
    "",
    "[\"limits\",\"collapse\"]",
    "{\"class\":\"Note\",\"queue\":\"default\"}",
    "[{\"limits\":\"c1 k\",\"jid\":\"x\"}]",
    "{\"limits\":\"c1 k\"}",
    "{\"collapse\":\"x\",\"limits\":\"r1/1e300 x\"}",
];

/// Fields of a job with a value of the wrong type.
const WRONG_TYPES: &[(&str, &str)] = &[
    ("jid", "5"),
    ("jid", "null"),
    ("jid", "[]"),
    ("class", "5"),
    ("class", "{}"),
    ("queue", "[\"default\"]"),
    ("args", "{}"),
    ("args", "\"[]\""),
    ("args", "null"),
    ("retry", "\"x\""),
    ("retry", "[]"),
    ("limits", "5"),
    ("limits", "[\"c1 k\"]"),
    ("collapse", "7"),
    ("retry_count", "\"x\""),
    ("retry_count", "1.5"),
    ("error_class", "5"),
    ("interrupted_count", "-1"),
    ("recovered_count", "1e10"),
];

/// Numbers JSON does not have, or that serde_json cannot hold.
const NOT_NUMBERS: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    "0x1F",
    "1e400",
    "-1e400",
    "01",
    ".5",
    "+1",
    "1.",
];

/// Arguments that do not fit `Note`.
const BAD_ARGS: &[&str] = &[
    "[]",
    "[1]",
    "[null]",
    "[{\"token\":5,\"label\":\"x\"}]",
    "[{\"token\":\"t\"}]",
    "[{\"token\":\"t\",\"label\":18446744073709551616}]",
    "[{\"token\":\"t\",\"label\":[]}]",
];

/// Times a producer may write, each read as some time or none: the job runs.
const ODD_TIMES: &[&str] = &[
    "1e300",
    "-1e300",
    "\"NaN\"",
    "\"inf\"",
    "\"-Infinity\"",
    "\"1e999\"",
    "-5",
    "0",
    "1e11",
    "9007199254740993",
    "\"\"",
    "\"soon\"",
    "true",
    "[]",
    "{}",
    "null",
    "1.7976931348623157e308",
];

/// One foreign payload's shape.
#[derive(Clone, Debug)]
enum Shape {
    /// Bytes that are not UTF-8, after a header the fetch script reads (naming a rate
    /// limit) or after none.
    NotUtf8 {
        junk: Vec<u8>,
        at: Index,
        header: bool,
    },
    /// A job's payload cut short, with a concurrency limit in its header.
    Truncated { layout: Layout, keep: Index },
    /// JSON that is not a job.
    NotAJob(&'static str),
    /// A job with a field of the wrong type.
    WrongType {
        field: (&'static str, &'static str),
        layout: Layout,
    },
    /// Nesting deeper than serde_json reads.
    Deep { depth: usize, layout: Layout },
    /// A number JSON does not have, beside (or not) a rate limit the fetch script may read.
    NotANumber {
        token: &'static str,
        rate: bool,
        layout: Layout,
    },
    /// Arguments that do not fit `Note`.
    BadArgs { args: &'static str, layout: Layout },
    /// Limits text from the grammar: the job runs when it is in range, and dies otherwise.
    Limits { text: LimitsText, layout: Layout },
    /// Limits in range and no jid.
    LimitsWithoutJid { layout: Layout },
    /// Limits in range and an empty jid.
    LimitsWithEmptyJid { layout: Layout },
    /// A class no worker runs.
    UnknownClass { layout: Layout },
    /// A `Note` that runs: in any layout; with `limits` text in its argument; with odd
    /// times.
    Good {
        layout: Layout,
        limits: Option<&'static str>,
        smuggled: bool,
        times: Option<(&'static str, &'static str)>,
    },
}

/// Where a foreign producer puts a payload.
#[derive(Clone, Debug)]
enum Place {
    Queue,
    /// A sorted set at a score (`NOW` a second ago): the scheduler takes a due job; a job
    /// at `+inf` or `1e300` stays.
    Set(SortedSet, &'static str),
}

const SCORES: &[&str] = &["-inf", "-1e300", "-1", "0", "NOW", "+inf", "1e300"];

impl Place {
    fn stays(&self) -> Option<SortedSet> {
        match self {
            Place::Set(set, score) if ["+inf", "1e300"].contains(score) => Some(*set),
            _ => None,
        }
    }
}

/// How a payload's entry is found in a sorted set.
#[derive(Clone, Debug, PartialEq)]
enum Found {
    /// Wrapped in a job of the library's, its text (as read) the argument.
    Wrapped(String),
    /// Its own entry, by jid.
    Jid(String),
    /// Its own entry, by its argument's label (a job with an empty jid).
    Label(String),
    /// Exactly these bytes (a job that stays where it was put).
    Bytes(Vec<u8>),
}

/// Where a payload must end.
#[derive(Clone, Debug, PartialEq)]
enum Fate {
    /// It ran once: its label was recorded.
    Runs(String),
    /// In the dead set, with this error class and a message holding this text.
    Dead(&'static str, &'static str, Found),
    /// In the retry set, with this error class.
    Retry(&'static str, Found),
    /// Still in the set it was put in.
    Stays(SortedSet, Found),
}

/// A payload pushed by a foreign producer, and its fate.
#[derive(Clone, Debug)]
struct Foreign {
    bytes: Vec<u8>,
    place: Place,
    fate: Fate,
}

/// `Note`'s fields, for the item `i` of a case with `token`, with `limits` when given.
fn note_fields(token: &str, label: &str, jid: Option<&str>) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("class", js("Note")),
        ("queue", js("default")),
        (
            "args",
            format!("[{{\"token\":{},\"label\":{}}}]", js(token), js(label)),
        ),
        ("retry", "3".to_owned()),
    ];
    if let Some(jid) = jid {
        fields.push(("jid", js(jid)));
    }
    fields
}

impl Shape {
    /// The payload's bytes and its fate, as item `i` of a case whose jobs record under
    /// `token` (labels and jids are made distinct by `i`).
    fn render(&self, i: usize, token: &str) -> (Vec<u8>, Fate) {
        let label = format!("item{i}");
        let jid = format!("{token}{i:04}");
        let wrapped = |bytes: &[u8], message: &'static str| {
            Fate::Dead(
                error_class::INVALID_PAYLOAD,
                message,
                Found::Wrapped(as_read(bytes)),
            )
        };
        match self {
            Shape::NotUtf8 { junk, at, header } => {
                let mut junk = junk.clone();
                junk.insert(at.index(junk.len() + 1), 0xff);
                let mut bytes = Vec::new();
                if *header {
                    let head = format!(
                        "{{\"limits\":\"r5/100 kn{i}\",\"jid\":{},\"class\":\"Note\",\"queue\":\"default\",\"args\":[\"",
                        js(&jid)
                    );
                    bytes.extend_from_slice(head.as_bytes());
                    bytes.extend_from_slice(&junk);
                    bytes.extend_from_slice(b"\"]}");
                } else {
                    bytes = junk;
                }
                let fate = wrapped(&bytes, "not UTF-8");
                (bytes, fate)
            }
            Shape::Truncated { layout, keep } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.push(("limits", js(&format!("c1 kt{i}"))));
                let full = arrange(layout, fields);
                let cut = full.as_bytes()[..keep.index(full.len())].to_vec();
                let fate = wrapped(&cut, "not a valid job");
                (cut, fate)
            }
            Shape::NotAJob(which) => {
                let bytes = which.as_bytes().to_vec();
                let fate = wrapped(&bytes, "not a valid job");
                (bytes, fate)
            }
            Shape::WrongType { field, layout } => {
                let (name, value) = *field;
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.retain(|(n, _)| *n != name);
                fields.push((name, value.to_owned()));
                let bytes = arrange(layout, fields).into_bytes();
                let fate = wrapped(&bytes, "not a valid job");
                (bytes, fate)
            }
            Shape::Deep { depth, layout } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                let deep = format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth));
                fields.push(("deep", deep));
                let bytes = arrange(layout, fields).into_bytes();
                let fate = wrapped(&bytes, "recursion limit");
                (bytes, fate)
            }
            Shape::NotANumber {
                token: number,
                rate,
                layout,
            } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.push(("n", (*number).to_owned()));
                if *rate {
                    fields.push(("limits", js(&format!("r5/100 kr{i}"))));
                }
                let bytes = arrange(layout, fields).into_bytes();
                let fate = wrapped(&bytes, "not a valid job");
                (bytes, fate)
            }
            Shape::BadArgs { args, layout } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.retain(|(n, _)| *n != "args");
                fields.push(("args", (*args).to_owned()));
                let bytes = arrange(layout, fields).into_bytes();
                let fate = Fate::Dead(
                    error_class::INVALID_ARGUMENTS,
                    "do not fit Note",
                    Found::Jid(jid),
                );
                (bytes, fate)
            }
            Shape::Limits { text, layout } => {
                let text = text.render(&format!("l{i}x"));
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.push(("limits", js(&text)));
                let bytes = arrange(layout, fields).into_bytes();
                // A payload that begins with its jid has its header there, without the
                // limits written further on: it must not run unlimited.
                let fate = match LimitTag::parse(&text) {
                    Ok(_) if !bytes.starts_with(b"{\"jid\":") => Fate::Runs(label),
                    _ => Fate::Dead(error_class::INVALID_LIMITS, "limits", Found::Jid(jid)),
                };
                (bytes, fate)
            }
            Shape::LimitsWithoutJid { layout } => {
                let mut fields = note_fields(token, &label, None);
                fields.push(("limits", js(&format!("c1 kj{i}"))));
                let bytes = arrange(layout, fields).into_bytes();
                let fate = wrapped(&bytes, "missing field `jid`");
                (bytes, fate)
            }
            Shape::LimitsWithEmptyJid { layout } => {
                let mut fields = note_fields(token, &label, Some(""));
                fields.push(("limits", js(&format!("c1 ke{i}"))));
                let bytes = arrange(layout, fields).into_bytes();
                let fate = Fate::Dead(error_class::INVALID_LIMITS, "limits", Found::Label(label));
                (bytes, fate)
            }
            Shape::UnknownClass { layout } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                fields.retain(|(n, _)| *n != "class");
                fields.push(("class", js(&format!("NoSuchClass{i}"))));
                let bytes = arrange(layout, fields).into_bytes();
                (
                    bytes,
                    Fate::Retry(error_class::UNKNOWN_CLASS, Found::Jid(jid)),
                )
            }
            Shape::Good {
                layout,
                limits,
                smuggled,
                times,
            } => {
                let mut fields = note_fields(token, &label, Some(&jid));
                if let Some(limits) = limits {
                    fields.push(("limits", js(limits)));
                }
                if *smuggled {
                    // Ruby keeps a hash's keys in order: an argument may begin as a header.
                    let args = format!(
                        "[{{\"limits\":\"r1/1e300 x\",\"jid\":\"p\",\"collapse\":\"k\",\"token\":{},\"label\":{}}}]",
                        js(token),
                        js(&label)
                    );
                    fields.retain(|(n, _)| *n != "args");
                    fields.push(("args", args));
                }
                if let Some((created, enqueued)) = times {
                    fields.push(("created_at", (*created).to_owned()));
                    fields.push(("enqueued_at", (*enqueued).to_owned()));
                }
                let bytes = arrange(layout, fields).into_bytes();
                let fate = match limits.is_some() && bytes.starts_with(b"{\"jid\":") {
                    false => Fate::Runs(label),
                    true => Fate::Dead(error_class::INVALID_LIMITS, "limits", Found::Jid(jid)),
                };
                (bytes, fate)
            }
        }
    }
}

/// A shape any place may hold: its bytes pass through the process unchanged when due.
fn set_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        1 => (prop::collection::vec(any::<u8>(), 0..40), any::<Index>())
            .prop_map(|(junk, at)| Shape::NotUtf8 {
                junk,
                at,
                header: false
            }),
        1 => (unfixed_layout(), any::<Index>())
            .prop_map(|(layout, keep)| Shape::Truncated { layout, keep }),
        1 => prop::sample::select(NOT_JOBS).prop_map(Shape::NotAJob),
        1 => (prop::sample::select(WRONG_TYPES), unfixed_layout())
            .prop_map(|(field, layout)| Shape::WrongType { field, layout }),
        1 => (129..300usize, unfixed_layout()).prop_map(|(depth, layout)| Shape::Deep { depth, layout }),
        1 => (prop::sample::select(NOT_NUMBERS), unfixed_layout()).prop_map(|(token, layout)| Shape::NotANumber {
            token,
            rate: false,
            layout
        }),
        3 => good(false),
    ]
}

/// Limits that jobs of a case share, so that they wait for each other's slots.
const SHARED_LIMITS: &[&str] = &[
    "c1 kc",
    "c2 kc",
    "c1 kc c3 kd",
    "r50/100 kr",
    "c2 kd r50/100 kr",
];

/// A `Note` that runs (unless its limits follow the jid that begins it), `with_limits`
/// shared with other jobs of its case or without (a due job passes through the client,
/// which writes the limits of its class, none for `Note`).
fn good(with_limits: bool) -> impl Strategy<Value = Shape> {
    let times = prop::option::of((
        prop::sample::select(ODD_TIMES),
        prop::sample::select(ODD_TIMES),
    ));
    let limits = match with_limits {
        true => prop::option::of(prop::sample::select(SHARED_LIMITS)).boxed(),
        false => Just(None).boxed(),
    };
    (layout(), limits, any::<bool>(), times).prop_map(|(layout, limits, smuggled, times)| {
        Shape::Good {
            layout,
            limits,
            smuggled,
            times,
        }
    })
}

/// A shape a queue may hold: any.
fn queue_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        2 => set_shape(),
        3 => good(true),
        1 => (prop::collection::vec(any::<u8>(), 0..40), any::<Index>())
            .prop_map(|(junk, at)| Shape::NotUtf8 { junk, at, header: true }),
        1 => (layout(), any::<Index>()).prop_map(|(layout, keep)| Shape::Truncated { layout, keep }),
        1 => (prop::sample::select(WRONG_TYPES), layout()).prop_map(|(field, layout)| Shape::WrongType { field, layout }),
        1 => (prop::sample::select(NOT_NUMBERS), any::<bool>(), layout())
            .prop_map(|(token, rate, layout)| Shape::NotANumber { token, rate, layout }),
        1 => (prop::sample::select(BAD_ARGS), layout()).prop_map(|(args, layout)| Shape::BadArgs { args, layout }),
        3 => (limits_text(), layout()).prop_map(|(text, layout)| Shape::Limits { text, layout }),
        1 => layout().prop_map(|layout| Shape::LimitsWithoutJid { layout }),
        1 => layout().prop_map(|layout| Shape::LimitsWithEmptyJid { layout }),
        1 => layout().prop_map(|layout| Shape::UnknownClass { layout }),
    ]
}

/// A payload and its place: most in the queue, some in the schedule and retry sets.
fn placed() -> impl Strategy<Value = (Shape, Place)> {
    let set = prop_oneof![Just(SortedSet::Schedule), Just(SortedSet::Retry)];
    prop_oneof![
        3 => queue_shape().prop_map(|shape| (shape, Place::Queue)),
        1 => (set_shape(), set, prop::sample::select(SCORES))
            .prop_map(|(shape, set, score)| (shape, Place::Set(set, score))),
    ]
}

/// The payloads of a case, with their fates; a payload a sorted set already holds is
/// left out (a second `ZADD` of it only moves it).
fn render(items: &[(Shape, Place)], token: &str) -> Vec<Foreign> {
    let mut in_sets = std::collections::HashSet::new();
    let mut foreign = Vec::new();
    for (i, (shape, place)) in items.iter().enumerate() {
        let (bytes, fate) = shape.render(i, token);
        if let Place::Set(set, _) = place {
            if !in_sets.insert((set.key(), bytes.clone())) {
                continue;
            }
        }
        let fate = match place.stays() {
            Some(set) => Fate::Stays(set, Found::Bytes(bytes.clone())),
            None => fate,
        };
        foreign.push(Foreign {
            bytes,
            place: place.clone(),
            fate,
        });
    }
    foreign
}

/// Pushes `payload` where `place` says, into the layout under `prefix` (`ns:` on one
/// Redis, `{tag}:` on a shard of a cluster), as a foreign producer does.
async fn push_raw<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    prefix: &str,
    payload: &[u8],
    place: &Place,
) {
    match place {
        Place::Queue => {
            redis::pipe()
                .cmd("LPUSH")
                .arg(format!("{prefix}queue:default"))
                .arg(payload)
                .ignore()
                .cmd("SADD")
                .arg(format!("{prefix}queues"))
                .arg("default")
                .ignore()
                .query_async::<()>(conn)
                .await
                .expect("LPUSH");
        }
        Place::Set(set, score) => {
            let score = match *score {
                "NOW" => format!("{}", support::secs(now()) - 1.0),
                score => score.to_owned(),
            };
            redis::cmd("ZADD")
                .arg(format!("{prefix}{}", set.key()))
                .arg(score)
                .arg(payload)
                .query_async::<()>(conn)
                .await
                .expect("ZADD");
        }
    }
}

/// What is left after a case's worker stopped, as the store holds it.
#[derive(Debug, Default)]
struct Leftovers {
    /// Jobs in queues, in-flight lists and set aside, by key.
    stranded: Vec<(String, i64)>,
    /// Limit keys holding a concurrency slot, or without an expiry.
    limit_keys: Vec<(String, Vec<String>, i64)>,
}

/// Reads what is left under `prefix` through `conn`, given the keys that exist there.
async fn leftovers<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: Vec<String>,
    prefix: &str,
) -> Leftovers {
    let mut left = Leftovers::default();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if rest.starts_with("queue:")
            || rest.starts_with("jobqueue:inflight:")
            || rest.starts_with("jobqueue:parked:")
        {
            let len: i64 = redis::cmd("LLEN")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            if len > 0 {
                left.stranded.push((key, len));
            }
        } else if rest == "jobqueue:limits" {
            let len: i64 = redis::cmd("ZCARD")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            if len > 0 {
                left.stranded.push((key, len));
            }
        } else if rest.starts_with("jobqueue:limit:") {
            let slots: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .unwrap();
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(conn)
                .await
                .unwrap();
            // A rate key holds start times; a concurrency key `JID@PROCESS` slots.
            let concurrency = slots.iter().any(|s| s.parse::<f64>().is_err());
            if concurrency || ttl < 0 {
                left.limit_keys.push((key, slots, ttl));
            }
        }
    }
    left
}

/// The first entry of `entries` (class, message, payload as read, jid, label) that `found`
/// names with `class`, taken out.
fn take_entry(entries: &mut Vec<SetJob>, class: &str, found: &Found) -> Option<SetJob> {
    let at = entries.iter().position(|e| {
        e.class == class
            && match found {
                Found::Wrapped(text) => e.argument.as_deref() == Some(text.as_str()),
                Found::Jid(jid) => e.jid == *jid,
                Found::Label(label) => e.label.as_deref() == Some(label.as_str()),
                Found::Bytes(_) => false,
            }
    })?;
    Some(entries.remove(at))
}

/// A sorted set's entry as the checks read it.
#[derive(Clone, Debug)]
struct SetJob {
    class: String,
    message: String,
    jid: String,
    /// The first argument when it is a string (a wrapped payload).
    argument: Option<String>,
    /// The first argument's label.
    label: Option<String>,
    payload: String,
}

async fn set_jobs(b: &Backend, set: SortedSet) -> Vec<SetJob> {
    b.admin()
        .set_entries(set, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e.job {
            Ok(job) => SetJob {
                class: job.error_class.clone().unwrap_or_default(),
                message: job.error_message.clone().unwrap_or_default(),
                jid: job.jid.clone(),
                argument: job.args.first().and_then(|a| a.as_str()).map(str::to_owned),
                label: job
                    .args
                    .first()
                    .and_then(|a| a.get("label"))
                    .and_then(|l| l.as_str())
                    .map(str::to_owned),
                payload: e.payload,
            },
            Err(_) => SetJob {
                class: String::new(),
                message: String::new(),
                jid: String::new(),
                argument: None,
                label: None,
                payload: e.payload,
            },
        })
        .collect()
}

/// Runs a case: pushes `foreign` with `push` (after a good job through the client), runs a
/// worker until every fate is reached, stops it, and checks that every payload is where
/// its fate says and nothing else is anywhere. `left` reads what the store holds after.
async fn run_foreign_case<P, L>(b: &Backend, token: &str, foreign: &[Foreign], push: P, left: L)
where
    P: AsyncFnOnce(&[Foreign]),
    L: AsyncFnOnce() -> Leftovers,
{
    b.client()
        .enqueue(&Note::new(token, "client"))
        .await
        .expect("enqueue the good job");
    push(foreign).await;
    let mut runs: Vec<String> = vec!["client".to_owned()];
    let (mut dead, mut retry, mut schedule) = (0, 0, 0);
    for f in foreign {
        match &f.fate {
            Fate::Runs(label) => runs.push(label.clone()),
            Fate::Dead(..) => dead += 1,
            Fate::Retry(..) | Fate::Stays(SortedSet::Retry, _) => retry += 1,
            Fate::Stays(..) => schedule += 1,
        }
    }
    runs.sort();

    let w = start(b.worker().register::<Note>().register::<ShopJob>());
    let admin = b.admin();
    eventually(LIMIT, "every payload reached its fate", || async {
        let mut ran = jobs::labels(token);
        ran.sort();
        ran == runs
            && admin.set_size(SortedSet::Dead).await.unwrap() == dead
            && admin.set_size(SortedSet::Retry).await.unwrap() == retry
            && admin.set_size(SortedSet::Schedule).await.unwrap() == schedule
            && admin.queue("default").await.unwrap().size == 0
    })
    .await;
    w.stop().await;

    let mut ran = jobs::labels(token);
    ran.sort();
    assert_eq!(ran, runs, "each job that runs ran once");
    let mut dead_jobs = set_jobs(b, SortedSet::Dead).await;
    let mut retry_jobs = set_jobs(b, SortedSet::Retry).await;
    let mut scheduled = set_jobs(b, SortedSet::Schedule).await;
    for f in foreign {
        match &f.fate {
            Fate::Runs(_) => {}
            Fate::Dead(class, message, found) => {
                let entry = take_entry(&mut dead_jobs, class, found).unwrap_or_else(|| {
                    panic!("no dead entry {class} for {f:?}: dead set {dead_jobs:#?}")
                });
                assert!(
                    entry.message.contains(message),
                    "the error of {f:?} does not name `{message}`: {entry:?}"
                );
            }
            Fate::Retry(class, found) => {
                take_entry(&mut retry_jobs, class, found).unwrap_or_else(|| {
                    panic!("no retry entry {class} for {f:?}: retry set {retry_jobs:#?}")
                });
            }
            Fate::Stays(set, _) => {
                let entries = match set {
                    SortedSet::Retry => &mut retry_jobs,
                    _ => &mut scheduled,
                };
                let text = as_read(&f.bytes);
                let at = entries.iter().position(|e| e.payload == text);
                let at = at.unwrap_or_else(|| panic!("{f:?} left {set:?}: {entries:#?}"));
                entries.remove(at);
            }
        }
    }
    assert!(
        dead_jobs.is_empty(),
        "unaccounted dead entries: {dead_jobs:#?}"
    );
    assert!(
        retry_jobs.is_empty(),
        "unaccounted retries: {retry_jobs:#?}"
    );
    assert!(
        scheduled.is_empty(),
        "unaccounted scheduled jobs: {scheduled:#?}"
    );
    let left = left().await;
    assert!(
        left.stranded.is_empty(),
        "jobs left in queues, in flight or set aside: {:?}",
        left.stranded
    );
    assert!(
        left.limit_keys.is_empty(),
        "limit keys holding a concurrency slot or without an expiry (key, slots, PTTL): {:?}",
        left.limit_keys
    );
}

/// One to six foreign payloads (and a job through the client) on one Redis, taken by a
/// worker: each ran once, or is in the dead or retry set with its error class and a
/// message naming its problem, or stays in the set it was put in at a score never due;
/// after the worker stops, no queue, in-flight list or set-aside list holds a job, no
/// concurrency slot is held, and every rate key left expires.
#[test]
fn every_foreign_payload_on_redis_runs_or_ends_in_a_sorted_set_and_nothing_is_left_held() {
    let server = RedisServer::start();
    let url = server.url();
    let items = prop::collection::vec(placed(), 1..=6);
    check(WORKER_CASES, items, |items| {
        runtime().block_on(async {
            let ns = namespace();
            let prefix = format!("{ns}:");
            let config = RedisConfig::new(url.as_str()).namespace(ns.as_str());
            let broker = RedisBroker::connect_with(config).await.unwrap();
            let b = Backend {
                broker: Arc::new(broker),
                server: None,
                cluster: None,
                memory: None,
                pg: None,
            };
            let client = redis::Client::open(url.as_str()).unwrap();
            let conn = client.get_multiplexed_async_connection().await.unwrap();
            let token = jobs::token();
            let foreign = render(&items, &token);
            let push = async |foreign: &[Foreign]| {
                let mut conn = conn.clone();
                for f in foreign {
                    push_raw(&mut conn, &prefix, &f.bytes, &f.place).await;
                }
            };
            let left = async || {
                let mut conn = conn.clone();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                leftovers(&mut conn, keys, &prefix).await
            };
            run_foreign_case(&b, &token, &foreign, push, left).await;
        });
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// The model: the same steps on the in-memory broker and on Redis.

/// The keys of the model's limits: `A` and `C` concurrency keys, `B` and `D` rate keys
/// (per 100 seconds, longer than a case: only a step's time ahead ages their starts).
const MODEL_KEYS: &[&str] = &["A", "B", "C", "D"];

/// Limits over the model's keys, by index: a key's first limit in a header has its count
/// in the case, and a key named again gets a count above the one before. Both backends
/// then agree: jobs of one key with different counts, and a key named again with a count
/// not above, are the subjects of the tests named `a_key_*`.
#[derive(Clone, Debug)]
enum ModelLimits {
    None,
    Empty,
    Invalid(&'static str),
    Keys(Vec<usize>),
}

impl ModelLimits {
    fn text(&self, counts: &[u32]) -> Option<String> {
        let keys = match self {
            ModelLimits::None => return None,
            ModelLimits::Empty => return Some(String::new()),
            ModelLimits::Invalid(text) => return Some((*text).to_owned()),
            ModelLimits::Keys(keys) => keys,
        };
        let mut named: BTreeMap<usize, u32> = BTreeMap::new();
        let mut words = Vec::new();
        for &key in keys {
            let count = named.get(&key).map_or(counts[key], |before| before + 1);
            named.insert(key, count);
            let spec = match MODEL_KEYS[key] {
                "A" | "C" => format!("c{count}"),
                _ => format!("r{count}/100"),
            };
            words.push(format!("{spec} {}", MODEL_KEYS[key]));
        }
        Some(words.join(" "))
    }
}

fn model_limits() -> impl Strategy<Value = ModelLimits> {
    const INVALID: &[&str] = &["c0 A", "r1/1e300 B", "c2 A c3", "c1 A/x", "r2/0 D", "c1\tA"];
    prop_oneof![
        1 => Just(ModelLimits::None),
        1 => Just(ModelLimits::Empty),
        1 => prop::sample::select(INVALID).prop_map(ModelLimits::Invalid),
        8 => prop::collection::vec(0..MODEL_KEYS.len(), 1..=3).prop_map(ModelLimits::Keys),
    ]
}

/// A job's jid in the model.
#[derive(Clone, Copy, Debug)]
enum Jid {
    Own,
    Missing,
    Empty,
}

/// A job of the model, written by a foreign producer.
#[derive(Clone, Debug)]
struct ModelJob {
    limits: ModelLimits,
    layout: Layout,
    queue: &'static str,
    jid: Jid,
    /// `limits` text in its argument too.
    smuggled: bool,
    /// A number JSON does not have.
    not_a_number: Option<&'static str>,
}

fn model_job() -> impl Strategy<Value = ModelJob> {
    let jid = prop_oneof![8 => Just(Jid::Own), 1 => Just(Jid::Missing), 1 => Just(Jid::Empty)];
    (
        model_limits(),
        layout(),
        prop::sample::select(&["default", "other"][..]),
        jid,
        any::<bool>(),
        prop::option::weighted(0.15, prop::sample::select(NOT_NUMBERS)),
    )
        .prop_map(|(limits, layout, queue, jid, smuggled, not_a_number)| {
            // `1.` beside limits is the subject of `a_number_ending_in_a_point_*`.
            let not_a_number =
                not_a_number.filter(|n| *n != "1." || matches!(limits, ModelLimits::None));
            ModelJob {
                limits,
                layout,
                queue,
                jid,
                smuggled,
                not_a_number,
            }
        })
}

impl ModelJob {
    fn jid(i: usize) -> String {
        format!("j{i}")
    }

    /// The payload of job `i` of a case whose keys have `counts`.
    fn payload(&self, i: usize, counts: &[u32]) -> String {
        let label = format!("m{i}");
        let argument = match self.smuggled {
            true => format!(
                "{{\"limits\":\"c1 A\",\"jid\":\"x\",\"token\":\"t\",\"label\":{}}}",
                js(&label)
            ),
            false => format!("{{\"token\":\"t\",\"label\":{}}}", js(&label)),
        };
        let mut fields = vec![
            ("class", js("Note")),
            ("queue", js(self.queue)),
            ("args", format!("[{argument}]")),
        ];
        match self.jid {
            Jid::Own => fields.push(("jid", js(&Self::jid(i)))),
            Jid::Empty => fields.push(("jid", js(""))),
            Jid::Missing => {}
        }
        if let Some(limits) = self.limits.text(counts) {
            fields.push(("limits", js(&limits)));
        }
        if let Some(number) = self.not_a_number {
            fields.push(("n", number.to_owned()));
        }
        arrange(&self.layout, fields)
    }
}

#[derive(Clone, Copy, Debug)]
enum Proc {
    /// A process with a live heartbeat (until it is forgotten).
    P,
    /// A process without one: its concurrency slots count as free.
    Q,
}

impl Proc {
    fn name(self) -> &'static str {
        match self {
            Proc::P => "p",
            Proc::Q => "q",
        }
    }
}

/// Where a settle moves a job in flight.
#[derive(Clone, Copy, Debug)]
enum To {
    Done,
    Retry,
    Dead,
    /// The front of `default`.
    Front,
    /// The back of `other`.
    Back,
    /// The schedule set, an hour ahead.
    Later,
    /// The schedule set, due.
    DueNow,
}

/// Seconds ahead of now at which a step looks.
const AHEAD: &[u64] = &[0, 30, 61, 101, 1000];

/// The queues a fetch takes from, in order.
const FETCH_QUEUES: &[&[&str]] = &[
    &["default"],
    &["other"],
    &["default", "other"],
    &["other", "default"],
];

#[derive(Clone, Debug)]
enum Op {
    /// Pushes the job again.
    Push(Index),
    Fetch {
        by: Proc,
        max: usize,
        limits: bool,
        queues: &'static [&'static str],
    },
    Settle {
        by: Proc,
        pick: Index,
        to: To,
    },
    /// Brings back jobs set aside, looking this many seconds ahead.
    Unpark(u64),
    /// Removes a job set aside under a key.
    RemoveParked {
        key: &'static str,
        pick: Index,
    },
    /// Removes a job waiting in `default`.
    RemoveQueued(Index),
    /// Takes due jobs of a set into an in-flight list, looking this many seconds ahead.
    TakeDue {
        retry: bool,
        ahead: u64,
        by: Proc,
    },
    /// Forgets the process: from then on it has no heartbeat (a process that beats again
    /// after its slots were looked at is the subject of
    /// `a_process_that_beats_again_*`).
    Forget(Proc),
    BatchAdd {
        bid: usize,
        jobs: Vec<Index>,
    },
    BatchDone {
        bid: usize,
        job: Index,
        ok: bool,
    },
}

fn proc_() -> impl Strategy<Value = Proc> {
    prop_oneof![3 => Just(Proc::P), 1 => Just(Proc::Q)]
}

fn op() -> impl Strategy<Value = Op> {
    let to = prop::sample::select(
        &[
            To::Done,
            To::Done,
            To::Done,
            To::Retry,
            To::Dead,
            To::Front,
            To::Back,
            To::Later,
            To::DueNow,
        ][..],
    );
    prop_oneof![
        2 => any::<Index>().prop_map(Op::Push),
        5 => (proc_(), 1..5usize, prop::bool::weighted(0.85), prop::sample::select(FETCH_QUEUES))
            .prop_map(|(by, max, limits, queues)| Op::Fetch { by, max, limits, queues }),
        5 => (proc_(), any::<Index>(), to).prop_map(|(by, pick, to)| Op::Settle { by, pick, to }),
        2 => prop::sample::select(AHEAD).prop_map(Op::Unpark),
        1 => (prop::sample::select(MODEL_KEYS), any::<Index>())
            .prop_map(|(key, pick)| Op::RemoveParked { key, pick }),
        1 => any::<Index>().prop_map(Op::RemoveQueued),
        1 => (any::<bool>(), prop::sample::select(AHEAD), proc_())
            .prop_map(|(retry, ahead, by)| Op::TakeDue { retry, ahead, by }),
        1 => proc_().prop_map(Op::Forget),
        1 => (0..2usize, prop::collection::vec(any::<Index>(), 0..4))
            .prop_map(|(bid, jobs)| Op::BatchAdd { bid, jobs }),
        1 => (0..2usize, any::<Index>(), any::<bool>())
            .prop_map(|(bid, job, ok)| Op::BatchDone { bid, job, ok }),
    ]
}

/// Both brokers of a model case.
struct Pair {
    memory: Arc<dyn Broker>,
    redis: Arc<dyn Broker>,
}

/// Everything a model case compares after each step.
#[derive(Debug, PartialEq)]
struct Snapshot {
    queues: Vec<(&'static str, Vec<String>)>,
    in_flight: Vec<(&'static str, Vec<String>)>,
    /// Each set's payloads, sorted (scores are times, taken apart on each broker).
    sets: Vec<(SortedSet, Vec<String>)>,
    /// The jobs set aside under each key, the next to come back first.
    parked: Vec<(&'static str, Vec<String>)>,
    /// The keys with jobs set aside, and how many.
    limits: Vec<(String, usize)>,
    batches: Vec<Option<BatchStatus>>,
}

async fn snapshot(broker: &dyn Broker) -> Snapshot {
    let all = Span::page(0, 1000);
    let mut queues = Vec::new();
    for queue in ["default", "other"] {
        queues.push((queue, broker.queue_range(queue, 0, 1000).await.unwrap()));
    }
    let mut in_flight = Vec::new();
    for process in [Proc::P, Proc::Q] {
        in_flight.push((
            process.name(),
            broker.in_flight(process.name()).await.unwrap(),
        ));
    }
    let mut sets = Vec::new();
    for set in [SortedSet::Schedule, SortedSet::Retry, SortedSet::Dead] {
        let mut payloads: Vec<String> = broker
            .range(Location::Set(set), all)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        payloads.sort();
        sets.push((set, payloads));
    }
    let mut parked = Vec::new();
    for key in MODEL_KEYS {
        let jobs = broker.range(Location::Parked(key), all).await.unwrap();
        parked.push((*key, jobs.into_iter().map(|e| e.payload).collect()));
    }
    // In key order: the brokers list them in different orders (by key, by next look).
    let mut limits: Vec<(String, usize)> = broker
        .limits()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.key, l.parked))
        .collect();
    limits.sort();
    let mut batches = Vec::new();
    for bid in ["b0", "b1"] {
        batches.push(broker.batch_status(bid).await.unwrap());
    }
    Snapshot {
        queues,
        in_flight,
        sets,
        parked,
        limits,
        batches,
    }
}

/// A batch's callbacks in the model: a job for each, to `default`.
fn callbacks(bid: usize) -> BatchCallbacks {
    let callback = |what: &str| Push {
        queue: "default".into(),
        payload: format!(
            "{{\"jid\":\"cb{bid}{what}\",\"class\":\"Note\",\"queue\":\"default\",\"args\":[]}}"
        ),
        at: None,
    };
    BatchCallbacks {
        on_complete: Some(callback("complete")),
        on_success: Some(callback("success")),
    }
}

impl Pair {
    /// Runs `step` on both brokers and checks that they answer alike.
    async fn both<T, F>(&self, what: &str, step: F) -> T
    where
        T: PartialEq + Debug,
        F: AsyncFn(&dyn Broker) -> T,
    {
        let memory = step(self.memory.as_ref()).await;
        let redis = step(self.redis.as_ref()).await;
        assert_eq!(
            memory, redis,
            "{what}: memory (left) and Redis (right) answer apart"
        );
        memory
    }

    /// Checks that both brokers hold the same; returns the memory broker's snapshot.
    async fn same(&self, after: &str) -> Snapshot {
        let memory = snapshot(self.memory.as_ref()).await;
        let redis = snapshot(self.redis.as_ref()).await;
        assert!(
            memory == redis,
            "after {after}, memory and Redis hold apart:\n{}",
            apart(&memory, &redis)
        );
        memory
    }

    async fn step(&self, op: &Op, jobs: &[String], held: &Snapshot) {
        let what = format!("{op:?}");
        let at = |ahead: &u64| now() + Duration::from_secs(*ahead);
        match op {
            Op::Push(job) => {
                let payload = job.get(jobs);
                let queue = jobqueue::Envelope::parse(payload)
                    .map_or_else(|_| "default".to_owned(), |e| e.queue);
                let push = [Push {
                    queue,
                    payload: payload.clone(),
                    at: None,
                }];
                self.both(&what, async |b| b.push(&push).await.unwrap())
                    .await;
            }
            Op::Fetch {
                by,
                max,
                limits,
                queues,
            } => {
                let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
                let lease = limits.then_some(LEASE);
                self.both(&what, async |b| {
                    let request = support::request(&queues, *max, lease, false);
                    let fetched: Vec<Fetched> = b.fetch(by.name(), request).await.unwrap();
                    fetched
                })
                .await;
            }
            Op::Settle { by, pick, to } => {
                let list = &held
                    .in_flight
                    .iter()
                    .find(|(p, _)| *p == by.name())
                    .unwrap()
                    .1;
                if list.is_empty() {
                    return;
                }
                let payload = pick.get(list).clone();
                let now = now();
                let hour = Duration::from_secs(3600);
                let to = match to {
                    To::Done => Settle::Discard,
                    To::Retry => Settle::Retry {
                        payload: payload.clone(),
                        at: now + hour,
                    },
                    To::Dead => Settle::Dead {
                        payload: payload.clone(),
                    },
                    To::Front => Settle::Queue {
                        queue: "default".into(),
                        payload: payload.clone(),
                        front: true,
                    },
                    To::Back => Settle::Queue {
                        queue: "other".into(),
                        payload: payload.clone(),
                        front: false,
                    },
                    To::Later => Settle::Schedule {
                        payload: payload.clone(),
                        at: now + hour,
                    },
                    To::DueNow => Settle::Schedule {
                        payload: payload.clone(),
                        at: now - Duration::from_secs(1),
                    },
                };
                let moves = [Move::new(payload, to)];
                self.both(&what, async |b| {
                    b.settle(Source::InFlight(by.name()), &moves).await.unwrap()
                })
                .await;
            }
            Op::Unpark(ahead) => {
                let at = at(ahead);
                self.both(&what, async |b| b.unpark_due(at, LEASE).await.unwrap())
                    .await;
            }
            Op::RemoveParked { key, pick } => {
                let list = &held.parked.iter().find(|(k, _)| k == key).unwrap().1;
                if list.is_empty() {
                    return;
                }
                let payloads = [pick.get(list).clone()];
                self.both(&what, async |b| {
                    b.remove(Location::Parked(key), &payloads).await.unwrap()
                })
                .await;
            }
            Op::RemoveQueued(pick) => {
                let list = &held.queues[0].1;
                if list.is_empty() {
                    return;
                }
                let payloads = [pick.get(list).clone()];
                self.both(&what, async |b| {
                    b.remove(Location::Queue("default"), &payloads)
                        .await
                        .unwrap()
                })
                .await;
            }
            Op::TakeDue { retry, ahead, by } => {
                let set = match retry {
                    true => SortedSet::Retry,
                    false => SortedSet::Schedule,
                };
                let at = at(ahead);
                self.both(&what, async |b| {
                    let due = b.take_due(by.name(), set, at, 10, None).await.unwrap();
                    let mut taken: Vec<String> = due.taken.into_iter().map(|(_, p)| p).collect();
                    taken.sort();
                    (due.moved.len(), taken)
                })
                .await;
            }
            Op::Forget(by) => {
                self.both(&what, async |b| b.forget(by.name()).await.unwrap())
                    .await;
            }
            Op::BatchAdd { bid, jobs: picked } => {
                let jids: Vec<String> = picked
                    .iter()
                    .map(|i| ModelJob::jid(i.index(jobs.len())))
                    .collect();
                let callbacks = callbacks(*bid);
                let name = format!("b{bid}");
                self.both(&what, async |b| {
                    b.batch_add(&name, "model", &callbacks, &jids)
                        .await
                        .unwrap()
                })
                .await;
            }
            Op::BatchDone { bid, job, ok } => {
                let jid = ModelJob::jid(job.index(jobs.len()));
                let name = format!("b{bid}");
                self.both(&what, async |b| {
                    b.batch_done(&name, &jid, *ok).await.unwrap()
                })
                .await;
            }
        }
    }
}

/// Sets a model case's queues in one order on both brokers: the order of the jobs
/// brought back from several keys in one step is not the same on both (see
/// `jobs_brought_back_from_several_keys_*`), and everything else follows from it.
async fn same_order(pair: &Pair, held: &Snapshot) {
    for (queue, jobs) in &held.queues {
        let mut sorted = jobs.clone();
        sorted.sort();
        for broker in [&pair.memory, &pair.redis] {
            broker.remove(Location::Queue(queue), jobs).await.unwrap();
            let pushes: Vec<Push> = sorted
                .iter()
                .map(|payload| Push {
                    queue: (*queue).to_owned(),
                    payload: payload.clone(),
                    at: None,
                })
                .collect();
            broker.push(&pushes).await.unwrap();
        }
    }
}

/// What two snapshots hold apart, field by field.
fn apart(memory: &Snapshot, redis: &Snapshot) -> String {
    let mut out = String::new();
    let mut field = |name: &str, m: String, r: String| {
        if m != r {
            out.push_str(&format!("{name}:\n  memory: {m}\n  redis:  {r}\n"));
        }
    };
    field(
        "queues",
        format!("{:?}", memory.queues),
        format!("{:?}", redis.queues),
    );
    field(
        "in flight",
        format!("{:?}", memory.in_flight),
        format!("{:?}", redis.in_flight),
    );
    field(
        "sets",
        format!("{:?}", memory.sets),
        format!("{:?}", redis.sets),
    );
    field(
        "set aside",
        format!("{:?}", memory.parked),
        format!("{:?}", redis.parked),
    );
    field(
        "limits",
        format!("{:?}", memory.limits),
        format!("{:?}", redis.limits),
    );
    field(
        "batches",
        format!("{:?}", memory.batches),
        format!("{:?}", redis.batches),
    );
    out
}

/// Whether two snapshots differ only in the order of their queues.
fn apart_in_order_only(a: &Snapshot, b: &Snapshot) -> bool {
    let sorted = |s: &Snapshot| -> Vec<Vec<String>> {
        s.queues
            .iter()
            .map(|(_, jobs)| {
                let mut jobs = jobs.clone();
                jobs.sort();
                jobs
            })
            .collect()
    };
    a != b
        && sorted(a) == sorted(b)
        && a.in_flight == b.in_flight
        && a.sets == b.sets
        && a.parked == b.parked
        && a.limits == b.limits
        && a.batches == b.batches
}

/// Up to eight foreign jobs (limits over four keys, in any layout, some refused) pushed to
/// both brokers, then up to forty steps on both: every step answers alike (what a fetch
/// takes and how it read the limits, what a settle moved, how many jobs came back, what was
/// removed or taken due, how a batch counted), and after every step both hold the same
/// jobs in each queue, in-flight list, sorted set and set-aside list, the same set-aside
/// counts per key and the same batches. Queues are compared in order but after a step that
/// brought jobs back from several keys at once, whose order is the subject of
/// `jobs_brought_back_from_several_keys_at_once_line_up_alike`.
#[test]
fn memory_and_redis_answer_alike_and_hold_the_same_jobs_after_every_step() {
    let server = RedisServer::start();
    let url = server.url();
    let case = (
        prop::collection::vec(1..4u32, MODEL_KEYS.len()),
        prop::collection::vec(model_job(), 1..=8),
        prop::collection::vec(op(), 1..=40),
    );
    check(MODEL_CASES, case, |(counts, jobs, ops)| {
        runtime().block_on(async {
            let config = RedisConfig::new(url.as_str()).namespace(namespace());
            let pair = Pair {
                memory: Arc::new(jobqueue::MemoryBroker::new()),
                redis: Arc::new(RedisBroker::connect_with(config).await.unwrap()),
            };
            let payloads: Vec<String> = jobs
                .iter()
                .enumerate()
                .map(|(i, j)| j.payload(i, &counts))
                .collect();
            pair.both("beat", async |b| beat(b, "p", LEASE).await).await;
            for payload in &payloads {
                let queue = jobqueue::Envelope::parse(payload)
                    .map_or_else(|_| "default".to_owned(), |e| e.queue);
                let push = [Push {
                    queue,
                    payload: payload.clone(),
                    at: None,
                }];
                pair.both("push", async |b| b.push(&push).await.unwrap())
                    .await;
            }
            let mut held = pair.same("the pushes").await;
            for op in &ops {
                pair.step(op, &payloads, &held).await;
                let memory = snapshot(pair.memory.as_ref()).await;
                let redis = snapshot(pair.redis.as_ref()).await;
                if matches!(op, Op::Unpark(_) | Op::Settle { .. })
                    && apart_in_order_only(&memory, &redis)
                {
                    same_order(&pair, &memory).await;
                }
                held = pair.same(&format!("{op:?}")).await;
            }
        });
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// A cluster: the same foreign payloads, pushed to the shards' own keys.

/// A Redis Cluster key's hash slot (CRC16/XMODEM modulo 16384, as the cluster computes
/// it).
fn slot(key: &str) -> usize {
    let mut crc: u16 = 0;
    for byte in key.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    usize::from(crc) % 16384
}

/// The hash tags of the shards of namespace `base`, as the cluster broker picks them: shard
/// i's is the first `{base-k}` whose slot lies in the i-th of `count` equal slot ranges.
fn shard_tags(base: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let range = (i * 16384 / count)..((i + 1) * 16384 / count);
            (0..)
                .map(|k| format!("{base}-{k}"))
                .find(|tag| range.contains(&slot(tag)))
                .map(|tag| format!("{{{tag}}}"))
                .expect("a tag in every range")
        })
        .collect()
}

/// The same on a Redis Cluster, each payload pushed to the keys of a shard: the checks of
/// `every_foreign_payload_on_redis_*`, over every shard.
#[test]
fn every_foreign_payload_on_a_cluster_runs_or_ends_in_a_sorted_set_and_nothing_is_left_held() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let nodes: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let case = (
        prop::collection::vec(placed(), 1..=6),
        prop::collection::vec(any::<Index>(), 6),
    );
    check(CLUSTER_CASES, case, |(items, shards)| {
        runtime().block_on(async {
            let ns = namespace();
            let config = ClusterConfig::new(&urls).namespace(ns.as_str());
            let broker = ClusterBroker::connect_with(config).await.unwrap();
            let tags = shard_tags(&ns, broker.shard_count());
            let b = Backend {
                broker: Arc::new(broker),
                server: None,
                cluster: None,
                memory: None,
                pg: None,
            };
            let client = redis::cluster::ClusterClient::new(nodes.clone()).unwrap();
            let conn = client.get_async_connection().await.unwrap();
            let token = jobs::token();
            let foreign = render(&items, &token);
            let push = async |foreign: &[Foreign]| {
                let mut conn = conn.clone();
                for (f, shard) in foreign.iter().zip(&shards) {
                    let prefix = format!("{}:", shard.get(&tags));
                    push_raw(&mut conn, &prefix, &f.bytes, &f.place).await;
                }
            };
            let left = async || {
                let mut conn = conn.clone();
                let keys = tokio::task::block_in_place(|| cluster.keys("*"));
                let mut left = Leftovers::default();
                for tag in &tags {
                    let prefix = format!("{tag}:");
                    let mine = keys
                        .iter()
                        .map(|(_, k)| k.clone())
                        .filter(|k| k.starts_with(&prefix));
                    let more = leftovers(&mut conn, mine.collect(), &prefix).await;
                    left.stranded.extend(more.stranded);
                    left.limit_keys.extend(more.limit_keys);
                }
                left
            };
            run_foreign_case(&b, &token, &foreign, push, left).await;
        });
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// Cases found by hand (and by the properties above), on both backends.

/// A `Note` payload with its header at the fixed place.
fn limited(limits: &str, jid: &str) -> String {
    format!(
        "{{\"limits\":{},\"jid\":{},\"class\":\"Note\",\"queue\":\"default\",\"args\":[{{\"token\":\"t\",\"label\":{}}}]}}",
        js(limits),
        js(jid),
        js(jid)
    )
}

/// The jid a payload's text names first, or `?`.
fn jid_in(payload: &str) -> String {
    payload
        .split_once("\"jid\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| "?".to_owned(), |(jid, _)| jid.to_owned())
}

async fn push_all(b: &dyn Broker, payloads: &[String]) {
    let pushes: Vec<Push> = payloads
        .iter()
        .map(|payload| Push {
            queue: "default".into(),
            payload: payload.clone(),
            at: None,
        })
        .collect();
    b.push(&pushes).await.unwrap();
}

/// Up to ten jobs of `default` taken by `process` applying limits, by jid.
async fn take(b: &dyn Broker, process: &str) -> Vec<String> {
    let queues = ["default".to_owned()];
    let request = support::request(&queues, 10, Some(LEASE), false);
    let taken = b.fetch(process, request).await.unwrap();
    taken.iter().map(|f| jid_in(&f.payload)).collect()
}

/// The payloads `process` holds, each to `to`.
async fn settle_all(b: &dyn Broker, process: &str, to: impl Fn(String) -> Settle) {
    for payload in b.in_flight(process).await.unwrap() {
        let moves = [Move::new(payload.clone(), to(payload))];
        b.settle(Source::InFlight(process), &moves).await.unwrap();
    }
}

/// The jids waiting in `default`, the next first.
async fn queued(b: &dyn Broker) -> Vec<String> {
    let jobs = b.queue_range("default", 0, 100).await.unwrap();
    jobs.iter().map(|p| jid_in(p)).collect()
}

/// The jids set aside under `key`, the oldest (the next to come back) first.
async fn set_aside(b: &dyn Broker, key: &str) -> Vec<String> {
    let jobs = b
        .range(Location::Parked(key), Span::page(0, 100))
        .await
        .unwrap();
    jobs.iter().map(|e| jid_in(&e.payload)).collect()
}

async fn both_backends() -> [(&'static str, Backend); 2] {
    [
        ("memory", Backend::memory().await),
        ("redis", Backend::redis().await),
    ]
}

/// A header naming one key in two limits (a concurrency and a rate limit, or two of one
/// kind, whichever count comes first) is out of range on both backends: the fetch takes
/// the job as one whose limits cannot apply (it goes to the dead set), takes no slot and
/// sets nothing aside. Before, Redis counted the job's first slot against its second limit
/// and set it aside at every fetch, while memory ran it; and the two brought such jobs
/// back by different limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_naming_one_key_twice_is_invalid_on_both_backends() {
    for header in [
        "c1 K r3/100 K",
        "c1 K c1 K",
        "c3 K c1 K",
        "r1/100 K r1/100 K",
    ] {
        for (name, b) in both_backends().await {
            let b = b.broker.as_ref();
            beat(b, "p", LEASE).await;
            push_all(b, &[limited(header, "x"), limited("c1 K", "y")]).await;
            let queues = ["default".to_owned()];
            let request = support::request(&queues, 10, Some(LEASE), false);
            let taken = b.fetch("p", request).await.unwrap();
            let read: Vec<(String, LimitsRead)> = taken
                .iter()
                .map(|f| (jid_in(&f.payload), f.limits))
                .collect();
            assert_eq!(
                read,
                [
                    ("x".to_owned(), LimitsRead::Invalid),
                    ("y".to_owned(), LimitsRead::Applied)
                ],
                "{name}, {header}: x takes no slot of K, so y has room"
            );
            assert!(set_aside(b, "K").await.is_empty(), "{name}, {header}");
        }
    }
}

/// A slot is named `JID@PROCESS`, so a job with limits whose jid is not printable ASCII
/// without `@` or spaces takes none, on both backends: the fetch gives it as one whose
/// limits cannot apply, and the key's next job has room. Before, a jid with a space took a
/// slot the settle script could not free, and one with `@` made the slot's process be
/// misread (judged dead, so the limit could be overrun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_jid_cannot_name_a_slot_takes_none_on_both_backends() {
    for jid in ["a b", "a@b", "caf\u{e9}", "tab\tbed"] {
        for (name, b) in both_backends().await {
            let b = b.broker.as_ref();
            beat(b, "p", LEASE).await;
            push_all(b, &[limited("c1 K", jid), limited("c1 K", "y")]).await;
            let queues = ["default".to_owned()];
            let request = support::request(&queues, 10, Some(LEASE), false);
            let taken = b.fetch("p", request).await.unwrap();
            let read: Vec<LimitsRead> = taken.iter().map(|f| f.limits).collect();
            assert_eq!(
                read,
                [LimitsRead::Invalid, LimitsRead::Applied],
                "{name}, jid {jid:?}: it takes no slot of K, so y has room"
            );
        }
    }
}

/// A payload whose header is not at its fixed place is read as JSON, by `cjson` in the
/// fetch script and by serde_json in Rust, and both must read the same header: a slot the
/// fetch takes is one the job's settle frees. With numbers JSON does not have (`NaN`,
/// `Infinity`, `0x1F`) neither reads a header; with one too large for a float (`1e400`)
/// both do. Either way the next job of the key is taken after the bad one dies. Before,
/// `cjson` read all four and took a slot that the settle, reading in Rust, never freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_slot_taken_by_a_payload_serde_json_refuses_is_freed_when_it_dies() {
    for number in ["NaN", "Infinity", "0x1F", "1e400"] {
        for (name, b) in both_backends().await {
            let b = b.broker.as_ref();
            beat(b, "p", LEASE).await;
            let bad = format!(
                "{{\"args\":[{number}],\"class\":\"Note\",\"jid\":\"bad\",\"limits\":\"c1 K\",\"queue\":\"default\"}}"
            );
            push_all(b, &[bad]).await;
            assert_eq!(take(b, "p").await, ["bad"], "{name}");
            settle_all(b, "p", |payload| Settle::Dead { payload }).await;
            push_all(b, &[limited("c1 K", "good")]).await;
            assert_eq!(
                take(b, "p").await,
                ["good"],
                "{name}, after a payload with {number}"
            );
        }
    }
}

/// `cjson` also reads a number ending in a point (`1.`), which serde_json refuses: the
/// fetch script reads the header of such a payload and takes its slot, the settle reads
/// none and frees nothing, and the key's next job waits while the process lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open: cjson reads `1.` as a number, serde_json does not (lib.lua header vs envelope/header.rs)"]
async fn a_number_ending_in_a_point_hides_the_header_from_neither_reader() {
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        let bad = r#"{"args":[1.],"class":"Note","jid":"bad","limits":"c1 K","queue":"default"}"#;
        push_all(b, &[bad.to_owned()]).await;
        assert_eq!(take(b, "p").await, ["bad"], "{name}");
        settle_all(b, "p", |payload| Settle::Dead { payload }).await;
        push_all(b, &[limited("c1 K", "good")]).await;
        assert_eq!(take(b, "p").await, ["good"], "{name}");
    }
}

/// The same with bytes that are not UTF-8 after a header at its fixed place: the fetch
/// script reads the header and takes a slot, and the settle reads it there too and frees
/// it when the job dies (before, Rust read no header from bytes that are not text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_slot_taken_by_a_payload_that_is_not_utf8_is_freed_when_it_dies() {
    let b = Backend::redis().await;
    let broker = b.broker.as_ref();
    beat(broker, "p", LEASE).await;
    let url = b.server.as_ref().unwrap().url();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut bad = limited("c1 K", "bad").into_bytes();
    bad.truncate(bad.len() - 2);
    bad.extend_from_slice(b"\xff\"]}");
    push_raw(&mut conn, "", &bad, &Place::Queue).await;
    assert_eq!(take(broker, "p").await.len(), 1);
    settle_all(broker, "p", |payload| Settle::Dead { payload }).await;
    let slots: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg("jobqueue:limit:K")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    push_all(broker, &[limited("c1 K", "good")]).await;
    assert_eq!(take(broker, "p").await, ["good"], "slots left: {slots:?}");
}

/// One key named by a concurrency limit in one job's header and by a rate limit in
/// another's: memory keeps running jobs and start times apart; Redis keeps both in one
/// list, `jobqueue:limit:K`, where the rate check reads the first slot (`x@p`) as no
/// time and finds the key full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: redis counts one key's concurrency slots and rate starts in one list (limits.lua room)"]
async fn a_key_named_by_a_concurrency_limit_and_by_a_rate_limit_of_another_job_is_admitted_alike() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        push_all(b, &[limited("c1 K", "x"), limited("r1/100 K", "y")]).await;
        seen.push((name, take(b, "p").await));
    }
    assert_eq!(seen[0].1, seen[1].1, "{seen:?}");
}

/// Jobs of one key with different counts (a class's limit raised from 1 to 3 while its
/// old jobs wait): in one fetch, an old job finds the key full at 1, and the fetch
/// script then sets aside every later job of the key unasked (`full` is kept per key,
/// not per count), where memory runs the new job under its limit of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: redis sets aside a job of a key another job with a lower count found full in the same fetch (limits.lua admit, `full`)"]
async fn jobs_of_one_key_with_different_counts_are_admitted_alike_in_one_fetch() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        let jobs = [
            limited("c1 K", "x"),
            limited("c1 K", "y"),
            limited("c3 K", "z"),
        ];
        push_all(b, &jobs).await;
        seen.push((name, take(b, "p").await));
    }
    assert_eq!(seen[0].1, seen[1].1, "{seen:?}");
}

/// A job with limits and an empty jid is refused at fetch and takes no slot; when it
/// leaves its in-flight list, neither backend frees a slot or brings back a job set aside
/// (before, Redis freed the slot `@PROCESS` and brought one back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_for_its_empty_jid_brings_back_no_job_when_it_leaves() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        push_all(
            b,
            &[
                limited("c1 A", "x"),
                limited("c1 A", "y"),
                limited("c1 A", ""),
            ],
        )
        .await;
        assert_eq!(take(b, "p").await, ["x", ""], "{name}");
        let refused = b.in_flight("p").await.unwrap()[0].clone();
        let moves = [Move::new(
            refused.clone(),
            Settle::Dead { payload: refused },
        )];
        b.settle(Source::InFlight("p"), &moves).await.unwrap();
        seen.push((name, queued(b).await, set_aside(b, "A").await));
    }
    assert_eq!(seen[0].1, seen[1].1, "{seen:?}");
    assert_eq!(seen[0].2, seen[1].2, "{seen:?}");
}

/// A process whose heartbeat lapsed holds two slots of a key with a limit of 2, then beats
/// again: Redis still counts both (it drops a dead process's slots only when the key looks
/// full), while memory dropped the first when it looked at the key for the second, and
/// runs a third job of the key beside the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: memory drops a lapsed process's slots at every look, so a process that beats again runs over the limit (memory/limits.rs room)"]
async fn a_process_that_beats_again_keeps_the_slots_it_held_on_both_backends() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        push_all(b, &[limited("c2 C", "x"), limited("c2 C", "y")]).await;
        assert_eq!(take(b, "p").await, ["x", "y"], "{name}");
        beat(b, "p", LEASE).await;
        push_all(b, &[limited("c2 C", "z")]).await;
        seen.push((name, take(b, "p").await));
    }
    assert_eq!(seen, [("memory", vec![]), ("redis", vec![])]);
}

/// A job leaving with two concurrency keys brings back a job set aside under each: Redis
/// puts the one of the key named last first in line, memory the one of the key named
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bug: jobs brought back from several keys at once line up in opposite orders (memory bring_back vs limits.lua unpark)"]
async fn jobs_brought_back_from_several_keys_at_once_line_up_alike() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        push_all(
            b,
            &[
                limited("c1 A c1 C", "x"),
                limited("c1 A", "y"),
                limited("c1 C", "z"),
            ],
        )
        .await;
        assert_eq!(take(b, "p").await, ["x"], "{name}");
        settle_all(b, "p", |_| Settle::Discard).await;
        seen.push((name, queued(b).await));
    }
    assert_eq!(seen[0].1, seen[1].1, "{seen:?}");
}

/// A process forgotten with nothing in flight, that fetches again before its next beat,
/// is listed again among the fetchers recovery looks at, on both backends (before,
/// memory listed only processes that beat, so its job sat where no recovery looked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_forgotten_then_fetching_again_is_listed_for_recovery_on_both_backends() {
    let mut seen = Vec::new();
    for (name, b) in both_backends().await {
        let b = b.broker.as_ref();
        beat(b, "p", LEASE).await;
        b.forget("p").await.unwrap();
        push_all(b, &[limited("", "x")]).await;
        assert_eq!(take(b, "p").await, ["x"], "{name}");
        let orphans: Vec<(String, usize)> = b
            .orphans("someone else")
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.identity, o.payloads.len()))
            .collect();
        seen.push((name, orphans));
    }
    let listed = vec![("p".to_owned(), 1)];
    assert_eq!(seen, [("memory", listed.clone()), ("redis", listed)]);
}
