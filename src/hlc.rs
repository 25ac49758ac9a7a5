//! Hybrid logical clock: wall-clock milliseconds that never run backwards and always move past
//! every timestamp a node has seen, so clock skew between organizations cannot reorder causality.
//!
//! A timestamp packs milliseconds in the high 48 bits and a logical counter in the low 16. When many
//! events share a millisecond the counter orders them; when it overflows it carries into the
//! millisecond, which stays within a few ms of the wall clock at any realistic event rate.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const COUNTER_BITS: u32 = 16;

/// A packed HLC timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Builds a timestamp from milliseconds and a counter.
    pub fn new(ms: u64, counter: u16) -> Self {
        Self((ms << COUNTER_BITS) | u64::from(counter))
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }
}

/// The node's clock. Cheap to share; one lock per tick.
#[derive(Debug, Default)]
pub struct Clock {
    last: Mutex<u64>,
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next timestamp for a local event, given the wall clock in ms.
    pub fn tick_at(&self, wall_ms: u64) -> Timestamp {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let next = (wall_ms << COUNTER_BITS).max(last.saturating_add(1));
        *last = next;
        Timestamp(next)
    }

    /// The next timestamp for a local event.
    pub fn tick(&self) -> Timestamp {
        self.tick_at(wall_millis())
    }

    /// Moves the clock past a timestamp seen from elsewhere (a peer's envelope, a stored one).
    pub fn observe(&self, seen: Timestamp) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(seen.0);
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        Timestamp(*self.last.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_follow_the_wall_clock() {
        let c = Clock::new();
        assert_eq!(c.tick_at(1_000).millis(), 1_000);
        assert_eq!(c.tick_at(2_000).millis(), 2_000);
    }

    #[test]
    fn a_clock_stepping_back_does_not_reorder() {
        let c = Clock::new();
        let a = c.tick_at(5_000);
        let b = c.tick_at(4_000);
        assert!(b > a);
        assert_eq!(b.millis(), 5_000);
    }

    #[test]
    fn observing_a_peer_ahead_moves_past_it() {
        let c = Clock::new();
        c.observe(Timestamp::new(9_000, 3));
        let t = c.tick_at(1_000);
        assert!(t > Timestamp::new(9_000, 3));
        assert_eq!(t.millis(), 9_000);
    }

    #[test]
    fn counter_overflow_carries_into_millis() {
        let c = Clock::new();
        c.observe(Timestamp::new(7, u16::MAX));
        assert_eq!(c.tick_at(0), Timestamp::new(8, 0));
    }

    proptest! {
        #[test]
        fn ticks_strictly_increase_whatever_the_wall_clock(walls in proptest::collection::vec(0u64..1<<40, 1..200)) {
            let c = Clock::new();
            let mut prev = Timestamp(0);
            for w in walls {
                let t = c.tick_at(w);
                prop_assert!(t > prev);
                prop_assert!(t.millis() >= w);
                prev = t;
            }
        }
    }
}
