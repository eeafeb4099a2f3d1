//! The gap guard: GoChat's topics are neither compacted nor transactional,
//! so a partition's offsets are contiguous, and a record past the next
//! expected offset means records before it were not readable (a broker that
//! answered a fetch before an earlier batch was stored, as tansu 0.6 did) or
//! are gone (retention, a foreign transactional writer's aborted records).
//!
//! The guard drops records past a gap and has the consumer seek back to the
//! gap, asynchronously: nothing sleeps inline, the partition's other records
//! and the other partitions keep flowing, and each retry is a timer the
//! consumer's receive loop races against. What happens when the gap does not
//! heal after [`GAP_RETRIES`] tries depends on the topic ([`GapPolicy`]).
//!
//! Pure bookkeeping over (partition, offset, now): the consumer performs the
//! seeks, so every rule here is unit-tested without a broker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};

/// Tries before a gap counts as unhealed.
pub const GAP_RETRIES: u32 = 20;
/// Pause before the n-th retry: n times this, capped at [`GAP_RETRY_MAX`].
const GAP_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between retries (also the retry period of a halted partition).
const GAP_RETRY_MAX: Duration = Duration::from_secs(1);

/// What an unhealed gap does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapPolicy {
    /// Accept it with a warning and go on past it: a gateway's push
    /// partition, whose records are best-effort live deliveries (the
    /// recipient recovers anything missed through sync).
    Accept,
    /// Stop consuming the partition at the gap (nothing past it is handed
    /// out or committed), log an error and count it, and keep going back for
    /// the gap once a second: `im.upstream` and `im.task`, where a skipped
    /// record is a lost message, session or membership event.
    Halt,
}

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Take,
    /// Discard it: it lies past a gap being repaired.
    Drop,
    /// Discard it and seek the partition back to this offset.
    Seek(i64),
}

/// Counters the guard moves (the consumer's metrics read them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GapCounts {
    /// Gaps whose missing offset was read after going back for it.
    pub repaired: u64,
    /// Gaps that did not heal within [`GAP_RETRIES`] tries.
    pub unhealed: u64,
    /// Partitions halted at a gap right now ([`GapPolicy::Halt`]).
    pub halted: u64,
}

#[derive(Debug)]
struct Repair {
    /// The first missing offset.
    at: i64,
    tries: u32,
    retry_at: Instant,
    halted: bool,
}

/// The guard's state for one consumer (of one topic).
#[derive(Debug)]
pub struct GapGuard {
    policy: GapPolicy,
    /// Next offset expected per partition, cleared on rebalance.
    expected: HashMap<i32, i64>,
    /// Rebalance count `expected` belongs to.
    generation: u64,
    repairs: HashMap<i32, Repair>,
    /// Partitions already asked for a starting point this generation.
    seeded: HashSet<i32>,
    counts: GapCounts,
}

fn pause(tries: u32) -> Duration {
    (GAP_RETRY_PAUSE * tries).min(GAP_RETRY_MAX)
}

impl GapGuard {
    /// `start`: a partition whose first offset is known (a push partition
    /// starts at the high watermark it resolved).
    pub fn new(policy: GapPolicy, generation: u64, start: Option<(i32, i64)>) -> Self {
        Self {
            policy,
            expected: start.into_iter().collect(),
            generation,
            repairs: HashMap::new(),
            seeded: HashSet::new(),
            counts: GapCounts::default(),
        }
    }

    /// True once per partition and generation while the partition has no
    /// expected offset: the consumer should then [`Self::seed`] it with
    /// the group's committed offset, so a gap right at a member's starting
    /// point (one that halted its predecessor) is seen, not skipped.
    pub fn needs_seed(&mut self, generation: u64, partition: i32) -> bool {
        self.observe_generation(generation);
        !self.expected.contains_key(&partition) && self.seeded.insert(partition)
    }

    /// The offset `partition` should continue at (its committed offset).
    pub fn seed(&mut self, partition: i32, offset: i64) {
        self.expected.entry(partition).or_insert(offset);
    }

    pub fn counts(&self) -> GapCounts {
        self.counts
    }

