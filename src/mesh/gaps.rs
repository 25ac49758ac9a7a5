//! Gaps a push revealed: an envelope that arrived while earlier ones of its author had not. Most
//! close by themselves within moments (the envelopes took other trees, some of them slower); one
//! still open after [`GAP_GRACE`] means a member on the way lost it, and the pusher and the writer
//! are caught up with.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::identity::AuthorId;
use crate::naming::DatasetId;

/// How long a gap may stay open before it is repaired by catch-up.
pub(crate) const GAP_GRACE: Duration = Duration::from_secs(2);
/// Most gaps watched at once; more are left to the periodic catch-up.
const MAX_GAPS: usize = 1024;

/// One open gap: envelopes of an author before `seq` missing, noticed in a push from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    pub(crate) dataset: DatasetId,
    pub(crate) author: AuthorId,
    pub(crate) seq: u64,
    pub(crate) from: PeerId,
    /// The envelope's writer, which holds the whole history (`None`: not on the roster).
    pub(crate) writer: Option<PeerId>,
}

/// The gaps watched, each with when it was first noticed.
#[derive(Default)]
pub(crate) struct Gaps(Mutex<HashMap<(DatasetId, AuthorId), (Gap, Instant)>>);

impl Gaps {
    /// Notes that `gap` is open at `now` (a gap of the same author and dataset noticed earlier
    /// keeps its time and grows to the higher sequence).
    pub(crate) fn note(&self, gap: Gap, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (gap.dataset.clone(), gap.author);
        if let Some((open, _)) = map.get_mut(&key) {
            open.seq = open.seq.max(gap.seq);
            return;
        }
        if map.len() < MAX_GAPS {
            map.insert(key, (gap, now));
        }
    }

    /// Takes the gaps noticed at least [`GAP_GRACE`] before `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<Gap> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<_> = map
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= GAP_GRACE)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| map.remove(&k).map(|(g, _)| g))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn gap(author: AuthorId, seq: u64) -> Gap {
        Gap {
            dataset: DatasetId::parse("hospital/flu").expect("id"),
            author,
            seq,
            from: PeerId::random(),
            writer: None,
        }
    }

    #[test]
    fn a_gap_is_due_after_the_grace_and_once() {
        let gaps = Gaps::default();
        let a = Identity::generate().author();
        let t0 = Instant::now();
        gaps.note(gap(a, 5), t0);
        gaps.note(gap(a, 9), t0 + Duration::from_secs(1));
        assert!(gaps.due(t0 + Duration::from_millis(1500)).is_empty());
        let due = gaps.due(t0 + GAP_GRACE);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].seq, 9, "the later envelope's sequence is kept");
        assert!(gaps.due(t0 + GAP_GRACE * 2).is_empty(), "due twice");
    }

    #[test]
    fn the_watch_is_bounded() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        for _ in 0..MAX_GAPS + 10 {
            gaps.note(gap(Identity::generate().author(), 2), t0);
        }
        assert_eq!(gaps.due(t0 + GAP_GRACE).len(), MAX_GAPS);
    }
}
