//! Catch-up of one dataset from one peer, as a state machine without I/O: the two frontiers
//! and the forks kept here in, the pages to ask for out, each page's outcome in. The async shell
//! (`mesh::sync`) sends the requests and applies the pages; a simulation drives the same machine
//! over an unreliable network in one process (`tests/integration/simulation.rs`).
//!
//! ```
//! use fogmesh::identity::AuthorId;
//! use fogmesh::mesh::plan::{Catchup, Page};
//! use fogmesh::version::Frontier;
//!
//! let a = AuthorId::from_bytes([1; 32]);
//! let (mut local, mut remote) = (Frontier::default(), Frontier::default());
//! local.vv.set(a, 2);
//! remote.vv.set(a, 9);
//! let mut plan = Catchup::new(&local, &remote, |_| None);
//! let first = plan.next().expect("something to fetch");
//! assert_eq!((first.after, first.upto), (2, 9));
//! // The peer answered envelopes 3..=5 and has more: the next page starts after 5.
//! let next = plan.on_page(&first, Page { count: 3, last: Some(5), more: true });
//! assert_eq!(next.map(|r| (r.after, r.upto)), Some((5, 9)));
//! assert_eq!(plan.progress(), (3, 7));
//! ```

use std::collections::VecDeque;

use crate::dataset::Priority;
use crate::identity::AuthorId;
use crate::version::Frontier;

/// How many of a peer's envelopes before a differing chain tip are fetched to find the fork.
pub const FORK_WINDOW: u64 = 256;

/// Envelopes of one author with sequence in `(after, upto]`, asked of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The author.
    pub author: AuthorId,
    /// The last sequence not asked for.
    pub after: u64,
    /// The last sequence asked for.
    pub upto: u64,
}

/// What a page answered to a [`Range`] held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Envelopes in the page.
    pub count: usize,
    /// The sequence of its last envelope (`None`: empty, or the last does not decode).
    pub last: Option<u64>,
    /// The peer holds more in the range.
    pub more: bool,
}

/// The catch-up of one dataset from one peer.
#[derive(Debug, Clone, Default)]
pub struct Catchup {
    ranges: VecDeque<Range>,
    fetched: u64,
    missing: u64,
}

impl Catchup {
    /// What to fetch, given this node's frontier of the dataset, the peer's, and the fork kept
    /// here per author (its envelopes from there on are not fetched): every sequence the peer
    /// holds beyond this node's vector, and where the two chain tips differ at one sequence, the
    /// peer's envelopes up to there, [`FORK_WINDOW`] back (the check on apply finds the lowest
    /// fork among them).
    pub fn new(
        local: &Frontier,
        remote: &Frontier,
        fork_of: impl Fn(&AuthorId) -> Option<u64>,
    ) -> Self {
        let mut ranges: VecDeque<Range> = local
            .vv
            .missing_from(&remote.vv)
            .into_iter()
            .map(|(author, after, upto)| Range {
                author,
                after,
                upto: fork_of(&author).map_or(upto, |f| upto.min(f - 1)),
            })
            .filter(|r| r.after < r.upto)
            .collect();
        let diverging = local.diverging(remote).into_iter();
        ranges.extend(
            diverging
                .filter(|(a, s)| fork_of(a).is_none_or(|f| *s < f))
                .map(|(author, seq)| Range {
                    author,
                    after: seq.saturating_sub(FORK_WINDOW),
                    upto: seq,
                }),
        );
        let missing = ranges
            .iter()
            .fold(0u64, |n, r| n.saturating_add(r.upto - r.after));
        Self {
            ranges,
            fetched: 0,
            missing,
        }
    }

    /// The page to ask for now (`None`: done).
    pub fn next(&self) -> Option<Range> {
        self.ranges.front().copied()
    }

    /// Takes the answer to `asked` and returns the page to ask for next. A page that does not
    /// move forward ends its range, so a peer cannot keep this node asking.
    pub fn on_page(&mut self, asked: &Range, page: Page) -> Option<Range> {
        self.fetched = self.fetched.saturating_add(page.count as u64);
        if self.ranges.front() != Some(asked) {
            return self.next();
        }
        match page
            .last
            .filter(|l| page.more && *l > asked.after && *l < asked.upto)
        {
            Some(last) => {
                if let Some(front) = self.ranges.front_mut() {
                    front.after = last;
                }
            }
            None => {
                self.ranges.pop_front();
            }
        }
        self.next()
    }

    /// Envelopes fetched so far, and how many the plan asked for in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.fetched, self.missing)
    }
}

/// Orders datasets to catch up: high priority first, then normal, then low; by id within one
/// priority.
pub fn by_priority<T>(datasets: &mut [(String, T)], priority: impl Fn(&str) -> Priority) {
    datasets.sort_by_cached_key(|(id, _)| crate::dataset::service_order(priority(id), id.clone()));
}

