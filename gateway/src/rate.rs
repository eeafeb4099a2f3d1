//! A token bucket for what one connection may send upstream (sends, syncs):
//! `rate` records per second sustained, `burst` at once. Pure and `Copy`, so
//! it lives in the connection task's own state, not in [`crate::conn::Conn`].
//! Milli-tokens over a millisecond clock: integer arithmetic, exact refills.

/// Refill state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Self {
        Self { milli: burst as u64 * 1000, last_ms: now_ms }
    }

    /// Take one token at `now_ms`; when empty, `Err(ms)` until one is back.
    /// `rate` 0 means unlimited.
    pub fn take(&mut self, rate: u32, burst: u32, now_ms: u64) -> Result<(), u64> {
        if rate == 0 {
            return Ok(());
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = burst.max(1) as u64 * 1000;
        self.milli = (self.milli + elapsed * rate as u64).min(cap);
        if self.milli >= 1000 {
            self.milli -= 1000;
            Ok(())
        } else {
            Err((1000 - self.milli).div_ceil(rate as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut b = TokenBucket::full(3, 0);
        for _ in 0..3 {
            assert_eq!(b.take(10, 3, 0), Ok(()));
        }
        // Empty: one token every 100 ms at 10/s.
        assert_eq!(b.take(10, 3, 0), Err(100));
        assert_eq!(b.take(10, 3, 40), Err(60));
        assert_eq!(b.take(10, 3, 100), Ok(()));
        assert_eq!(b.take(10, 3, 150), Err(50));
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(b.take(10, 3, 60_000), Ok(()));
        }
        assert!(b.take(10, 3, 60_000).is_err());
    }

    #[test]
    fn rate_zero_is_unlimited_and_a_clock_step_back_is_harmless() {
        let mut b = TokenBucket::full(1, 1000);
        for _ in 0..1000 {
            assert_eq!(b.take(0, 1, 1000), Ok(()));
        }
        assert_eq!(b.take(1, 1, 1000), Ok(()));
        assert_eq!(b.take(1, 1, 500), Err(1000), "no refill from a step back");
        assert_eq!(b.take(1, 1, 2000), Ok(()));
    }
}
