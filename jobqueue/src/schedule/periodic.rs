//! Periodic jobs: on a cron schedule in a time zone, or every fixed interval.
//!
//! Every worker process that registers a periodic job runs its ticks, and each tick is
//! claimed once, atomically, in the broker (`periodic:NAME:TICK`): however many processes
//! run, each tick enqueues one job. A tick missed while no process ran is enqueued late if
//! it is at most `periodic_grace` old, and skipped (and logged) otherwise.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde_json::{json, Value};

use super::window::quiet_until;
use crate::client::Admitted;
use crate::envelope::{encode_args, epoch_seconds, Envelope, Retry};
use crate::error::Error;
use crate::job::{Job, JobOptions};
use crate::middleware::Origin;
use crate::worker::Shared;

/// How many ticks are looked at per job and round, at most.
const MAX_TICKS: usize = 10_000;
/// A tick's claim outlives the grace period by this much, so no late process claims it.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// The longest the loop sleeps, so a changed clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// When a periodic job ticks.
#[derive(Clone, Debug)]
enum Every {
    /// Every `interval`, at whole multiples of it since the Unix epoch (so every process
    /// agrees on the ticks).
    Interval(Duration),
    /// On a cron schedule, read in a time zone.
    Cron(Box<CronSchedule>),
}

#[derive(Clone, Debug)]
struct CronSchedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

/// A job enqueued on a schedule; register it with `WorkerBuilder::periodic`.
#[derive(Clone, Debug)]
pub struct Periodic {
    name: String,
    every: Every,
    class: &'static str,
    args: Vec<Value>,
    options: &'static JobOptions,
}