    /// Forget everything after a rebalance (a partition may come back at
    /// another member's committed offset).
    fn observe_generation(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.expected.clear();
            self.seeded.clear();
            let halted = self.repairs.values().filter(|r| r.halted).count() as u64;
            self.counts.halted -= halted;
            self.repairs.clear();
        }
    }

    /// Check a record at (`partition`, `offset`); `generation` is the
    /// consumer's current rebalance count.
    pub fn check(&mut self, generation: u64, now: Instant, topic: &str, partition: i32, offset: i64) -> Next {
        self.observe_generation(generation);
        if let Some(r) = self.repairs.get(&partition) {
            if offset > r.at {
                return Next::Drop;
            }
            // The missing offset arrived (or the broker moved back before
            // it, e.g. a resume from a commit): follow the broker.
            let r = self.repairs.remove(&partition).expect("repair present");
            if offset == r.at {
                self.counts.repaired += 1;
                debug!(topic, partition, offset, tries = r.tries, "skipped offset read after going back for it");
            }
            if r.halted {
                self.counts.halted -= 1;
                warn!(topic, partition, offset, "halted partition resumed: the gap healed");
            }
        } else if let Some(want) = self.expected.get(&partition).copied() {
            if offset > want {
                debug!(topic, partition, expected = want, got = offset, "offsets skipped; going back for them");
                self.repairs.insert(partition, Repair { at: want, tries: 1, retry_at: now + pause(1), halted: false });
                return Next::Seek(want);
            }
        }
        self.expected.insert(partition, offset + 1);
        Next::Take
    }

    /// The earliest time a retry is due, if a gap is being repaired.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.repairs.values().map(|r| r.retry_at).min()
    }

    /// Retries due at `now`: the (partition, offset) pairs to seek to. A
    /// gap past its tries is accepted or halts its partition (per policy).
    pub fn due(&mut self, now: Instant, topic: &str) -> Vec<(i32, i64)> {
        let mut seeks = Vec::new();
        let mut accepted = Vec::new();
        for (&partition, r) in self.repairs.iter_mut() {
            if r.retry_at > now {
                continue;
            }
            r.tries += 1;
            r.retry_at = now + if r.halted { GAP_RETRY_MAX } else { pause(r.tries) };
            seeks.push((partition, r.at));
            if r.tries <= GAP_RETRIES || r.halted {
                continue;
            }
            r.retry_at = now + GAP_RETRY_MAX;
            self.counts.unhealed += 1;
            match self.policy {
                GapPolicy::Accept => {
                    warn!(
                        topic,
                        partition,
                        expected = r.at,
                        "offsets still missing after {GAP_RETRIES} tries; accepting the gap"
                    );
                    accepted.push(partition);
                }
                GapPolicy::Halt => {
                    error!(
                        topic,
                        partition,
                        expected = r.at,
                        "offsets missing after {GAP_RETRIES} tries: partition halted at the gap (nothing past it is consumed or committed); retrying every second"
                    );
                    r.halted = true;
                    self.counts.halted += 1;
                }
            }
        }
        // Accepted: seek back once more and take whatever comes next.
        for p in accepted {
            self.repairs.remove(&p);
            self.expected.remove(&p);
        }
        seeks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    #[test]
    fn contiguous_offsets_are_taken() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        for o in 0..100 {
            assert_eq!(g.check(0, t, "t", 3, o), Next::Take);
        }
        assert_eq!(g.counts(), GapCounts::default());
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_skipped_offset_is_fetched_again_without_blocking_the_rest() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        assert_eq!(g.check(0, t, "t", 0, 10), Next::Take);
        assert_eq!(g.check(0, t, "t", 0, 12), Next::Seek(11));
        // Prefetched records past the gap are dropped, not taken.
        assert_eq!(g.check(0, t, "t", 0, 13), Next::Drop);
        // Other partitions flow meanwhile.
        assert_eq!(g.check(0, t, "t", 1, 500), Next::Take);
        assert_eq!(g.check(0, t, "t", 1, 501), Next::Take);
        // Nothing due before the pause; then one seek back.
        assert!(g.due(t, "t").is_empty());
        let d = g.next_deadline().unwrap();
        assert_eq!(g.due(d, "t"), vec![(0, 11)]);
        assert_eq!(g.check(0, d, "t", 0, 11), Next::Take);
        assert_eq!(g.check(0, d, "t", 0, 12), Next::Take);
        assert_eq!(g.counts().repaired, 1);
        assert_eq!(g.next_deadline(), None);
    }

    /// Retries until the gap is unhealed; returns the time then.
    fn exhaust(g: &mut GapGuard, t: Instant) -> Instant {
        let mut now = t;
        for _ in 0..GAP_RETRIES {
            now = g.next_deadline().unwrap();
            assert_eq!(g.due(now, "t").len(), 1);
        }
        now
    }

    #[test]
    fn an_unhealed_gap_on_a_push_partition_is_accepted() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Accept, 0, None), Instant::now());
        assert_eq!(g.check(0, t, "t", 0, 0), Next::Take);
        assert_eq!(g.check(0, t, "t", 0, 5), Next::Seek(1));
        let now = exhaust(&mut g, t);
        assert_eq!(g.counts().unhealed, 1);
        // The last seek brings 5 back, and it is taken.
        assert_eq!(g.check(0, now, "t", 0, 5), Next::Take);
        assert_eq!(g.check(0, now, "t", 0, 6), Next::Take);
        assert_eq!(g.counts(), GapCounts { repaired: 0, unhealed: 1, halted: 0 });
    }

    #[test]
    fn an_unhealed_gap_on_upstream_halts_the_partition_until_it_heals() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        assert_eq!(g.check(0, t, "t", 0, 0), Next::Take);
        assert_eq!(g.check(0, t, "t", 0, 5), Next::Seek(1));
        let now = exhaust(&mut g, t);
        assert_eq!(g.counts(), GapCounts { repaired: 0, unhealed: 1, halted: 1 });
        // Nothing past the gap is ever taken, and the guard keeps going back, once a second.
        for i in 0..5 {
            assert_eq!(g.check(0, now, "t", 0, 5 + i), Next::Drop);
        }
        let later = g.next_deadline().unwrap();
        assert_eq!(later - now, GAP_RETRY_MAX);
        assert_eq!(g.due(later, "t"), vec![(0, 1)]);
        assert_eq!(g.counts().unhealed, 1, "counted once");
        // Other partitions are unaffected.
        assert_eq!(g.check(0, later, "t", 1, 7), Next::Take);
        // The missing offset shows up: the partition resumes.
        assert_eq!(g.check(0, later, "t", 0, 1), Next::Take);
        assert_eq!(g.counts(), GapCounts { repaired: 1, unhealed: 1, halted: 0 });
    }

    #[test]
    fn a_rebalance_or_a_step_back_resets_the_expectation() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        assert_eq!(g.check(0, t, "t", 0, 40), Next::Take);
        assert_eq!(g.check(0, t, "t", 0, 45), Next::Seek(41));
        // The partition came back after a rebalance at another member's commit.
        assert_eq!(g.check(1, t, "t", 0, 90), Next::Take);
        assert_eq!(g.next_deadline(), None);
        // Resumed from an earlier committed offset: follow the broker.
        assert_eq!(g.check(1, t, "t", 0, 70), Next::Take);
        assert_eq!(g.check(1, t, "t", 0, 72), Next::Seek(71));
    }

    #[test]
    fn a_rebalance_clears_a_halt() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        assert_eq!(g.check(0, t, "t", 0, 0), Next::Take);
        assert_eq!(g.check(0, t, "t", 0, 9), Next::Seek(1));
        exhaust(&mut g, t);
        assert_eq!(g.counts().halted, 1);
        assert_eq!(g.check(1, at(t, 5000), "t", 0, 1), Next::Take);
        assert_eq!(g.counts().halted, 0);
    }

    #[test]
    fn a_member_seeded_with_the_commit_sees_a_gap_at_its_start() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Halt, 0, None), Instant::now());
        assert!(g.needs_seed(0, 4));
        g.seed(4, 10);
        assert!(!g.needs_seed(0, 4), "asked once");
        assert_eq!(g.check(0, t, "t", 4, 16), Next::Seek(10));
        // After a rebalance the question comes back.
        assert!(g.needs_seed(1, 4));
        assert!(!g.needs_seed(1, 4));
        assert_eq!(g.check(1, t, "t", 4, 16), Next::Take, "no commit: follow the broker");
    }

    #[test]
    fn a_partition_consumer_checks_its_first_record_against_its_start() {
        let (mut g, t) = (GapGuard::new(GapPolicy::Accept, 0, Some((2, 300))), Instant::now());
        assert_eq!(g.check(0, t, "t", 2, 301), Next::Seek(300));
        assert_eq!(g.check(0, t, "t", 2, 300), Next::Take);
        assert_eq!(g.counts().repaired, 1);
    }
}
