//! Quiet windows: daily periods, in a time zone, when bulk jobs do not run (operational
//! hours, say 11:00 to 15:00 local time). A bulk job fetched inside one, or a periodic tick
//! of a bulk job that falls inside one, waits for the window's end.

use chrono::{DateTime, LocalResult, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::Error;

/// A daily window from `start` to `end` local time; it crosses midnight when `end` is
/// earlier than `start`.
///
/// ```
/// use jobqueue::schedule::QuietWindow;
/// let window = QuietWindow::daily("11:00", "15:00", chrono_tz::Europe::Berlin)?;
/// # Ok::<_, jobqueue::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct QuietWindow {
    start: NaiveTime,
    end: NaiveTime,
    tz: Tz,
}

impl QuietWindow {
    /// A window from `start` to `end` (`"HH:MM"`), every day, in `tz`.
    pub fn daily(start: &str, end: &str, tz: Tz) -> Result<Self, Error> {
        let parse = |text: &str| {
            NaiveTime::parse_from_str(text, "%H:%M").map_err(|e| {
                Error::Config(format!(
                    "quiet window time `{text}` is not HH:MM (24-hour), as in \"11:00\": {e}"
                ))
            })
        };
        let (start, end) = (parse(start)?, parse(end)?);
        if start == end {
            return Err(Error::Config(
                "a quiet window must not start and end at the same time".into(),
            ));
        }
        Ok(Self { start, end, tz })
    }

    /// The end of this window, if `at` falls inside it.
    pub fn end_if_inside(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&self.tz).date_naive();
        // The window that contains `at` started today or, crossing midnight, yesterday.
        [today.pred_opt(), Some(today)]
            .into_iter()
            .flatten()
            .find_map(|start_day| {
                let end_day = if self.end > self.start {
                    start_day
                } else {
                    start_day.succ_opt()?
                };
                let start = self.instant(start_day.and_time(self.start))?;
                let end = self.instant(end_day.and_time(self.end))?;
                (start <= at && at < end).then_some(end)
            })
    }

    /// A local time as an instant; across a DST gap, the first instant after it.
    fn instant(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => self
                .tz
                .from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// When the quiet windows around `at` are over, if `at` is inside one (windows that meet
/// or overlap count as one).
pub(crate) fn quiet_until(windows: &[QuietWindow], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut until = None;
    let mut t = at;
    for _ in 0..=windows.len() {
        match windows.iter().find_map(|w| w.end_if_inside(t)) {
            Some(end) => {
                until = Some(end);
                t = end;
            }
            None => break,
        }
    }
    until
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn operational_hours_in_berlin() {
        let w = QuietWindow::daily("11:00", "15:00", Berlin).unwrap();
        // Winter: Berlin is UTC+1, so 11:00-15:00 local is 10:00-14:00 UTC.
        assert_eq!(w.end_if_inside(utc("2026-01-15T09:59:59Z")), None);
        assert_eq!(
            w.end_if_inside(utc("2026-01-15T10:00:00Z")),
            Some(utc("2026-01-15T14:00:00Z"))
        );
        assert_eq!(
            w.end_if_inside(utc("2026-01-15T13:59:59Z")),
            Some(utc("2026-01-15T14:00:00Z"))
        );
        assert_eq!(w.end_if_inside(utc("2026-01-15T14:00:00Z")), None);
        // Summer: UTC+2.
        assert_eq!(
            w.end_if_inside(utc("2026-07-15T09:30:00Z")),
            Some(utc("2026-07-15T13:00:00Z"))
        );
    }

    #[test]
    fn windows_may_cross_midnight() {
        let w = QuietWindow::daily("22:00", "02:00", chrono_tz::UTC).unwrap();
        assert_eq!(
            w.end_if_inside(utc("2026-03-01T23:00:00Z")),
            Some(utc("2026-03-02T02:00:00Z"))
        );
        assert_eq!(
            w.end_if_inside(utc("2026-03-02T01:00:00Z")),
            Some(utc("2026-03-02T02:00:00Z"))
        );
        assert_eq!(w.end_if_inside(utc("2026-03-02T03:00:00Z")), None);
    }

    #[test]
    fn adjoining_windows_count_as_one() {
        let windows = [
            QuietWindow::daily("11:00", "13:00", chrono_tz::UTC).unwrap(),
            QuietWindow::daily("13:00", "15:00", chrono_tz::UTC).unwrap(),
        ];
        assert_eq!(
            quiet_until(&windows, utc("2026-03-01T12:00:00Z")),
            Some(utc("2026-03-01T15:00:00Z"))
        );
        assert_eq!(quiet_until(&windows, utc("2026-03-01T16:00:00Z")), None);
    }

    #[test]
    fn bad_times_are_refused_with_the_format() {
        let err = QuietWindow::daily("11", "15:00", Berlin).unwrap_err();
        assert!(err.to_string().contains("HH:MM"), "{err}");
        assert!(QuietWindow::daily("11:00", "11:00", Berlin).is_err());
    }
}
