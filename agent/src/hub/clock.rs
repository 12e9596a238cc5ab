//! Wall-clock sanity: a clock before this build was made is obviously wrong (a Raspberry Pi
//! without RTC boots in 1970 until NTP has synced). SAS tokens signed with such a clock are
//! expired on arrival, so the session waits for a plausible clock instead of hammering the hub.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Slack below the build time: builders and gateways may disagree on time zones or be a
/// little off.
pub const SLACK: Duration = Duration::from_hours(24);

/// When this binary was built (`SOURCE_DATE_EPOCH` if it was set, see `agent/build.rs`).
pub fn build_time() -> SystemTime {
    let secs: u64 = env!("TWINBRIDGE_BUILD_EPOCH")
        .parse()
        .expect("build.rs writes a decimal number of seconds");
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The earliest wall-clock time considered plausible.
pub fn earliest_plausible() -> SystemTime {
    plausible_after(build_time())
}

/// The earliest plausible time for a binary built at `built`.
pub fn plausible_after(built: SystemTime) -> SystemTime {
    built
        .checked_sub(SLACK)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

/// Whether `now` is a plausible wall-clock time for this binary.
pub fn is_plausible(now: SystemTime) -> bool {
    now >= earliest_plausible()
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch, rounded up (0 for a clock before it): a token expiring at
/// this second lives at least as long as asked.
pub fn epoch_secs_ceil(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_in_1970_is_implausible() {
        assert!(!is_plausible(UNIX_EPOCH));
        assert!(!is_plausible(UNIX_EPOCH + Duration::from_hours(24 * 365)));
    }

    #[test]
    fn now_is_plausible() {
        assert!(is_plausible(SystemTime::now()));
    }

    #[test]
    fn slack_of_a_day() {
        let built = UNIX_EPOCH + Duration::from_hours(500_000);
        let earliest = plausible_after(built);
        assert_eq!(
            built.duration_since(earliest).expect("earlier"),
            Duration::from_hours(24)
        );
        assert_eq!(plausible_after(UNIX_EPOCH), UNIX_EPOCH);
    }

    #[test]
    fn epoch_seconds_round_as_documented() {
        let t = UNIX_EPOCH + Duration::from_millis(10_001);
        assert_eq!((epoch_secs(t), epoch_secs_ceil(t)), (10, 11));
        let t = UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!((epoch_secs(t), epoch_secs_ceil(t)), (10, 10));
        let before = UNIX_EPOCH
            .checked_sub(Duration::from_secs(5))
            .expect("representable");
        assert_eq!((epoch_secs(before), epoch_secs_ceil(before)), (0, 0));
    }

    #[test]
    fn build_time_is_recent_enough() {
        // Any build of this code is from after this code was written (2026).
        assert!(build_time() > UNIX_EPOCH + Duration::from_hours(490_896));
    }
}
