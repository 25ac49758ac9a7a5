//! The mesh's mutable state: the roster, the signed descriptions of remote datasets, which
//! descriptions each peer has been sent, and catch-up progress. Roster and catalog are persisted
//! in the node's store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::naming::DatasetId;
use crate::node::Node;

use super::catalog::SignedMeta;
use super::roster::{Member, Roster};

const ROSTER_KEY: &str = "mesh/roster/2";
/// Where fogmesh kept the roster before governance: a home that has it was written by an older
/// version whose certificates cannot become governance operations.
const OLD_ROSTER_KEY: &str = "mesh/roster";
/// The catalog as one value, as earlier versions kept it (moved to one key per dataset at start).
const OLD_CATALOG_KEY: &str = "mesh/catalog";
/// One key per remote dataset description: adopting one writes only it.
const CATALOG_PREFIX: &str = "mesh/catalog/";

/// One catch-up under way, as `fogmesh status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Progress {
    /// Dataset.
    pub dataset: String,
    /// The member it is fetched from.
    pub from: String,
    /// Envelopes fetched so far.
    pub fetched: u64,
    /// Envelopes known to be missing when the catch-up began.
    pub missing: u64,
}

/// A current member as fan-out needs it: who it is on the wire, its organization and its key.
#[derive(Debug, Clone)]
pub(crate) struct Seat {
    pub(crate) peer: PeerId,
    pub(crate) org: String,
    pub(crate) author: crate::identity::AuthorId,
}

fn seats_of(roster: &Roster) -> Arc<[Seat]> {
    roster
        .iter()
        .filter_map(|m| {
            Some(Seat {
                peer: m.peer_id.parse().ok()?,
                author: m.author_id()?,
                org: m.org,
            })
        })
        .collect()
}

struct Inner {
    /// Shared, not cloned, by every reader: a Hello or a push reads it, a roster change
    /// replaces it.
    roster: Arc<Roster>,
    /// The roster's digest, computed once per change (every Hello compares it).
    roster_digest: [u8; 32],
    /// The roster's current members, kept with it.
    seats: Arc<[Seat]>,
    catalog: BTreeMap<DatasetId, SignedMeta>,
    announced: HashMap<PeerId, HashMap<DatasetId, u64>>,
    progress: BTreeMap<(String, String), Progress>,
    syncing: HashSet<PeerId>,
    /// Members that may lack something: a push to them failed, or a catch-up stopped.
    dirty: HashSet<PeerId>,
    /// Members marked dirty while a catch-up with them ran: that catch-up may have passed what
    /// changed, so its completion leaves them dirty (caught up again within a second).
    dirty_again: HashSet<PeerId>,
    /// The last pair of roster digests (mine, theirs) each peer was asked to pull for.
    nudged: HashMap<PeerId, ([u8; 32], [u8; 32])>,
    /// When each peer last received this node's roster (or showed it held the same).
    served: HashMap<PeerId, std::time::Instant>,
}

/// Shared mesh state behind one lock, never held across an await; roster changes are also
/// serialized by `roster_writes`, so a merge can never overwrite an operation signed meanwhile.
pub(crate) struct State(Mutex<Inner>, tokio::sync::Mutex<()>);

