//! Latency statistics of the benches (pure): percentiles, a summary, and which
//! message a payload is about. Kept apart from the I/O so the arithmetic that the
//! figures rest on is tested on its own.

use serde::Serialize;

/// The nearest-rank percentile (`q` in 0..=1) of `sorted` (ascending): the smallest
/// value with at least `q` of the values at or below it. Nearest-rank, not
/// interpolated, so every figure reported is a latency some message really had, and
/// p100 is the maximum.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// What a set of latencies looks like, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarizes `latencies_ms` (any order); all zero when there are none.
    pub fn of(latencies_ms: &[f64]) -> Self {
        let mut sorted = latencies_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q| percentile(&sorted, q).unwrap_or(0.0);
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<f64>() / sorted.len() as f64
        };
        Self {
            count: sorted.len(),
            mean_ms: mean,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The index `i` of the first `{marker}{i}` in `payload` (`marker` like
/// `wamid.e2e.RUN.`): how a receiver matches what arrived, in whatever envelope, to
/// the message it was sent as, without parsing the envelope.
pub fn index_after(payload: &[u8], marker: &str) -> Option<usize> {
    let marker = marker.as_bytes();
    let start = payload.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits = payload[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_values_that_occurred() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(50.0));
        assert_eq!(percentile(&values, 0.95), Some(95.0));
        assert_eq!(percentile(&values, 0.99), Some(99.0));
        assert_eq!(percentile(&values, 1.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        // Ten values: p99 is the largest, not something between the two largest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 0.99), Some(10.0));
        assert_eq!(percentile(&ten, 0.5), Some(5.0));
        assert_eq!(percentile(&[7.0], 0.5), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_summary_sorts_for_itself_and_is_zero_when_empty() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 10.0);
        assert_eq!(s.max_ms, 10.0);
        assert_eq!(s.mean_ms, 4.0);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn the_index_is_read_after_the_marker_only() {
        let marker = "wamid.e2e.42.";
        let payload = br#"{"id":"wamid.e2e.42.1234","wamid":"wamid.e2e.42.1234"}"#;
        assert_eq!(index_after(payload, marker), Some(1234));
        assert_eq!(index_after(br#"{"id":"wamid.e2e.43.7"}"#, marker), None);
        assert_eq!(index_after(br#"{"id":"wamid.e2e.42.p1"}"#, marker), None);
        assert_eq!(index_after(b"", marker), None);
    }
}
