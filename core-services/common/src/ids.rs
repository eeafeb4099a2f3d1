//! Snowflake ids: 41 bits of milliseconds since 2024-01-01, 10 bits of worker
//! id, 12 bits of sequence. Generated in-process without locks; the worker id
//! comes from config (or registration in cluster mode) and must be unique
//! among live processes that generate ids.

use std::sync::atomic::{AtomicU64, Ordering};

/// 2024-01-01T00:00:00Z in Unix milliseconds.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const WORKER_BITS: u32 = 10;
pub const SEQ_BITS: u32 = 12;
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("worker id {0} out of range 0..={MAX_WORKER}")]
    WorkerOutOfRange(u16),
}

/// Lock-free snowflake generator. `state` packs (ms since epoch << 12 | seq).
#[derive(Debug)]
pub struct Snowflake {
    worker: u64,
    state: AtomicU64,
}

impl Snowflake {
    pub fn new(worker: u16) -> Result<Self, IdError> {
        if worker > MAX_WORKER {
            return Err(IdError::WorkerOutOfRange(worker));
        }
        Ok(Self { worker: worker as u64, state: AtomicU64::new(0) })
    }

    /// Next id; strictly increasing per generator, even if the wall clock
    /// steps back (it then borrows from the future until the clock catches up).
    pub fn next_id(&self) -> u64 {
        let now = (crate::now_ms() as u64).saturating_sub(EPOCH_MS);
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let last_ms = cur >> SEQ_BITS;
            let next = if now > last_ms { now << SEQ_BITS } else { cur + 1 };
            match self.state.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & SEQ_MASK;
                    return (ms << (WORKER_BITS + SEQ_BITS)) | (self.worker << SEQ_BITS) | seq;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Unix milliseconds encoded in a snowflake id.
pub fn id_timestamp_ms(id: u64) -> u64 {
    (id >> (WORKER_BITS + SEQ_BITS)) + EPOCH_MS
}

/// Worker id encoded in a snowflake id.
pub fn id_worker(id: u64) -> u16 {
    ((id >> SEQ_BITS) & MAX_WORKER as u64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_increasing_and_carry_worker_and_time() {
        let g = Snowflake::new(513).unwrap();
        let before = crate::now_ms() as u64;
        let mut prev = 0;
        let mut seen = HashSet::new();
        for _ in 0..50_000 {
            let id = g.next_id();
            assert!(id > prev, "ids must increase");
            assert!(seen.insert(id));
            assert_eq!(id_worker(id), 513);
            prev = id;
        }
        let ts = id_timestamp_ms(prev);
        assert!(ts + 1 >= before && ts <= crate::now_ms() as u64 + 100, "ts {ts} vs {before}");
    }

    #[test]
    fn concurrent_generation_never_collides() {
        let g = std::sync::Arc::new(Snowflake::new(1).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 80_000);
    }

    #[test]
    fn worker_out_of_range_is_refused() {
        assert_eq!(Snowflake::new(1024).unwrap_err(), IdError::WorkerOutOfRange(1024));
    }
}
