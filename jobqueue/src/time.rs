//! The one clock both brokers and the engine read, and the conversion between
//! [`SystemTime`] (the public API) and float epoch seconds (Sidekiq's wire format and the
//! sorted-set scores).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current time in float epoch seconds.
pub(crate) fn now() -> f64 {
    epoch_seconds(SystemTime::now())
}

/// A time in float epoch seconds; times before 1970 are 0.
pub(crate) fn epoch_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The time `seconds` after the epoch; negative, NaN or out-of-range values clamp to the
/// epoch or to the far future rather than panic.
pub(crate) fn from_epoch(seconds: f64) -> SystemTime {
    if !seconds.is_finite() || seconds <= 0.0 {
        return if seconds == f64::INFINITY {
            far_future()
        } else {
            UNIX_EPOCH
        };
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or_else(far_future)
}

fn far_future() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799) // 9999-12-31T23:59:59Z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_round_trip_and_clamp() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let back = from_epoch(epoch_seconds(t));
        let drift = back.duration_since(t).unwrap_or_else(|e| e.duration());
        assert!(drift < Duration::from_micros(1), "{drift:?}");
        assert_eq!(from_epoch(-5.0), UNIX_EPOCH);
        assert_eq!(from_epoch(f64::NAN), UNIX_EPOCH);
        assert!(from_epoch(f64::INFINITY) > SystemTime::now());
        assert!(from_epoch(1e300) > SystemTime::now());
    }
}