impl Periodic {
    /// Enqueues `job` on the cron schedule `expr`, read in `tz`: 5 fields
    /// (`"0 3 * * *"`), 6 with seconds first (`"*/10 * * * * *"`), or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`. `name` identifies the schedule across processes.
    pub fn cron<J: Job>(
        name: impl Into<String>,
        expr: &str,
        tz: Tz,
        job: &J,
    ) -> Result<Self, Error> {
        let name = name.into();
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| Error::Config(format!("periodic job `{name}`: cron `{expr}`: {e}")))?;
        let schedule = CronSchedule {
            cron,
            tz,
            expr: expr.to_owned(),
        };
        Self::new(name, Every::Cron(Box::new(schedule)), job)
    }

    /// Enqueues `job` every `interval` (at least a millisecond).
    pub fn every<J: Job>(
        name: impl Into<String>,
        interval: Duration,
        job: &J,
    ) -> Result<Self, Error> {
        let name = name.into();
        if interval < Duration::from_millis(1) {
            return Err(Error::Config(format!(
                "periodic job `{name}`: the interval must be at least 1 ms"
            )));
        }
        Self::new(name, Every::Interval(interval), job)
    }

    fn new<J: Job>(name: String, every: Every, job: &J) -> Result<Self, Error> {
        if name.is_empty() || name.contains(':') {
            return Err(Error::Config(format!(
                "periodic job name `{name}` must be non-empty and without `:`"
            )));
        }
        let args = encode_args(job).map_err(|source| Error::Serialize {
            class: J::NAME,
            source,
        })?;
        Ok(Self {
            name,
            every,
            class: J::NAME,
            args,
            options: &J::OPTIONS,
        })
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first tick after `after`.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.every {
            Every::Interval(interval) => {
                let step = i64::try_from(interval.as_millis()).ok()?.max(1);
                let k = after.timestamp_millis().div_euclid(step) + 1;
                Utc.timestamp_millis_opt(k.checked_mul(step)?).single()
            }
            Every::Cron(schedule) => schedule
                .cron
                .find_next_occurrence(&after.with_timezone(&schedule.tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The ticks in `(after, until]`, at most [`MAX_TICKS`], earliest first.
    pub fn ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::new();
        let mut t = after;
        while ticks.len() < MAX_TICKS {
            match self.next_tick(t) {
                Some(next) if next <= until => {
                    ticks.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        ticks
    }

    fn describe(&self) -> String {
        match &self.every {
            Every::Interval(i) => format!("every {i:?}"),
            Every::Cron(schedule) => format!("cron `{}` ({})", schedule.expr, schedule.tz),
        }
    }

    fn claim_key(&self, tick: DateTime<Utc>) -> String {
        format!("periodic:{}:{}", self.name, tick.timestamp_millis())
    }

    fn last_key(&self) -> String {
        format!("periodic:{}:last", self.name)
    }
}

/// Runs the periodic jobs of this process until it stops taking work.
pub(crate) async fn run(shared: Arc<Shared>) {
    if shared.periodic.is_empty() {
        return;
    }
    let grace = chrono::Duration::from_std(shared.config.periodic_grace).unwrap_or_default();
    let start = Utc::now();
    let mut checked: Vec<DateTime<Utc>> = Vec::with_capacity(shared.periodic.len());
    for periodic in &shared.periodic {
        report_missed(&shared, periodic, start - grace).await;
        checked.push(catch_up(&shared, periodic, start - grace, start).await);
    }
    let mut state = shared.state.subscribe();
    while shared.is_running() {
        let now = Utc::now();
        for (periodic, checked) in shared.periodic.iter().zip(checked.iter_mut()) {
            for tick in periodic.ticks(*checked, now) {
                match fire(
                    &shared,
                    periodic,
                    tick,
                    now - tick > chrono::Duration::seconds(1),
                )
                .await
                {
                    Ok(()) => *checked = tick,
                    Err(e) => {
                        tracing::warn!(
                            "periodic job `{}`: tick {tick}: {e}; trying again",
                            periodic.name
                        );
                        break;
                    }
                }
            }
        }
        let next = shared
            .periodic
            .iter()
            .filter_map(|p| p.next_tick(now))
            .min();
        let wait = next
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or_default()
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.changed() => {}
        }
    }
}

/// Enqueues the latest tick in `(from, until]`, if any, once: a process coming back after
/// missing several ticks runs the job once, not once per tick. Returns the time up to which
/// ticks are handled.
async fn catch_up(
    shared: &Shared,
    periodic: &Periodic,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> DateTime<Utc> {
    let missed = periodic.ticks(from, until);
    let Some(&latest) = missed.last() else {
        return until;
    };
    if missed.len() > 1 {
        tracing::info!(
            "periodic job `{}`: {} ticks within the grace period; only the latest, {latest}, is due",
            periodic.name,
            missed.len()
        );
    }
    match fire(shared, periodic, latest, true).await {
        Ok(()) => until,
        Err(e) => {
            tracing::warn!(
                "periodic job `{}`: tick {latest}: {e}; trying again",
                periodic.name
            );
            latest - chrono::Duration::milliseconds(1)
        }
    }
}

/// Logs the ticks no process enqueued since the last one was, older than the grace period.
async fn report_missed(shared: &Shared, periodic: &Periodic, horizon: DateTime<Utc>) {
    let last = match shared.broker.lock_holder(&periodic.last_key()).await {
        Ok(last) => last.and_then(|ms| ms.parse::<i64>().ok()),
        Err(e) => {
            tracing::warn!(
                "periodic job `{}`: reading its last tick: {e}",
                periodic.name
            );
            return;
        }
    };
    let Some(last) = last.and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
        return;
    };
    let missed = periodic.ticks(last, horizon);
    if let (Some(first), Some(latest)) = (missed.first(), missed.last()) {
        tracing::warn!(
            "periodic job `{}` ({}): {} tick(s) from {first} to {latest} were missed while no \
             process ran it; they are older than the grace period and are skipped",
            periodic.name,
            periodic.describe(),
            missed.len(),
        );
    }
}

/// Claims `tick` and, if this process won it, enqueues the job through the client chain.
async fn fire(
    shared: &Shared,
    periodic: &Periodic,
    tick: DateTime<Utc>,
    late: bool,
) -> Result<(), Error> {
    let ttl = shared.config.periodic_grace + CLAIM_MARGIN;
    let claimed = shared
        .broker
        .lock(&periodic.claim_key(tick), &shared.identity, ttl)
        .await?
        .is_none();
    if !claimed {
        return Ok(());
    }
    let tick_ms = tick.timestamp_millis().to_string();
    let keep = Duration::from_secs(400 * 24 * 3600);
    shared
        .broker
        .lock_force(&periodic.last_key(), &tick_ms, keep)
        .await?;

    let mut envelope = Envelope::new(
        periodic.class,
        periodic.options.queue,
        periodic.args.clone(),
    );
    envelope.retry = Retry::Count(periodic.options.retry.job_retries);
    envelope.extra.insert(
        "periodic".into(),
        json!({ "name": periodic.name, "tick": epoch_seconds(tick.into()) }),
    );
    // A bulk job's tick inside a quiet window waits for its end.
    let at = periodic
        .options
        .bulk
        .then(|| quiet_until(&shared.config.quiet_windows, tick.max(Utc::now())))
        .flatten()
        .map(|end| epoch_seconds(end.into()));
    let jid = envelope.jid.clone();
    match shared
        .client
        .admit(envelope, at, Some(periodic.options), Origin::Periodic)
        .await
    {
        Ok(Admitted::Push(push, _)) => {
            shared.broker.push(&[push]).await?;
            if late {
                tracing::info!(
                    "periodic job `{}`: tick {tick} enqueued late, within the grace period",
                    periodic.name
                );
            }
        }
        Ok(Admitted::Existing(existing)) => {
            tracing::info!(
                "periodic job `{}`: tick {tick}: job {existing} stands for {jid}",
                periodic.name
            );
        }
        Err(Error::Skipped { reason, .. }) => {
            tracing::info!(
                "periodic job `{}`: tick {tick} not enqueued: {reason}",
                periodic.name
            );
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nightly;
    impl Job for Nightly {
        const NAME: &'static str = "Nightly";
        const OPTIONS: JobOptions = JobOptions::DEFAULT;
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn cron_ticks_follow_the_time_zone() {
        let p = Periodic::cron(
            "nightly",
            "0 3 * * *",
            chrono_tz::America::New_York,
            &Nightly,
        )
        .unwrap();
        // 03:00 in New York is 08:00 UTC in winter, 07:00 UTC in summer.
        assert_eq!(
            p.next_tick(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            p.next_tick(utc("2026-07-10T00:00:00Z")),
            Some(utc("2026-07-10T07:00:00Z"))
        );
        let week = p.ticks(utc("2026-01-10T00:00:00Z"), utc("2026-01-17T00:00:00Z"));
        assert_eq!(week.len(), 7);
    }

    #[test]
    fn nicknames_and_seconds() {
        let hourly = Periodic::cron("h", "@hourly", chrono_tz::UTC, &Nightly).unwrap();
        assert_eq!(
            hourly.next_tick(utc("2026-01-10T10:30:00Z")),
            Some(utc("2026-01-10T11:00:00Z"))
        );
        let daily = Periodic::cron("d", "@daily", chrono_tz::UTC, &Nightly).unwrap();
        assert_eq!(
            daily.next_tick(utc("2026-01-10T10:30:00Z")),
            Some(utc("2026-01-11T00:00:00Z"))
        );
        let tens = Periodic::cron("s", "*/10 * * * * *", chrono_tz::UTC, &Nightly).unwrap();
        assert_eq!(
            tens.ticks(utc("2026-01-10T10:00:00Z"), utc("2026-01-10T10:01:00Z"))
                .len(),
            6
        );
        let err = Periodic::cron("bad", "61 * * * *", chrono_tz::UTC, &Nightly).unwrap_err();
        assert!(err.to_string().contains("`bad`"), "{err}");
    }

    #[test]
    fn interval_ticks_are_aligned_so_every_process_agrees() {
        let p = Periodic::every("beat", Duration::from_secs(15), &Nightly).unwrap();
        assert_eq!(
            p.next_tick(utc("2026-01-10T10:00:07Z")),
            Some(utc("2026-01-10T10:00:15Z"))
        );
        assert_eq!(
            p.next_tick(utc("2026-01-10T10:00:15Z")),
            Some(utc("2026-01-10T10:00:30Z"))
        );
        assert_eq!(
            p.ticks(utc("2026-01-10T10:00:00Z"), utc("2026-01-10T10:01:00Z"))
                .len(),
            4
        );
        assert!(Periodic::every("zero", Duration::ZERO, &Nightly).is_err());
    }
}