impl State {
    /// Loads the roster and catalog, or founds a one-member mesh for a fresh node.
    pub(crate) async fn load_or_found(node: &Node) -> Result<Self> {
        let roster = match node.load_state::<Roster>(ROSTER_KEY)? {
            Some(r) => Roster::verified(&r, crate::hlc::wall_millis())
                .map_err(|e| Error::Internal(format!("stored roster: {e}")))?,
            None if node
                .load_state::<serde_json::Value>(OLD_ROSTER_KEY)?
                .is_some() =>
            {
                return Err(Error::Invalid(
                    "this home was written by an older fogmesh (roster without governance); \
                     re-create it with `fogmesh init` and join again"
                        .into(),
                ))
            }
            None => {
                let r = founding_roster(node)?;
                node.save_state(ROSTER_KEY, &r).await?;
                r
            }
        };
        let catalog = load_catalog(node).await?;
        let inner = Inner {
            seats: seats_of(&roster),
            roster_digest: roster.digest(),
            roster: Arc::new(roster),
            catalog: catalog
                .into_iter()
                .map(|s| (s.meta.id.clone(), s))
                .collect(),
            announced: HashMap::new(),
            progress: BTreeMap::new(),
            syncing: HashSet::new(),
            dirty: HashSet::new(),
            dirty_again: HashSet::new(),
            nudged: HashMap::new(),
            served: HashMap::new(),
        };
        Ok(Self(Mutex::new(inner), tokio::sync::Mutex::new(())))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The organization of the removed member with this peer id, without copying the roster.
    pub(crate) fn removed_org_of(&self, peer: &str) -> Option<String> {
        let st = self.lock();
        let removed = st.roster.removed_keys();
        removed
            .into_iter()
            .find(|m| m.peer_id == peer)
            .map(|m| m.org)
    }

    /// Notes that `peer` now holds this node's roster as it is.
    pub(crate) fn note_roster_served(&self, peer: PeerId) {
        self.lock().served.insert(peer, std::time::Instant::now());
    }

    /// Whether `peer` received this node's roster after `since`.
    pub(crate) fn roster_served_since(&self, peer: &PeerId, since: std::time::Instant) -> bool {
        self.lock().served.get(peer).is_some_and(|t| *t >= since)
    }

    /// The current members (no copy of the roster).
    pub(crate) fn seats(&self) -> Arc<[Seat]> {
        self.lock().seats.clone()
    }

    /// The roster as it is now (shared: a change replaces it, so this one never changes).
    pub(crate) fn roster(&self) -> Arc<Roster> {
        self.lock().roster.clone()
    }

    /// The digest of [`Self::roster`], computed once per roster change.
    pub(crate) fn roster_digest(&self) -> [u8; 32] {
        self.lock().roster_digest
    }

    /// Changes the roster with `f` and persists it when its digest changed (durably, before
    /// anyone else sees it). Changes are serialized.
    pub(crate) async fn update_roster<T>(
        &self,
        node: &Node,
        f: impl FnOnce(&mut Roster) -> T,
    ) -> Result<T> {
        let _writing = self.1.lock().await;
        let mut roster = Roster::clone(&self.roster());
        let before = self.roster_digest();
        let out = f(&mut roster);
        let digest = roster.digest();
        if digest != before {
            node.save_state(ROSTER_KEY, &roster).await?;
            let mut st = self.lock();
            st.seats = seats_of(&roster);
            st.roster = Arc::new(roster);
            st.roster_digest = digest;
        }
        Ok(out)
    }

    /// Merges `other` into the roster; persists and returns the count if anything changed.
    pub(crate) async fn merge_roster(&self, node: &Node, other: &Roster) -> Result<usize> {
        let now = crate::hlc::wall_millis();
        let (changed, refused) = self.update_roster(node, |r| r.merge(other, now)).await?;
        for e in refused {
            tracing::warn!(error = %e, "roster item refused");
        }
        Ok(changed)
    }

    /// The signed description of a remote dataset, if known.
    pub(crate) fn signed_meta(&self, id: &DatasetId) -> Option<SignedMeta> {
        self.lock().catalog.get(id).cloned()
    }

    /// Remembers a verified description of a remote dataset.
    pub(crate) async fn remember(&self, node: &Node, meta: SignedMeta) -> Result<()> {
        let key = format!("{CATALOG_PREFIX}{}", meta.meta.id);
        self.lock()
            .catalog
            .insert(meta.meta.id.clone(), meta.clone());
        node.save_state(&key, &meta).await
    }

    /// What a push of an envelope of `id` sealed under `epoch` must carry to `peer`: the
    /// dataset's description, the first time (`.0`); its access set, the first time and whenever
    /// the epoch is newer than any sent before, so the envelope never arrives before the access
    /// state that names its epoch (`.1`).
    pub(crate) fn announce(&self, peer: PeerId, id: &DatasetId, epoch: u64) -> (bool, bool) {
        let mut st = self.lock();
        let sent = st.announced.entry(peer).or_default();
        match sent.get_mut(id) {
            None => {
                sent.insert(id.clone(), epoch);
                (true, true)
            }
            Some(e) if *e < epoch => {
                *e = epoch;
                (false, true)
            }
            Some(_) => (false, false),
        }
    }

    /// Forgets what `peer` was sent (it may have restarted without it).
    pub(crate) fn forget_peer(&self, peer: &PeerId) {
        self.lock().announced.remove(peer);
    }

    /// Whether a catch-up with `peer` is running.
    pub(crate) fn syncing(&self, peer: &PeerId) -> bool {
        self.lock().syncing.contains(peer)
    }

    /// Marks a catch-up with `peer` as running; false if one already is.
    pub(crate) fn begin_sync(&self, peer: PeerId) -> bool {
        self.lock().syncing.insert(peer)
    }

    /// True unless `peer` was already asked to pull for these two roster digests.
    pub(crate) fn first_nudge(&self, peer: PeerId, mine: [u8; 32], theirs: [u8; 32]) -> bool {
        self.lock().nudged.insert(peer, (mine, theirs)) != Some((mine, theirs))
    }

    /// Forgets that `peer` was asked to pull (the request failed: ask again next time).
    pub(crate) fn forget_nudge(&self, peer: &PeerId) {
        self.lock().nudged.remove(peer);
    }

    /// Notes that `peer` may lack something, or have something new (a catch-up with it is
    /// retried every `RETRY_EVERY` until one completes that started after this).
    pub(crate) fn mark_dirty(&self, peer: PeerId) {
        let mut st = self.lock();
        st.dirty.insert(peer);
        if st.syncing.contains(&peer) {
            st.dirty_again.insert(peer);
        }
    }

    /// Notes that a catch-up with `peer` completed: clean, unless it was marked dirty while
    /// the catch-up ran.
    pub(crate) fn mark_clean(&self, peer: &PeerId) {
        let mut st = self.lock();
        if !st.dirty_again.remove(peer) {
            st.dirty.remove(peer);
        }
    }

    /// The members marked dirty.
    pub(crate) fn dirty(&self) -> Vec<PeerId> {
        self.lock().dirty.iter().copied().collect()
    }

    /// Marks it finished.
    pub(crate) fn end_sync(&self, peer: &PeerId) {
        let mut st = self.lock();
        st.syncing.remove(peer);
        st.dirty_again.remove(peer);
        let from = peer.to_string();
        st.progress.retain(|(_, f), _| *f != from);
    }

    /// Records catch-up progress.
    pub(crate) fn set_progress(&self, p: Progress) {
        let key = (p.dataset.clone(), p.from.clone());
        self.lock().progress.insert(key, p);
    }

    /// Catch-ups under way.
    pub(crate) fn progress(&self) -> Vec<Progress> {
        self.lock().progress.values().cloned().collect()
    }
}

fn founding_roster(node: &Node) -> Result<Roster> {
    let cfg = node.config();
    let me = Member::of(
        node.identity(),
        &cfg.mesh,
        &cfg.org,
        vec![],
        crate::hlc::wall_millis(),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    Roster::found(me, node.identity()).map_err(|e| Error::Internal(e.to_string()))
}

/// The remote dataset descriptions this node keeps, moving an earlier version's single value to
/// one key per dataset.
async fn load_catalog(node: &Node) -> Result<Vec<SignedMeta>> {
    if let Some(old) = node.load_state::<Vec<SignedMeta>>(OLD_CATALOG_KEY)? {
        for sm in &old {
            node.save_state(&format!("{CATALOG_PREFIX}{}", sm.meta.id), sm)
                .await?;
        }
        node.remove_state(OLD_CATALOG_KEY).await?;
    }
    node.load_states(CATALOG_PREFIX)
}
