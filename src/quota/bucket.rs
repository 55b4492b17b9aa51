//! Smoothing: a token bucket per credential, kept as GCRA.
//!
//! GCRA (the generic cell rate algorithm) stores one instant per credential,
//! the theoretical arrival time `tat` of the next request, instead of a
//! token count and a refill timer. Reserving a slot moves `tat` on by one
//! interval and tells the request when it may go: now, while the burst
//! allows, else at its place in line. Each request thus gets its own slot in
//! arrival order (FIFO) and sleeps once until it; nothing polls. The same
//! arithmetic runs as a Lua script when the state lives in Redis.

use std::time::Duration;
use tokio::time::Instant;

/// The configured rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
    /// A request may wait this long for its slot; past it, it is refused.
    pub max_wait: Duration,
}

impl Rate {
    /// The rate `quota:` configures, or `None` when smoothing is off.
    pub fn of(config: &crate::config::QuotaConfig) -> Option<Rate> {
        (config.per_second > 0).then_some(Rate {
            per_second: config.per_second,
            burst: config.burst.max(1),
            max_wait: config.max_wait,
        })
    }

    /// Time between two slots.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.max(1)
    }
}

/// One credential's bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra {
    /// When the bucket is next empty ("theoretical arrival time"); `None`
    /// before the first request.
    tat: Option<Instant>,
}

/// A reserved slot: when the request may go. Kept to give the slot back if
/// the caller leaves before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: Instant,
}

impl Gcra {
    /// Reserves the next slot, or says how long until one would be free
    /// within `max_wait` (the request is then refused and reserves nothing).
    pub fn reserve(&mut self, rate: &Rate, now: Instant) -> Result<Slot, Duration> {
        let interval = rate.interval();
        let burst = interval * rate.burst.max(1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        let new_tat = tat + interval;
        // The request may go once the bucket holds fewer than `burst`
        // requests' worth: `burst` intervals before its own tat.
        let at = (new_tat - burst).max(now);
        let wait = at - now;
        if wait > rate.max_wait {
            return Err(wait - rate.max_wait);
        }
        self.tat = Some(new_tat);
        Ok(Slot { at })
    }

    /// Gives back a slot its caller left before reaching, when it is the
    /// last one reserved: the next request gets it. A slot with waiters
    /// behind it stays unused (they sleep on their own instants and cannot
    /// move up without being woken), which errs on the platform's side:
    /// the rate is never exceeded.
    pub fn give_back(&mut self, rate: &Rate, slot: Slot, now: Instant) {
        if slot.at <= now {
            return;
        }
        let burst = rate.interval() * rate.burst.max(1);
        if self.tat == Some(slot.at + burst) {
            self.tat = Some(slot.at + burst - rate.interval());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32, max_wait_ms: u64) -> Rate {
        Rate {
            per_second,
            burst,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_at_once_then_slots_are_spaced() {
        let r = rate(5, 2, 10_000);
        let mut b = Gcra::default();
        let now = Instant::now();
        let waits: Vec<u64> = (0..5)
            .map(|_| (b.reserve(&r, now).unwrap().at - now).as_millis() as u64)
            .collect();
        assert_eq!(waits, [0, 0, 200, 400, 600]);
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_wait_is_refused_without_reserving() {
        let r = rate(5, 1, 300);
        let mut b = Gcra::default();
        let now = Instant::now();
        assert!(b.reserve(&r, now).is_ok()); // at 0
        assert!(b.reserve(&r, now).is_ok()); // at 200ms
        let refused = b.reserve(&r, now).unwrap_err(); // would be 400ms
        assert_eq!(refused, Duration::from_millis(100));
        // Nothing was reserved by the refusal: after 200ms the next is due at 400ms.
        tokio::time::advance(Duration::from_millis(200)).await;
        let later = Instant::now();
        assert_eq!(
            b.reserve(&r, later).unwrap().at - later,
            Duration::from_millis(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills() {
        let r = rate(10, 3, 0);
        let mut b = Gcra::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert!(b.reserve(&r, now).is_ok());
        }
        assert!(b.reserve(&r, now).is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        let later = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.reserve(&r, later).unwrap().at, later);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_back_goes_to_the_next() {
        let r = rate(10, 1, 10_000);
        let mut b = Gcra::default();
        let now = Instant::now();
        let _first = b.reserve(&r, now).unwrap();
        let second = b.reserve(&r, now).unwrap();
        assert_eq!(second.at - now, Duration::from_millis(100));
        b.give_back(&r, second, now);
        let third = b.reserve(&r, now).unwrap();
        assert_eq!(third.at - now, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_with_waiters_behind_it_is_not_reused() {
        let r = rate(10, 1, 10_000);
        let mut b = Gcra::default();
        let now = Instant::now();
        let _first = b.reserve(&r, now).unwrap();
        let second = b.reserve(&r, now).unwrap();
        let third = b.reserve(&r, now).unwrap();
        b.give_back(&r, second, now);
        // Not at 200ms beside the third: after it.
        let fourth = b.reserve(&r, now).unwrap();
        assert_eq!(fourth.at - now, Duration::from_millis(300));
        // Trailing slots given back last to first all return; the second's
        // stays spent.
        b.give_back(&r, fourth, now);
        b.give_back(&r, third, now);
        assert_eq!(
            b.reserve(&r, now).unwrap().at - now,
            Duration::from_millis(200)
        );
    }
}
