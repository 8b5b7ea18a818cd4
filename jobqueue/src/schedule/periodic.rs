//! Periodic jobs: on a cron schedule in a time zone, or every fixed interval.
//!
//! This module says when a periodic job ticks; the worker's ticker fires the ticks. Every
//! worker process that registers a periodic job runs its ticks, and each tick is claimed
//! once, atomically, in the broker: however many processes run, each tick enqueues one job.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde_json::{json, Value};

use crate::envelope::{encode_args, Envelope, Retry};
use crate::error::Error;
use crate::job::{Job, JobOptions};
use crate::time::epoch_seconds;

/// How many ticks are looked at per job and round, at most.
const MAX_TICKS: usize = 10_000;

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
    pub(crate) name: String,
    every: Every,
    pub(crate) class: &'static str,
    args: Vec<Value>,
    pub(crate) options: &'static JobOptions,
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

    /// The ticks in `(after, until]`, at most 10,000, earliest first.
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

    pub(crate) fn describe(&self) -> String {
        match &self.every {
            Every::Interval(i) => format!("every {i:?}"),
            Every::Cron(schedule) => format!("cron `{}` ({})", schedule.expr, schedule.tz),
        }
    }

    /// The job one tick enqueues.
    pub(crate) fn envelope(&self, tick: DateTime<Utc>) -> Envelope {
        let mut envelope = Envelope::new(self.class, self.options.queue, self.args.clone());
        envelope.retry = Retry::Count(self.options.retry.job_retries);
        envelope.extra.insert(
            "periodic".into(),
            json!({ "name": self.name, "tick": epoch_seconds(tick.into()) }),
        );
        envelope
    }

    pub(crate) fn claim_key(&self, tick: DateTime<Utc>) -> String {
        format!("periodic:{}:{}", self.name, tick.timestamp_millis())
    }

    pub(crate) fn last_key(&self) -> String {
        last_key(&self.name)
    }

    pub(crate) fn paused_key(&self) -> String {
        paused_key(&self.name)
    }

    /// What the ticker publishes for operators' tools, at `now`: the schedule, the job
    /// and its arguments, and the next five ticks.
    pub(crate) fn description(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut next_ticks = Vec::new();
        let mut after = now;
        while next_ticks.len() < 5 {
            let Some(tick) = self.next_tick(after) else {
                break;
            };
            next_ticks.push(epoch_seconds(tick.into()));
            after = tick;
        }
        json!({
            "name": self.name,
            "schedule": self.describe(),
            "class": self.class,
            "queue": self.options.queue,
            "args": self.args,
            "retry": self.options.retry.job_retries,
            "next_tick": next_ticks.first(),
            "next_ticks": next_ticks,
            "published_at": epoch_seconds(now.into()),
        })
    }
}

/// The lock key holding the latest tick of the schedule `name` (epoch milliseconds).
pub(crate) fn last_key(name: &str) -> String {
    format!("periodic:{name}:last")
}

/// The lock key whose presence pauses the schedule `name` until it expires.
pub(crate) fn paused_key(name: &str) -> String {
    format!("periodic:{name}:paused")
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
