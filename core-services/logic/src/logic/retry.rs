//! What logic does with an upstream batch that fails: the retry policy, and
//! the consumer kept alive while it waits.
//!
//! - A **transient** failure (store, repo or Redis unreachable, the bus
//!   full) is retried without a bound: dead-lettering a whole outage's
//!   traffic would help no one. Backoff doubles from 100 ms to 5 s.
//! - Any other failure (a statement the database refuses) is retried
//!   `logic.batch_max_attempts` times as a batch. Then its records are
//!   retried one at a time, so one poison record cannot hold the others:
//!   a record that still fails is dead-lettered with the error, and the
//!   partition moves on.
//! - While waiting, the consumer [holds](Consumer::hold) the batch: fetching
//!   is paused but the member stays in its group (no eviction after
//!   `max.poll.interval.ms`, rebalances proceed). Records of a partition
//!   revoked meanwhile are dropped from the batch: the new owner processes
//!   them from the last commit, and the idempotent append answers anything
//!   already stored with its original ack.

use super::{Logic, LogicError};
use gochat_common::bus::{BusError, Consumer, Record};
use std::collections::VecDeque;
use std::time::Duration;
use tracing::{error, warn};

/// Whether a retry of the same records may succeed.
pub(super) fn is_transient(e: &LogicError) -> bool {
    match e {
        LogicError::Repo(r) => r.is_transient(),
        LogicError::Sessions(_) => true,
        LogicError::Bus(b) => !matches!(b, BusError::UnknownTopic(_) | BusError::UnknownPartition { .. }),
    }
}

/// Pause before retry number `attempt` (1-based).
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.saturating_sub(1).min(6)).min(5_000))
}

/// Next step after a batch failed for the `attempt`-th time.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Retry(Duration),
    /// Stop retrying as a batch: go record by record.
    Isolate,
}

pub(super) fn after_failure(e: &LogicError, attempt: u32, max_attempts: u32) -> Step {
    if is_transient(e) || attempt < max_attempts {
        Step::Retry(backoff(attempt))
    } else {
        Step::Isolate
    }
}

/// Drop records of `revoked` partitions; returns how many.
fn drop_revoked(records: &mut Vec<Record>, revoked: &[u32]) -> usize {
    let before = records.len();
    records.retain(|r| !revoked.contains(&r.partition));
    before - records.len()
}

impl Logic {
    /// Handle `records` until every one is processed, dead-lettered, or
    /// handed to another member by a rebalance.
    pub(super) async fn process_with_retries(&self, consumer: &mut dyn Consumer, mut records: Vec<Record>) {
        let mut attempt = 0u32;
        loop {
            // Records before `done` were fully handled by this attempt: a
            // retry starts after them, so a sync is not answered twice.
            let mut done = 0;
            let e = match self.handle_batch_from(&records, &mut done).await {
                Ok(()) => return,
                Err(e) => e,
            };
            records.drain(..done);
            attempt += 1;
            self.metrics.batch_retries.inc();
            let pause = match after_failure(&e, attempt, self.cfg.batch_max_attempts) {
                Step::Retry(pause) => pause,
                Step::Isolate => {
                    error!(error = %e, attempt, records = records.len(), "upstream batch keeps failing; retrying its records one by one");
                    return self.isolate(consumer, records).await;
                }
            };
            error!(error = %e, attempt, records = records.len(), backoff_ms = pause.as_millis() as u64, transient = is_transient(&e), "upstream batch failed; retrying");
            if self.hold(consumer, pause, &mut records).await {
                return;
            }
        }
    }

    /// Wait `pause` as a live consumer; drop records revoked meanwhile.
    /// True when nothing is left to do.
    async fn hold(&self, consumer: &mut dyn Consumer, pause: Duration, records: &mut Vec<Record>) -> bool {
        match consumer.hold(pause).await {
            Ok(revoked) if !revoked.is_empty() => {
                let n = drop_revoked(records, &revoked);
                self.metrics.revoked_records.add(n as u64);
                warn!(
                    ?revoked,
                    dropped = n,
                    "partitions revoked during a retry; their records are left to the new owner"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "holding the batch failed"),
        }
        records.is_empty()
    }

    /// Retry each record alone; dead-letter those that fail for good.
    async fn isolate(&self, consumer: &mut dyn Consumer, records: Vec<Record>) {
        let mut queue: VecDeque<Record> = records.into();
        while let Some(rec) = queue.pop_front() {
            let mut attempt = 0u32;
            loop {
                let e = match self.handle_batch(std::slice::from_ref(&rec)).await {
                    Ok(()) => break,
                    Err(e) => e,
                };
                attempt += 1;
                if !is_transient(&e) && attempt >= self.cfg.batch_max_attempts {
                    let reason = format!("failed {attempt} times: {e}");
                    if self.dead_letter(&rec, &reason).await {
                        break;
                    }
                }
                let mut left = vec![rec.clone()];
                if self.hold(consumer, backoff(attempt), &mut left).await {
                    // Revoked: neither this record nor the rest of its partition is ours.
                    queue.retain(|r| r.partition != rec.partition);
                    break;
                }
            }
        }
    }

    /// Park a record that keeps failing in the dead-letter topic. False
    /// when it could not be parked (the caller keeps retrying: dropping it
    /// would lose it).
    async fn dead_letter(&self, rec: &Record, reason: &str) -> bool {
        let Some(topic) = self.dead_letter.as_deref() else {
            error!(
                partition = rec.partition,
                offset = rec.offset,
                reason,
                "record keeps failing and no dead-letter topic is configured; retrying"
            );
            return false;
        };
        match self.producer.send(topic, &rec.key, None, self.dead_letter_envelope(rec, reason)).await {
            Ok(()) => {
                self.metrics.dead_lettered.inc();
                error!(
                    partition = rec.partition,
                    offset = rec.offset,
                    reason,
                    "upstream record dead-lettered after its retries"
                );
                true
            }
            Err(e) => {
                error!(topic, error = %e, "dead-letter record not produced; retrying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionStoreError;
    use gochat_repo::RepoError;

    fn refused() -> LogicError {
        LogicError::Repo(RepoError::Remote("duplicate column".into()))
    }

    #[test]
    fn outages_retry_without_bound_refusals_do_not() {
        let outage = LogicError::Repo(RepoError::Rpc("unavailable: connection refused".into()));
        let redis = LogicError::Sessions(SessionStoreError::Unavailable("down".into()));
        for attempt in [1, 5, 50, 5000] {
            assert!(matches!(after_failure(&outage, attempt, 5), Step::Retry(_)));
            assert!(matches!(after_failure(&redis, attempt, 5), Step::Retry(_)));
        }
        assert!(matches!(after_failure(&refused(), 4, 5), Step::Retry(_)));
        assert_eq!(after_failure(&refused(), 5, 5), Step::Isolate);
        assert_eq!(after_failure(&LogicError::Repo(RepoError::Conflict), 1, 1), Step::Isolate);
    }

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let ms: Vec<u128> = (1..=9).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn revoked_records_are_dropped() {
        let rec =
            |p: u32, o: u64| Record { partition: p, offset: o, key: Default::default(), payload: Default::default() };
        let mut v = vec![rec(0, 1), rec(1, 1), rec(0, 2), rec(2, 7)];
        assert_eq!(drop_revoked(&mut v, &[0, 3]), 2);
        assert_eq!(v.iter().map(|r| r.partition).collect::<Vec<_>>(), [1, 2]);
    }
}
