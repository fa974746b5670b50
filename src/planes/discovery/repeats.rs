//! Which sightings of a lasting problem to log.
//!
//! A file-backend watch rescans every 200 ms and a keep-alive round runs every third of
//! the TTL, so a problem that stays (a misnamed file, a key another process holds) would
//! be logged on every pass. As the event plane does with its drop counts, a problem is
//! logged at its 1st, 2nd, 4th, 8th… sighting: it is seen at once and again now and then,
//! and a lasting one costs a line per doubling (a file bad for an hour of 200 ms scans,
//! 18,000 sightings, is logged 15 times).

use std::collections::HashMap;
use std::hash::Hash;

/// Problems remembered at most. Past that the table starts afresh: memory stays
/// bounded, and the cost is that problems already seen are logged once more.
const MAX_PROBLEMS: usize = 1024;

/// Sighting counts per problem. A problem is whatever the caller makes it: a file and
/// a fingerprint of its contents (so a file rewritten with other bad contents counts
/// from 1 again), a key and the lease holding it.
pub(super) struct Repeats<K> {
    seen: HashMap<K, u64>,
}

impl<K> Default for Repeats<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Repeats<K> {
    /// Counts a sighting of `problem`; returns the count if this sighting is one to log.
    pub(super) fn sighted(&mut self, problem: K) -> Option<u64> {
        if self.seen.len() >= MAX_PROBLEMS && !self.seen.contains_key(&problem) {
            self.seen.clear();
        }
        let count = self.seen.entry(problem).or_default();
        *count += 1;
        count.is_power_of_two().then_some(*count)
    }

    /// Forgets the problems `over` picks (they were fixed: should one come back, it is
    /// logged as new); returns whether there were any.
    pub(super) fn forget(&mut self, mut over: impl FnMut(&K) -> bool) -> bool {
        if self.seen.is_empty() {
            return false;
        }
        let before = self.seen.len();
        self.seen.retain(|problem, _| !over(problem));
        self.seen.len() < before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_problem_is_logged_at_powers_of_two() {
        let mut repeats = Repeats::default();
        let logged: Vec<u64> = (0..1000)
            .filter_map(|_| repeats.sighted("bad file"))
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn problems_count_apart_even_when_they_alternate_and_a_forgotten_one_starts_again() {
        let mut repeats = Repeats::default();
        let alternating: Vec<Option<u64>> =
            (0..8).map(|i| repeats.sighted(("file", i % 2))).collect();
        assert_eq!(
            alternating,
            [
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                None,
                None,
                Some(4),
                Some(4)
            ]
        );
        assert!(repeats.forget(|(file, _)| *file == "file"));
        assert!(!repeats.forget(|(file, _)| *file == "file"));
        assert_eq!(
            repeats.sighted(("file", 0)),
            Some(1),
            "back after being fixed"
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut repeats = Repeats::default();
        for problem in 0..10 * MAX_PROBLEMS {
            assert_eq!(repeats.sighted(problem), Some(1));
            assert!(repeats.seen.len() <= MAX_PROBLEMS);
        }
    }
}
