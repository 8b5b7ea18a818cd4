//! What one run of a job costs, against its [`Budget`]: the memory it allocates, holds at
//! its peak and leaves behind, and how long it takes.
//!
//! Memory is counted by [`TrackingAllocator`], which a service installs as its global
//! allocator. The worker marks each poll of a job's future with the job's account, so the
//! allocations and frees made while the job's code runs are charged to it, even with many
//! jobs interleaved on one thread; what runs outside a job is charged to none.
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: jobqueue::budget::TrackingAllocator = jobqueue::budget::TrackingAllocator::system();
//! # fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::job::Budget;

/// A global allocator that charges allocations to the job being polled, wrapping the
/// system allocator or any other.
///
/// Its cost is a thread-local read per allocation and, inside a job, three atomic
/// additions (BENCHMARKS.md has the figures).
pub struct TrackingAllocator<A = System> {
    inner: A,
}

impl TrackingAllocator<System> {
    /// Tracking over the system allocator.
    pub const fn system() -> Self {
        Self { inner: System }
    }
}

impl<A> TrackingAllocator<A> {
    /// Tracking over `inner` (jemalloc, mimalloc, ...).
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

thread_local! {
    /// The account of the job being polled on this thread, or null. A constant
    /// initializer and no destructor: reading it never allocates.
    static CURRENT: Cell<*const Account> = const { Cell::new(std::ptr::null()) };
}

/// Set by the first allocation through a [`TrackingAllocator`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether a [`TrackingAllocator`] is the global allocator (it has allocated).
pub fn is_tracking() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

fn charge(bytes: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let account = CURRENT.try_with(Cell::get).unwrap_or(std::ptr::null());
    // SAFETY: a non-null pointer is set only by `Tracked::poll`, which holds an `Arc` of
    // the account for as long as the pointer is set.
    if let Some(account) = unsafe { account.as_ref() } {
        account.charge(bytes as u64);
    }
}

fn credit(bytes: usize) {
    let account = CURRENT.try_with(Cell::get).unwrap_or(std::ptr::null());
    // SAFETY: as in `charge`.
    if let Some(account) = unsafe { account.as_ref() } {
        account.credit(bytes as u64);
    }
}

// SAFETY: every call goes to `inner` unchanged; the bookkeeping around it allocates nothing.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            charge(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            charge(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.inner.dealloc(ptr, layout) };
        credit(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            credit(layout.size());
            charge(new_size);
        }
        moved
    }
}

/// The memory one run has used so far.
#[derive(Debug, Default)]
pub(crate) struct Account {
    allocated: AtomicU64,
    live: AtomicI64,
    peak: AtomicI64,
}

impl Account {
    fn charge(&self, bytes: u64) {
        let bytes = bytes as i64;
        self.allocated.fetch_add(bytes as u64, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn credit(&self, bytes: u64) {
        self.live.fetch_sub(bytes as i64, Ordering::Relaxed);
    }

    /// What the run used, when a tracking allocator counted it.
    pub(crate) fn memory(&self) -> Option<Memory> {
        is_tracking().then(|| Memory {
            allocated: self.allocated.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed).max(0) as u64,
            retained: self.live.load(Ordering::Relaxed).max(0) as u64,
        })
    }
}

/// The memory of one run, as the [`TrackingAllocator`] counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Memory {
    /// Bytes allocated in all, freed or not.
    pub allocated: u64,
    /// The most bytes the run held at once.
    pub peak: u64,
    /// Bytes the run allocated and had not freed when it ended (frees of memory allocated
    /// elsewhere count against it too, as they happen inside it).
    pub retained: u64,
}

pin_project_lite::pin_project! {
    /// A future whose polls are charged to `account`.
    pub(crate) struct Tracked<F> {
        account: Arc<Account>,
        #[pin]
        inner: F,
    }
}

impl<F> Tracked<F> {
    pub(crate) fn new(account: Arc<Account>, inner: F) -> Self {
        Self { account, inner }
    }
}

/// Puts back the account that was current before a poll, even if the poll panics.
struct Restore(*const Account);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|current| current.set(self.0));
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let account: *const Account = Arc::as_ptr(this.account);
        let previous = CURRENT
            .try_with(|current| current.replace(account))
            .unwrap_or(std::ptr::null());
        let _restore = Restore(previous);
        this.inner.poll(cx)
    }
}

/// How often a class runs, which sets its time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// 60 or more runs a minute: 1 s.
    Frequent,
    /// Fewer: 5 s.
    Rare,
    /// Bulk work: no time limit, but never inside quiet windows.
    Bulk,
}

impl Tier {
    /// The tier of a class run `runs_per_minute` times a minute.
    pub fn of(bulk: bool, runs_per_minute: u64) -> Self {
        if bulk {
            Tier::Bulk
        } else if runs_per_minute >= Budget::FREQUENT_PER_MINUTE {
            Tier::Frequent
        } else {
            Tier::Rare
        }
    }

