//! The per-socket token bucket that limits how fast one socket may send chat messages.
//!
//! The contract fixes its shape: 20 tokens, refilled at 10 per second; a message that finds no
//! token is answered with `error` `rate_limited` and dropped. Time is passed in, so the bucket
//! is a pure value that unit tests drive with made-up instants.

use std::time::Duration;

use tokio::time::Instant;

/// Tokens a fresh bucket holds, and the most it can hold.
pub const BURST: u32 = 20;
/// Tokens added per second.
pub const REFILL_PER_SECOND: u32 = 10;

/// A token bucket owned by one socket's task; dropped with the socket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_second: f64,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket with the contract's burst and refill rate.
    pub fn new(now: Instant) -> Self {
        Self::with_rate(BURST, REFILL_PER_SECOND, now)
    }

    /// A full bucket of `capacity` tokens refilled at `per_second`.
    pub fn with_rate(capacity: u32, per_second: u32, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity),
            tokens: f64::from(capacity),
            refill_per_second: f64::from(per_second),
            last_refill: now,
        }
    }

    /// A full bucket of `per_minute` tokens that refills completely over a minute.
    pub fn with_rate_per_minute(per_minute: u32, now: Instant) -> Self {
        Self {
            capacity: f64::from(per_minute),
            tokens: f64::from(per_minute),
            refill_per_second: f64::from(per_minute) / 60.0,
            last_refill: now,
        }
    }

    /// Whether the bucket would be full at `now`: its owner has been quiet long enough to be
    /// forgotten.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        elapsed.mul_add(self.refill_per_second, self.tokens) >= self.capacity
    }

    /// How long until the next token, as of the last `try_take`.
    pub fn time_to_next_token(&self) -> Duration {
        if self.tokens >= 1.0 || self.refill_per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.refill_per_second)
    }

    /// Takes one token if there is one; `false` means the message must be refused.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed: Duration = now.saturating_duration_since(self.last_refill);
        self.tokens = elapsed
            .as_secs_f64()
            .mul_add(self.refill_per_second, self.tokens)
            .min(self.capacity);
        self.last_refill = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_of_twenty_then_refuses() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(start);
        for i in 0..20 {
            assert!(bucket.try_take(start), "message {i} of the burst");
        }
        assert!(
            !bucket.try_take(start),
            "the 21st message in the same instant"
        );
    }

    #[test]
    fn tokens_come_back_at_ten_per_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(start);
        while bucket.try_take(start) {}
        assert!(
            !bucket.try_take(start + Duration::from_millis(99)),
            "less than one token after 99 ms"
        );
        assert!(
            bucket.try_take(start + Duration::from_millis(100)),
            "one token after 100 ms"
        );
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
        let later = start + Duration::from_millis(600);
        for i in 0..5 {
            assert!(
                bucket.try_take(later),
                "token {i} of five after another 500 ms"
            );
        }
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn an_idle_bucket_never_holds_more_than_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(start);
        let much_later = start + Duration::from_secs(3600);
        let granted = (0..100).filter(|_| bucket.try_take(much_later)).count();
        assert_eq!(granted, 20);
    }
}
