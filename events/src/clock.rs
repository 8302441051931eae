//! The one clock: milliseconds since the Unix epoch. Pure decisions (the router's
//! machine, the notifier, the status tracker, the whatsapp sink's window) never
//! read it themselves: their edge reads it once and passes the time in, so tests
//! drive them with any time they like.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2025_and_moves_forward() {
        let a = super::now_ms();
        assert!(a > 1_735_689_600_000, "{a}");
        assert!(super::now_ms() >= a);
    }
}
