//! Capped exponential backoff with jitter, for retrying batch writes while
//! the database is unavailable.

use std::time::Duration;

use rand::Rng;

/// Delays double from `initial` up to `max`; each delay is drawn uniformly
/// from its upper half, so replicas that failed together do not retry in
/// lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.min(max),
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        let second = backoff.next_delay();
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&second));
        backoff.next_delay();
        backoff.next_delay();
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!((Duration::from_millis(500)..=Duration::from_secs(1)).contains(&delay));
        }
    }
}
