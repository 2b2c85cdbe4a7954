//! Pacing background traffic (repair, scrubbing) to a byte rate, so
//! foreground I/O keeps its bandwidth. Callers sleep for what
//! [`Pacer::reserve`] returns, in whatever way suits them.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct Pacer {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    /// When the bytes reserved so far will have been spent at `rate`.
    next_free: Mutex<Instant>,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `bytes` and returns how long to wait before moving them.
    /// Idle time banks at most one second of burst.
    pub fn reserve(&self, bytes: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut next = self.next_free.lock().expect("pacer lock");
        let now = Instant::now();
        let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let start = (*next).max(floor);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        start.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate() {
        let p = Pacer::new(10 << 20);
        let t = Instant::now();
        // 30 MiB at 10 MiB/s from a fresh pacer (no banked burst).
        for _ in 0..30 {
            std::thread::sleep(p.reserve(1 << 20));
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(2700), "{took:?}");
        assert_eq!(Pacer::new(0).reserve(u64::MAX), Duration::ZERO);
    }
}
