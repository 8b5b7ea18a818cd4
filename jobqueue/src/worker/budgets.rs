//! The perform side of budgets: each run's memory and time checked against its job's
//! [`Budget`](crate::Budget) and tier, and every overrun reported: a warning (at most one a
//! minute per class, saying how many it stands for), a metric, and the class's record of
//! violations that the admin command and the dashboard show.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::Shared;
use crate::budget::{self, Memory, Overrun, Tier};
use crate::class_stats::Violation;
use crate::job::{Budget, JobOptions};
use crate::metrics;

/// The shortest gap between two budget warnings of one class.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the worker keeps about budgets between runs.
#[derive(Default)]
pub(crate) struct Budgets {
    /// Per class: when it was last warned about, and the overruns since, not logged.
    warned: Mutex<HashMap<&'static str, (Instant, u64)>>,
    /// Per class, runs per minute over every live process, refreshed now and then.
    global_rates: Mutex<HashMap<String, u64>>,
}

impl Budgets {
    /// Replaces the runs-per-minute figures of every process.
    pub(crate) fn set_global_rates(&self, rates: HashMap<String, u64>) {
        *self.global_rates.lock().unwrap_or_else(|e| e.into_inner()) = rates;
    }

    fn global_rate(&self, class: &str) -> u64 {
        let rates = self.global_rates.lock().unwrap_or_else(|e| e.into_inner());
        rates.get(class).copied().unwrap_or(0)
    }

    /// Logs `over` unless the class was warned about within the last minute.
    fn warn(&self, class: &'static str, jid: &str, tier: Tier, over: &[Overrun]) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = warned.entry(class).or_insert((now - WARN_EVERY, 0));
        if now.duration_since(entry.0) < WARN_EVERY {
            entry.1 += 1;
            return;
        }
        let held_back = std::mem::replace(entry, (now, 0)).1;
        let what: Vec<String> = over.iter().map(ToString::to_string).collect();
        tracing::warn!(
            class,
            jid,
            tier = tier.name(),
            "job over budget: {}{}",
            what.join("; "),
            if held_back > 0 {
                format!(" ({held_back} more runs of this class over budget since the last warning)")
            } else {
                String::new()
            }
        );
    }
}

/// Checks one run and reports what it went over.
pub(crate) fn review(
    shared: &Shared,
    class: &'static str,
    jid: &str,
    options: &JobOptions,
    memory: Option<Memory>,
    ran: Duration,
) -> Vec<Overrun> {
    let budget = &options.budget;
    // A run within every tier's limit needs no rate; the common case takes no lock.
    let quick = ran
        <= budget
            .time
            .unwrap_or(Budget::FREQUENT_TIME)
            .min(Budget::FREQUENT_TIME);
    let tier = |shared: &Shared| {
        let rate = shared
            .class_stats
            .runs_per_minute(class)
            .max(shared.budgets.global_rate(class));
        Tier::of(options.bulk, rate)
    };
    let first_guess = if quick {
        Tier::of(options.bulk, 0)
    } else {
        tier(shared)
    };
    let over = budget::check(budget, first_guess, memory, ran);
    if over.is_empty() {
        return over;
    }
    let tier = if quick { tier(shared) } else { first_guess };
    let at_ms = crate::time::epoch_seconds(SystemTime::now()).max(0.0) as u64 * 1000;
    for overrun in &over {
        metrics::budget_violation(class, overrun.limit.name());
        shared.class_stats.violated(
            class,
            Violation {
                jid: jid.to_owned(),
                limit: overrun.limit.name().to_owned(),
                figure: overrun.figure,
                allowed: overrun.allowed,
                at_ms,
                tier: tier.name().to_owned(),
            },
        );
    }
    shared.budgets.warn(class, jid, tier, &over);
    over
}
