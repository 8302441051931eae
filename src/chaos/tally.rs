//! What was sent against what a store holds: lost and duplicated, per store. Pure.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

/// One store's (or one view of a store's) account of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// e.g. `mongodb.messages`.
    pub store: String,
    /// Distinct items it must hold.
    pub expected: usize,
    /// Expected items it holds at least once.
    pub present: usize,
    /// Expected items it does not hold.
    pub lost: usize,
    /// Copies beyond the first, over every expected item.
    pub duplicated: usize,
    /// A few lost and duplicated items, to start debugging from.
    pub lost_sample: Vec<String>,
    pub duplicated_sample: Vec<String>,
}

impl Tally {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

const SAMPLE: usize = 5;

/// Compares `expected` with `observed` (item → copies held). Items the store holds
/// that were not expected (another run's, say) are ignored: the queries are scoped
/// to the run, and an extra item is neither lost nor a duplicate of a sent one.
pub fn tally(store: &str, expected: &BTreeSet<String>, observed: &HashMap<String, u64>) -> Tally {
    let mut t = Tally {
        store: store.to_string(),
        expected: expected.len(),
        present: 0,
        lost: 0,
        duplicated: 0,
        lost_sample: Vec::new(),
        duplicated_sample: Vec::new(),
    };
    for item in expected {
        match observed.get(item).copied().unwrap_or(0) {
            0 => {
                t.lost += 1;
                if t.lost_sample.len() < SAMPLE {
                    t.lost_sample.push(item.clone());
                }
            }
            copies => {
                t.present += 1;
                if copies > 1 {
                    t.duplicated += (copies - 1) as usize;
                    if t.duplicated_sample.len() < SAMPLE {
                        t.duplicated_sample.push(format!("{item} ×{copies}"));
                    }
                }
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_missing_items_and_extra_copies() {
        let expected = set(&["a", "b", "c"]);
        let observed = HashMap::from([("a".into(), 1), ("b".into(), 3), ("zzz".into(), 2)]);
        let t = tally("s", &expected, &observed);
        assert_eq!((t.present, t.lost, t.duplicated), (2, 1, 2));
        assert_eq!(t.lost_sample, vec!["c"]);
        assert_eq!(t.duplicated_sample, vec!["b ×3"]);
        assert!(!t.clean());
    }

    #[test]
    fn exactly_once_is_clean() {
        let expected = set(&["a", "b"]);
        let observed = HashMap::from([("a".into(), 1), ("b".into(), 1)]);
        assert!(tally("s", &expected, &observed).clean());
    }

    proptest! {
        /// present + lost = expected, and duplicates are exactly the extra copies.
        #[test]
        fn accounts_for_every_expected_item(copies in proptest::collection::vec(0u64..4, 0..50)) {
            let expected: BTreeSet<String> = (0..copies.len()).map(|i| i.to_string()).collect();
            let observed: HashMap<String, u64> =
                copies.iter().enumerate().map(|(i, c)| (i.to_string(), *c)).collect();
            let t = tally("s", &expected, &observed);
            prop_assert_eq!(t.present + t.lost, t.expected);
            prop_assert_eq!(t.lost, copies.iter().filter(|c| **c == 0).count());
            let extra: u64 = copies.iter().map(|c| c.saturating_sub(1)).sum();
            prop_assert_eq!(t.duplicated as u64, extra);
        }
    }
}
