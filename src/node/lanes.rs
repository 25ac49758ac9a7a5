//! Priority lanes: what a busy node applies first, and a catch-up page applied in chunks.
//!
//! A push (a live apply) applies as it arrives, in the lane of its dataset's priority. A
//! catch-up applies its pages in chunks of at most [`CHUNK_BYTES`] of payload, and before each chunk
//! makes way: it waits while a live apply of a higher priority is under way, for at most
//! [`MAX_WAY`] per chunk, so a catch-up always moves on however busy the higher lanes are.
//! While it waits, it takes no core and starts no new store writes; a live apply that arrives
//! while a chunk runs is not held by it (it is another dataset's lock), but shares the cores
//! with it and its flush covers what the chunk stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::dataset::Priority;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::store::Store;

use super::dataset::Dataset;
use super::replica::Applied;

/// Most payload bytes a catch-up applies between two chances to make way (at least one
/// envelope).
pub(crate) const CHUNK_BYTES: usize = 512 * 1024;

/// Longest a catch-up chunk waits for higher lanes to fall quiet.
pub(crate) const MAX_WAY: Duration = Duration::from_millis(200);

/// Live applies under way, per priority.
#[derive(Default)]
pub(crate) struct Lanes {
    live: [AtomicUsize; 3],
    quiet: Notify,
    /// Counts the chunks that made way (`fogmesh_catchup_yields_total`).
    yields: Counter,
    /// Longer than [`MAX_WAY`] in tests that must not depend on the clock.
    #[cfg(test)]
    pub(crate) max_way: std::sync::Mutex<Option<Duration>>,
}

/// A live apply under way; the lane counts it until this is dropped.
pub(crate) struct Live<'a> {
    lanes: &'a Lanes,
    lane: usize,
}

fn lane(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        if self.lanes.live[self.lane].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lanes.quiet.notify_waiters();
        }
    }
}

impl Lanes {
    /// Lanes counting the chunks that make way in `yields`.
    pub(crate) fn new(yields: Counter) -> Self {
        Self {
            yields,
            ..Self::default()
        }
    }

    /// Counts a live apply of priority `p` until the returned guard is dropped.
    pub(crate) fn live(&self, p: Priority) -> Live<'_> {
        let lane = lane(p);
        self.live[lane].fetch_add(1, Ordering::AcqRel);
        Live { lanes: self, lane }
    }

    /// Whether a live apply of a priority above `p` is under way.
    fn above(&self, p: Priority) -> bool {
        self.live[lane(p) + 1..]
            .iter()
            .any(|n| n.load(Ordering::Acquire) > 0)
    }

    /// Waits until no live apply of a priority above `p` is under way, or `MAX_WAY` has
    /// passed; returns whether it waited at all.
    pub(crate) async fn make_way(&self, p: Priority) -> bool {
        #[cfg(test)]
        let max_way = self
            .max_way
            .lock()
            .map_or(MAX_WAY, |m| m.unwrap_or(MAX_WAY));
        #[cfg(not(test))]
        let max_way = MAX_WAY;
        let deadline = tokio::time::Instant::now() + max_way;
        let mut waited = false;
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            // Registered before the check, so a drop between the two still wakes it.
            quiet.as_mut().enable();
            if !self.above(p) {
                return waited;
            }
            if !waited {
                self.yields.inc();
            }
            waited = true;
            if tokio::time::timeout_at(deadline, quiet).await.is_err() {
                return waited;
            }
        }
    }
}

/// `envs` in order, cut into chunks of at most [`CHUNK_BYTES`] of payload (at least one
/// envelope each).
pub(crate) fn chunks(envs: Vec<Envelope>) -> Vec<Vec<Envelope>> {
    let mut out: Vec<Vec<Envelope>> = Vec::new();
    let mut bytes = 0;
    for env in envs {
        let n = env.payload.len();
        match out.last_mut() {
            Some(last) if bytes + n <= CHUNK_BYTES => last.push(env),
            _ => {
                out.push(vec![env]);
                bytes = 0;
            }
        }
        bytes += n;
    }
    out
}

impl Applied {
    /// Adds what a later group of the same batch did.
    pub(super) fn absorb(&mut self, later: Applied) {
        self.fresh.extend(later.fresh);
        self.events.extend(later.events);
        self.snapshot_due |= later.snapshot_due;
        self.invalid.extend(later.invalid);
        self.evidence.extend(later.evidence);
    }
}

/// How envelopes reached this node: pushed as they were written, or fetched by a catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A push: applied at once, and counted in its dataset's priority lane while it applies.
    Push,
    /// A catch-up page: applied in chunks that make way for pushes of higher priority
    /// (docs/architecture.md, "Priorities").
    CatchUp,
}

impl Dataset {
    /// [`Self::apply_remote`] in chunks of at most [`CHUNK_BYTES`], making way before each
    /// chunk after the first for live applies of a higher priority. What a chunk hands back
    /// (past its operations budget) is applied next, as a chunk of its own. A chunk that fails
    /// after others applied ends the batch without failing it: what it left is fetched again.
    /// Blocking (called on a blocking thread of the runtime).
    pub(super) fn apply_in_chunks(
        &self,
        store: &Store,
        lanes: &Lanes,
        envs: Vec<Envelope>,
        snapshot_every: u64,
    ) -> Result<Applied> {
        let runtime = tokio::runtime::Handle::current();
        let mut all = Applied::default();
        let mut todo: std::collections::VecDeque<Vec<Envelope>> = chunks(envs).into();
        let mut i = 0;
        while let Some(chunk) = todo.pop_front() {
            if i > 0 {
                runtime.block_on(lanes.make_way(self.meta.priority));
            }
            i += 1;
            match self.apply_remote(store, chunk, snapshot_every) {
                Ok(mut a) => {
                    let left = std::mem::take(&mut a.left);
                    if !left.is_empty() {
                        todo.push_front(left);
                    }
                    all.absorb(a);
                }
                Err(e) if i == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(dataset = %self.meta.id, error = %e, "catch-up chunk not applied; fetched again later");
                    break;
                }
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_lower_lane_waits_for_a_higher_live_apply_to_end() {
        let lanes = Arc::new(Lanes::default());
        let long = Duration::from_secs(60);
        *lanes.max_way.lock().unwrap() = Some(long);
        assert!(
            !lanes.make_way(Priority::Low).await,
            "nothing live: no wait"
        );
        let live = lanes.live(Priority::High);
        assert!(!lanes.make_way(Priority::High).await, "same lane: no wait");
        let l = lanes.clone();
        let waiter = tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            (l.make_way(Priority::Low).await, t0.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the low lane went on beside a live high apply"
        );
        drop(live);
        let (waited, took) = waiter.await.unwrap();
        assert!(waited);
        assert_eq!(lanes.yields.get(), 1, "one chunk made way");
        assert!(took < long, "woken when the high lane fell quiet: {took:?}");
    }

    #[tokio::test]
    async fn a_lower_lane_is_never_held_longer_than_max_way() {
        let lanes = Lanes::default();
        let _live = lanes.live(Priority::Normal);
        let t0 = std::time::Instant::now();
        assert!(lanes.make_way(Priority::Low).await);
        assert!(t0.elapsed() >= MAX_WAY);
        assert!(
            !lanes.make_way(Priority::High).await,
            "a higher lane never waits"
        );
    }
}