    /// Its name, as reports show it.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Frequent => "frequent",
            Tier::Rare => "rare",
            Tier::Bulk => "bulk",
        }
    }

    fn runs_per_minute(self) -> u64 {
        match self {
            Tier::Frequent => Budget::FREQUENT_PER_MINUTE,
            _ => 0,
        }
    }
}

/// Which limit a run went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// More memory held at once than `alloc`.
    Alloc,
    /// More memory left allocated than `retained`.
    Retained,
    /// Longer than its time limit.
    Time,
    /// Longer than 5 s without being bulk work: it should be split or made bulk.
    Misclassified,
}

impl Limit {
    /// Its name in reports, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Alloc => "alloc",
            Limit::Retained => "retained",
            Limit::Time => "time",
            Limit::Misclassified => "misclassified",
        }
    }
}

/// A run over one of its limits: the figure and the limit, in bytes or microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Overrun {
    /// The limit.
    pub limit: Limit,
    /// What the run used.
    pub figure: u64,
    /// What it may use.
    pub allowed: u64,
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit {
            Limit::Alloc => write!(f, "held {} at its peak, over the alloc budget of {}", size(self.figure), size(self.allowed)),
            Limit::Retained => write!(f, "retained {}, over the retained budget of {}", size(self.figure), size(self.allowed)),
            Limit::Time => write!(f, "ran {:?}, over the time budget of {:?}", micros(self.figure), micros(self.allowed)),
            Limit::Misclassified => write!(
                f,
                "ran {:?}, longer than {:?}: work this long must be a bulk job (`#[job(bulk)]`) or be split into steps",
                micros(self.figure),
                micros(self.allowed)
            ),
        }
    }
}

fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// Bytes as a short figure: "12.3 MB".
pub fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} KB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// The limits one run went over: memory (when counted) against `budget`, time against
/// the budget's time or the tier's.
pub fn check(budget: &Budget, tier: Tier, memory: Option<Memory>, ran: Duration) -> Vec<Overrun> {
    let mut over = Vec::new();
    if let Some(memory) = memory {
        for (limit, figure, allowed) in [
            (Limit::Alloc, memory.peak, budget.alloc_limit()),
            (Limit::Retained, memory.retained, budget.retained_limit()),
        ] {
            if figure > allowed {
                over.push(Overrun {
                    limit,
                    figure,
                    allowed,
                });
            }
        }
    }
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    if tier != Tier::Bulk {
        let allowed = budget.time_limit(tier.runs_per_minute());
        if ran > allowed {
            over.push(Overrun {
                limit: Limit::Time,
                figure: us(ran),
                allowed: us(allowed),
            });
        }
        if ran > Budget::RARE_TIME {
            over.push(Overrun {
                limit: Limit::Misclassified,
                figure: us(ran),
                allowed: us(Budget::RARE_TIME),
            });
        }
    }
    over
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn limits_by_tier_and_budget() {
        let memory = Memory {
            allocated: 500 * MB,
            peak: 101 * MB,
            retained: 2 * MB,
        };
        let over = check(
            &Budget::DEFAULT,
            Tier::Frequent,
            Some(memory),
            Duration::from_millis(1_500),
        );
        let limits: Vec<Limit> = over.iter().map(|o| o.limit).collect();
        assert_eq!(limits, [Limit::Alloc, Limit::Time]);
        assert!(over[0].to_string().contains("101.0 MB"), "{}", over[0]);

        // Rare: 1.5 s is within 5 s; 6 s is over and misclassified.
        assert!(check(
            &Budget::DEFAULT,
            Tier::Rare,
            None,
            Duration::from_millis(1_500)
        )
        .is_empty());
        let limits: Vec<Limit> = check(&Budget::DEFAULT, Tier::Rare, None, Duration::from_secs(6))
            .iter()
            .map(|o| o.limit)
            .collect();
        assert_eq!(limits, [Limit::Time, Limit::Misclassified]);
        // Bulk: no time limit at all.
        assert!(check(&Budget::DEFAULT, Tier::Bulk, None, Duration::from_secs(600)).is_empty());

        // A job's own budget replaces the defaults.
        let own = Budget {
            alloc: Some(200 * MB),
            retained: Some(MB),
            time: Some(Duration::from_secs(2)),
        };
        let limits: Vec<Limit> = check(
            &own,
            Tier::Frequent,
            Some(memory),
            Duration::from_millis(1_500),
        )
        .iter()
        .map(|o| o.limit)
        .collect();
        assert_eq!(limits, [Limit::Retained]);
    }

    #[test]
    fn tiers_from_rates() {
        assert_eq!(Tier::of(false, 60), Tier::Frequent);
        assert_eq!(Tier::of(false, 59), Tier::Rare);
        assert_eq!(Tier::of(true, 1_000), Tier::Bulk);
    }
}
