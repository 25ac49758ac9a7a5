//! The envelopes this node has passed on lately, by digest: each is passed on once, so two
//! members whose trees disagree for a moment cannot bounce an envelope between them.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Digests remembered; the oldest are forgotten first. An envelope forgotten and pushed again
/// is passed on again, once more.
pub(crate) const SEEN_CAP: usize = 65_536;

/// A bounded set of digests, oldest first out.
#[derive(Default)]
pub(crate) struct Seen(Mutex<Digests>);

/// The digests remembered, and their order of arrival.
type Digests = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

impl Seen {
    /// Remembers `digest`; true when it was not remembered already.
    pub(crate) fn first(&self, digest: [u8; 32]) -> bool {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(digest) {
            return false;
        }
        order.push_back(digest);
        if order.len() > SEEN_CAP {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    /// Forgets `digest` (it was not passed on after all).
    pub(crate) fn forget(&self, digest: &[u8; 32]) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if guard.0.remove(digest) {
            guard.1.retain(|d| d != digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> [u8; 32] {
        let mut d = [0; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    }

    #[test]
    fn once_each_and_bounded() {
        let seen = Seen::default();
        assert!(seen.first(digest(1)));
        assert!(!seen.first(digest(1)));
        for i in 2..=SEEN_CAP as u32 + 1 {
            assert!(seen.first(digest(i)));
        }
        // The oldest was forgotten; the newest are still remembered.
        assert!(seen.first(digest(1)));
        assert!(!seen.first(digest(SEEN_CAP as u32 + 1)));
        assert!(seen.0.lock().expect("lock").0.len() <= SEEN_CAP);
    }
}
