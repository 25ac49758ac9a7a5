//! How many refusals may be added to the log per minute: per organization, and all together. The
//! log is bounded by its retention anyway; this keeps one flooding member (or app), or a stranger
//! claiming ever new names during an invitation's window, from pushing everyone else's entries
//! out of it within minutes. Refusals over the budget are counted, and the next refusal logged
//! for that organization says how many of its own were skipped.

use std::collections::HashMap;

/// Refusals logged per organization per minute; more are counted, not logged.
pub const REFUSALS_PER_MINUTE: u32 = 60;
/// Refusals logged per minute, all organizations together.
pub const ALL_REFUSALS_PER_MINUTE: u32 = 600;
/// Organizations tracked at once; beyond it, those idle this minute are forgotten first.
const ORGS_CAP: usize = 4096;

/// One organization's use of its budget in the current minute.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    minute: u64,
    logged: u32,
    skipped: u64,
}

/// The per-organization refusal budgets.
#[derive(Debug, Default)]
pub(super) struct Budget {
    slots: HashMap<String, Slot>,
    /// The current minute and the refusals logged in it, all organizations together.
    all: (u64, u32),
}

impl Budget {
    /// Whether one more refusal by `org` at `now_ms` may be logged: `Some(skipped before it)`,
    /// or `None` when it is over the budget (and is counted as skipped).
    pub(super) fn admit(&mut self, org: &str, now_ms: u64) -> Option<u64> {
        let minute = now_ms / 60_000;
        if !self.slots.contains_key(org) && self.slots.len() >= ORGS_CAP {
            self.slots.retain(|_, s| s.minute == minute);
            if self.slots.len() >= ORGS_CAP {
                return None;
            }
        }
        if self.all.0 != minute {
            self.all = (minute, 0);
        }
        let slot = self.slots.entry(org.to_owned()).or_default();
        if slot.minute != minute {
            slot.minute = minute;
            slot.logged = 0;
        }
        if slot.logged >= REFUSALS_PER_MINUTE || self.all.1 >= ALL_REFUSALS_PER_MINUTE {
            slot.skipped += 1;
            return None;
        }
        slot.logged += 1;
        self.all.1 += 1;
        Some(std::mem::take(&mut slot.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_over_the_budget_are_skipped_and_reported_with_the_next_one_logged() {
        let mut b = Budget::default();
        for _ in 0..REFUSALS_PER_MINUTE {
            assert_eq!(b.admit("insurer", 1_000), Some(0));
        }
        assert_eq!(b.admit("insurer", 2_000), None);
        assert_eq!(b.admit("insurer", 3_000), None);
        // Another organization has its own budget.
        assert_eq!(b.admit("pharmacy", 3_000), Some(0));
        // The next minute: logged again, with the two skipped.
        assert_eq!(b.admit("insurer", 61_000), Some(2));
        assert_eq!(b.admit("insurer", 61_500), Some(0));
    }

    #[test]
    fn all_organizations_together_have_a_budget() {
        let mut b = Budget::default();
        let logged = (0..2_000)
            .filter(|i| b.admit(&format!("org{i}"), 1_000).is_some())
            .count();
        assert_eq!(logged, ALL_REFUSALS_PER_MINUTE as usize);
        assert_eq!(b.admit("org1999", 61_000), Some(1));
    }

    #[test]
    fn the_number_of_organizations_tracked_is_bounded() {
        let mut b = Budget::default();
        for i in 0..ORGS_CAP as u64 {
            // Spread over minutes, so the overall budget never binds.
            assert!(b.admit(&format!("org{i}"), i / 500 * 60_000).is_some());
        }
        let minute = (ORGS_CAP as u64 - 1) / 500 * 60_000;
        // Full: the organizations idle this minute are forgotten to make room.
        assert_eq!(b.admit("newcomer", minute), Some(0));
        assert!(b.slots.len() <= ORGS_CAP, "{}", b.slots.len());
        assert!(b.slots.contains_key("newcomer"));
    }
}
