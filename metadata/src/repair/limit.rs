//! A byte-rate limit for background traffic (repair), so foreground writes
//! keep their bandwidth.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct RateLimiter {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    /// When the bytes granted so far will have been "spent" at `rate`.
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(rate: u64) -> Self {
        RateLimiter {
            rate,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more fit in the rate.
    pub async fn acquire(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut next = self.next_free.lock().expect("limiter lock");
            let now = Instant::now();
            // Idle time banks at most one second of burst.
            let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_rate() {
        let l = RateLimiter::new(10 << 20);
        let t = Instant::now();
        // 30 MiB at 10 MiB/s, from a fresh limiter (no banked burst).
        for _ in 0..30 {
            l.acquire(1 << 20).await;
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(2700), "{took:?}");
        let unlimited = RateLimiter::new(0);
        let t = Instant::now();
        unlimited.acquire(u64::MAX).await;
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