/// The authors whose envelopes the peer holds past a fork kept here: it is sent the evidence
/// instead of being fetched from.
pub fn past_forks(remote: &Frontier, fork_of: impl Fn(&AuthorId) -> Option<u64>) -> Vec<AuthorId> {
    remote
        .vv
        .iter()
        .filter(|(a, seq)| fork_of(a).is_some_and(|f| **seq >= f))
        .map(|(a, _)| *a)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_catch_up_most_urgent_first_then_by_id() {
        let mut ds: Vec<(String, ())> = ["h/c", "h/alerts", "h/b", "h/a", "h/archive"]
            .iter()
            .map(|id| (id.to_string(), ()))
            .collect();
        by_priority(&mut ds, |id| match id {
            "h/alerts" => Priority::High,
            "h/archive" => Priority::Low,
            _ => Priority::Normal,
        });
        let order: Vec<&str> = ds.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["h/alerts", "h/a", "h/b", "h/c", "h/archive"]);
    }

    fn a(n: u8) -> AuthorId {
        AuthorId::from_bytes([n; 32])
    }

    fn frontier(entries: &[(u8, u64, u8)]) -> Frontier {
        let mut f = Frontier::default();
        for (author, seq, tip) in entries {
            f.vv.set(a(*author), *seq);
            f.tips.insert(a(*author), [*tip; 32]);
        }
        f
    }

    #[test]
    fn asks_for_what_the_peer_holds_beyond_this_node_short_of_forks() {
        let local = frontier(&[(1, 3, 1), (2, 10, 2)]);
        let remote = frontier(&[(1, 8, 1), (2, 10, 2), (3, 4, 3), (4, 20, 4)]);
        let plan = Catchup::new(&local, &remote, |x| (*x == a(4)).then_some(6));
        let ranges: Vec<_> = plan
            .ranges
            .iter()
            .map(|r| (r.author, r.after, r.upto))
            .collect();
        assert_eq!(ranges, vec![(a(1), 3, 8), (a(3), 0, 4), (a(4), 0, 5)]);
        assert_eq!(plan.progress(), (0, 5 + 4 + 5));
        assert_eq!(
            past_forks(&remote, |x| (*x == a(4)).then_some(6)),
            vec![a(4)]
        );
    }

    #[test]
    fn differing_tips_fetch_a_window_back() {
        let local = frontier(&[(1, 300, 1), (2, 5, 2)]);
        let remote = frontier(&[(1, 300, 9), (2, 5, 8)]);
        let plan = Catchup::new(&local, &remote, |_| None);
        let ranges: Vec<_> = plan.ranges.iter().map(|r| (r.after, r.upto)).collect();
        assert_eq!(ranges, vec![(300 - FORK_WINDOW, 300), (0, 5)]);
        // Past a fork kept here, a differing tip is not fetched.
        let plan = Catchup::new(&local, &remote, |_| Some(2));
        assert!(plan.next().is_none());
    }

    #[test]
    fn pages_advance_and_a_page_that_does_not_move_ends_the_range() {
        let local = frontier(&[]);
        let remote = frontier(&[(1, 10, 1), (2, 3, 2)]);
        let mut plan = Catchup::new(&local, &remote, |_| None);
        let r = plan.next().expect("first");
        let page = |count, last, more| Page { count, last, more };
        let r = plan.on_page(&r, page(4, Some(4), true)).expect("rest of 1");
        assert_eq!((r.author, r.after, r.upto), (a(1), 4, 10));
        // The peer answers the same page again: the range ends rather than loop.
        let r = plan.on_page(&r, page(1, Some(4), true)).expect("author 2");
        assert_eq!(r.author, a(2));
        // An empty page ends the range, and the catch-up.
        assert_eq!(plan.on_page(&r, page(0, None, false)), None);
        assert_eq!(plan.progress(), (5, 13));
    }

    #[test]
    fn a_frontier_at_the_end_of_the_sequence_space_does_not_overflow() {
        let mut remote = Frontier::default();
        remote.vv.set(a(1), u64::MAX);
        remote.vv.set(a(2), u64::MAX);
        let mut plan = Catchup::new(&Frontier::default(), &remote, |_| None);
        assert_eq!(plan.progress(), (0, u64::MAX));
        let r = plan.next().expect("first");
        let huge = Page {
            count: usize::MAX,
            last: Some(u64::MAX - 1),
            more: true,
        };
        plan.on_page(&r, huge);
        plan.on_page(&r, huge);
        assert_eq!(plan.progress().0, u64::MAX);
    }

    #[test]
    fn an_answer_to_a_range_no_longer_asked_changes_nothing() {
        let remote = frontier(&[(1, 10, 1)]);
        let mut plan = Catchup::new(&frontier(&[]), &remote, |_| None);
        let stale = Range {
            author: a(9),
            after: 0,
            upto: 1,
        };
        let next = plan.on_page(
            &stale,
            Page {
                count: 1,
                last: Some(1),
                more: false,
            },
        );
        assert_eq!(next.map(|r| r.author), Some(a(1)));
    }
}
