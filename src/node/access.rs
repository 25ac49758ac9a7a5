//! The node's side of access control: who the member nodes are (their keys), issuing and
//! revoking grants on datasets this node owns, keeping every entitled member's wrapped epoch keys
//! in place, merging access state received from peers, write authority of incoming envelopes,
//! and per-app authorization of local requests.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::{AccessSet, Bundle, EpochKey, OwnerKeys, Writer};
use crate::apps::{Action, App};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::hlc;
use crate::identity::{AuthorId, Identity};
use crate::naming::DatasetId;
use crate::store::Table;

use super::dataset::Dataset;
use super::Node;

/// How far ahead of this node's wall clock an envelope's time may be; later ones are refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 3_600_000;

/// A member node as access control needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberKeys {
    /// Organization.
    pub org: String,
    /// Identity key (authors envelopes, signs grants of the datasets it owns).
    pub author: AuthorId,
    /// X25519 key epoch keys are wrapped for.
    pub agreement: [u8; 32],
    /// Removed from the mesh: what it signed before still verifies, but it gets no keys.
    pub removed: bool,
    /// Identity keys it rotated away, oldest first.
    pub retired: Vec<RetiredKey>,
}

/// An identity key an organization rotated away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    /// The key.
    pub author: AuthorId,
    /// What it signed is history up to this HLC time; envelopes it dates later are refused.
    pub until: u64,
}

impl MemberKeys {
    /// Whether `author` is one of its keys.
    pub(super) fn has(&self, author: &AuthorId) -> bool {
        self.author == *author || self.retired.iter().any(|r| r.author == *author)
    }

    /// Whether an envelope by `author` dated `hlc` is its own: signed with its current key, or
    /// with a retired one no later than its rotation.
    fn signed(&self, author: &AuthorId, hlc: u64) -> bool {
        self.author == *author
            || self
                .retired
                .iter()
                .any(|r| r.author == *author && hlc <= r.until)
    }

    /// The first key it had.
    pub(super) fn first_key(&self) -> &AuthorId {
        self.retired.first().map_or(&self.author, |r| &r.author)
    }

    /// Every key it signed with: the current one signs new items, the retired ones only what
    /// is held.
    fn owner_keys(&self, into: &mut OwnerKeys) {
        for r in &self.retired {
            into.add(r.author, false);
        }
        into.add(self.author, true);
    }
}

/// Member nodes by organization.
#[derive(Debug, Default)]
pub(crate) struct Directory(pub(super) HashMap<String, MemberKeys>);

impl Directory {
    fn org_of(&self, author: &AuthorId) -> Option<&str> {
        self.0
            .values()
            .find(|m| m.has(author))
            .map(|m| m.org.as_str())
    }
}

/// What is stored per dataset: the owner's key (checked against the roster when first learnt),
/// the keys its organization rotated to since (each checked when learnt) and the encoded
/// access set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    owner: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rotated: Vec<String>,
    bundle: Bundle,
}

impl Stored {
    /// No grants or keys yet, for a dataset owned by the node with key `owner`.
    pub(crate) fn empty(owner: AuthorId) -> Self {
        Self {
            owner: owner.to_string(),
            rotated: Vec::new(),
            bundle: Bundle::default(),
        }
    }

    /// Decodes the stored set (already verified when merged; checked again all the same).
    pub(crate) fn open(self, id: &DatasetId) -> Result<(AuthorId, AccessSet)> {
        let malformed = || Error::Internal(format!("{id}: stored owner key is malformed"));
        let owner = AuthorId::from_hex(&self.owner).ok_or_else(malformed)?;
        let mut keys = OwnerKeys::one(owner);
        for k in &self.rotated {
            // Stored items were checked when they came: every key that signed one counts.
            keys.add(AuthorId::from_hex(k).ok_or_else(malformed)?, true);
        }
        let mut set = AccessSet::new(id.clone());
        set.merge_bundle(&self.bundle, &keys)
            .map_err(|e| Error::Internal(format!("{id}: stored access state: {e}")))?;
        Ok((owner, set))
    }
}

/// The epoch keys wrapped for `me` in `set` that open, for its current key or a retired one.
pub(crate) fn my_keys(set: &AccessSet, me: &Identity) -> std::collections::BTreeMap<u64, EpochKey> {
    me.all().flat_map(|id| wrapped_for(set, id)).collect()
}

fn wrapped_for(set: &AccessSet, me: &Identity) -> Vec<(u64, EpochKey)> {
    let author = me.author();
    set.wraps_for(&author)
        .filter_map(|w| match w.unwrap_key(me) {
            Ok(k) => Some((w.epoch, k)),
            Err(e) => {
                tracing::warn!(dataset = %w.dataset, epoch = w.epoch, error = %e, "a key wrapped for this node does not open");
                None
            }
        })
        .collect()
}

impl Node {
    /// Tells the node who the member nodes are (the mesh calls this whenever its roster
    /// changes), then wraps missing epoch keys for entitled members of datasets it owns.
    pub async fn set_members(&self, members: Vec<MemberKeys>) -> Result<()> {
        {
            let mut dir = self
                .inner
                .directory
                .write()
                .unwrap_or_else(|e| e.into_inner());
            dir.0 = members.into_iter().map(|m| (m.org.clone(), m)).collect();
        }
        for ds in self.owned_datasets() {
            self.reconcile_keys(&ds).await?;
        }
        Ok(())
    }

    pub(super) fn owned_datasets(&self) -> Vec<Arc<Dataset>> {
        let org = &self.inner.config.org;
        self.all_datasets()
            .into_iter()
            .filter(|d| d.meta.id.owner() == org)
            .collect()
    }

    /// Whether `org`'s node must hold the keys of dataset `id` (a live read or write grant).
    pub fn holds_keys(&self, id: &crate::naming::DatasetId, org: &str) -> bool {
        self.held(id).is_some_and(|ds| {
            lock(&ds.access)
                .key_holders(hlc::wall_millis())
                .contains(org)
        })
    }

    /// An author as people know it: its organization, or its key when it is no member.
    pub fn author_name(&self, author: &AuthorId) -> String {
        self.org_of_author(author)
            .unwrap_or_else(|| author.to_string())
    }

    pub(super) fn directory(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.inner
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `org` was removed from the mesh.
    pub(crate) fn is_removed(&self, org: &str) -> bool {
        let dir = self.directory();
        dir.0.get(org).is_some_and(|m| m.removed)
    }

    pub(super) fn org_of_author(&self, author: &AuthorId) -> Option<String> {
        if *author == self.inner.identity.author() {
            return Some(self.inner.config.org.clone());
        }
        let dir = self.directory();
        dir.org_of(author).map(str::to_owned)
    }

    /// The cuts a grant to `org` on `ds` states: the envelopes of each of its keys this node
    /// holds, as `(cut, cuts)` of [`crate::access::Grant`] (`cuts` only once `org` rotated a
    /// key; at most [`crate::access::grant::MAX_CUTS`], the newest keys').
    pub(super) fn grantee_cuts(&self, ds: &Dataset, org: &str) -> (u64, Vec<(AuthorId, u64)>) {
        let vv = ds.version_vector();
        let dir = self.directory();
        let Some(m) = dir.0.get(org) else {
            return (0, Vec::new());
        };
        let cut = vv.get(&m.author);
        if m.retired.is_empty() {
            return (cut, Vec::new());
        }
        let mut cuts: Vec<(AuthorId, u64)> = std::iter::once(m.author)
            .chain(m.retired.iter().rev().map(|r| r.author))
            .map(|k| (k, vv.get(&k)))
            .filter(|(_, c)| *c > 0)
            .take(crate::access::grant::MAX_CUTS)
            .collect();
        if cuts.is_empty() {
            // Stated all the same, so that no key's cut falls back to the first key's.
            cuts.push((m.author, 0));
        }
        (cut, cuts)
    }

    /// The keys that sign `ds`'s grants and wrapped keys: the key it was learnt with, and every
    /// key its owner organization had (only the current one signs anything new).
    pub(crate) fn owner_keys(&self, ds: &Dataset) -> OwnerKeys {
        let mut keys = OwnerKeys::default();
        let owner = ds.meta.id.owner();
        if owner == self.inner.config.org {
            let me = &self.inner.identity;
            keys.add(me.author(), true);
            for past in me.past() {
                keys.add(past.author(), false);
            }
            keys.add(ds.owner_key, ds.owner_key == me.author());
            return keys;
        }
        let dir = self.directory();
        match dir.0.get(owner) {
            Some(m) => {
                m.owner_keys(&mut keys);
                keys.add(ds.owner_key, ds.owner_key == m.author);
            }
            None => keys.add(ds.owner_key, true),
        }
        keys
    }

    /// The epoch keys of dataset `id` that this node's stored access state lets it open: read
    /// from the store and unwrapped with this node's key, not taken from memory (so tests and
    /// audits see exactly what a copy of the node's disk would give).
    pub fn stored_keys(&self, id: &DatasetId) -> Result<std::collections::BTreeMap<u64, EpochKey>> {
        let stored = self
            .inner
            .store
            .get_json::<Stored>(Table::Access, id.to_string().as_bytes())?
            .ok_or_else(|| Error::NotFound(format!("no access state stored for {id}")))?;
        let (_, set) = stored.open(id)?;
        Ok(my_keys(&set, &self.inner.identity))
    }

    /// Subscribes to changes of datasets' access state (for the mesh to push).
    pub fn subscribe_access(&self) -> tokio::sync::broadcast::Receiver<DatasetId> {
        self.inner.access_changes.subscribe()
    }

    /// The digest of dataset `id`'s access state.
    pub fn access_digest(&self, id: &DatasetId) -> Option<[u8; 32]> {
        self.held(id).map(|d| lock(&d.access).digest())
    }

    /// The encoded access state of dataset `id`.
    pub fn access_bundle(&self, id: &DatasetId) -> Option<Bundle> {
        self.held(id).map(|d| lock(&d.access).bundle())
    }

    /// Merges access state received from a peer; applies envelopes that waited for keys now
    /// unwrapped. Returns how many items were new.
    pub async fn merge_access(&self, id: &DatasetId, bundle: &Bundle) -> Result<usize> {
        let ds = self
            .held(id)
            .ok_or_else(|| Error::NotFound(format!("dataset {id} not held here")))?;
        let (node, ds2, bundle) = (self.clone(), ds.clone(), bundle.clone());
        // Signatures are checked off the async threads.
        let new = tokio::task::spawn_blocking(move || -> Result<usize> {
            let owner = node.owner_keys(&ds2);
            let mut set = lock(&ds2.access);
            // Cheap first: a relayed bundle is mostly what is held already.
            if set.holds_all(&bundle) {
                return Ok(0);
            }
            // All or nothing: a bundle with one bad item changes nothing, so the digests keep
            // differing and a good copy is fetched again.
            bundle
                .check_times()
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let mut next = set.clone();
            let n = next
                .merge_bundle(&bundle, &owner)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            *set = next;
            Ok(n)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        if new > 0 {
            self.access_changed(&ds).await?;
        }
        Ok(new)
    }

    /// Persists `ds`'s access state, takes up keys newly wrapped for this node, wakes the open
    /// event streams (a grant may be gone) and tells the mesh.
    pub(super) async fn access_changed(&self, ds: &Arc<Dataset>) -> Result<()> {
        let keys = {
            // Stored under the lock: two changes at once must not leave the older on disk.
            let set = lock(&ds.access);
            let key = ds.meta.id.to_string();
            // Every key that ever signed part of it, so that the store opens it again.
            let before = self
                .inner
                .store
                .get_json::<Stored>(Table::Access, key.as_bytes())?;
            let mut rotated: Vec<String> = before.map(|s| s.rotated).unwrap_or_default();
            for k in self.owner_keys(ds).keys().filter(|k| **k != ds.owner_key) {
                let k = k.to_string();
                if !rotated.contains(&k) {
                    rotated.push(k);
                }
            }
            let stored = Stored {
                owner: ds.owner_key.to_string(),
                rotated,
                bundle: set.bundle(),
            };
            self.inner
                .store
                .put_json(Table::Access, key.as_bytes(), &stored)?;
            my_keys(&set, &self.inner.identity)
        };
        self.inner.store.durable().await?;
        let (node, ds2) = (self.clone(), ds.clone());
        let events = tokio::task::spawn_blocking(move || {
            let mut events = ds2.add_keys(&node.inner.store, keys.into_iter().collect())?;
            events.extend(node.forget_revoked_writes(&ds2)?);
            Ok::<_, Error>(events)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        self.inner.store.durable().await?;
        ds.publish_events(events);
        self.access_may_have_changed();
        let _ = self.inner.access_changes.send(ds.meta.id.clone());
        Ok(())
    }

    /// One rule for a revoked writer, the same on every node: its envelopes past the cut of the
    /// revocation are invalid wherever they were accepted (a node that had not learnt the
    /// revocation yet took them). Sets aside the stored ones this node holds and rebuilds the
    /// dataset without them, so every node ends with the same records and none fetches them
    /// again. Blocking.
    fn forget_revoked_writes(&self, ds: &Dataset) -> Result<Vec<super::dataset::Event>> {
        let owner = ds.meta.id.owner();
        let mut drop = Vec::new();
        {
            let set = lock(&ds.access);
            let dir = self.directory();
            for m in dir.0.values().filter(|m| m.org != owner) {
                // Only an organization that holds a grant without write can have lost it.
                if !set.grants().any(|g| {
                    g.grant.grantee.org == m.org
                        && !g.grant.rights.allows(crate::apps::Action::Write)
                }) {
                    continue;
                }
                let keys = std::iter::once(m.author).chain(m.retired.iter().map(|r| r.author));
                for key in keys {
                    let writer = Writer {
                        org: &m.org,
                        key: &key,
                        first_key: m.first_key(),
                    };
                    // Up to the highest cut the owner vouched for, every envelope stands.
                    let vouched = set
                        .grants()
                        .filter(|g| g.grant.grantee.org == m.org)
                        .map(|g| g.grant.cut_of(&key, m.first_key()))
                        .max()
                        .unwrap_or(0);
                    let store = &self.inner.store;
                    store.for_each_envelope_of(&ds.meta.id, &key, vouched, |env| {
                        let millis = hlc::Timestamp(env.hlc).millis();
                        if !set.may_write(writer, env.epoch, env.seq, millis) {
                            drop.push((env.author, env.seq));
                        }
                        Ok(())
                    })?;
                }
            }
        }
        if drop.is_empty() {
            return Ok(Vec::new());
        }
        tracing::warn!(dataset = %ds.meta.id, envelopes = drop.len(), "envelopes of a revoked writer past its revocation's cut set aside");
        ds.forget(
            &self.inner.store,
            &drop,
            "written past the cut of its author's revocation",
        )
    }

    /// Keeps the envelopes whose author may write them (the owner, or a member organization
    /// with write authority for that epoch); counts and logs the others.
    pub(crate) fn authorized(&self, ds: &Dataset, envs: Vec<Envelope>) -> Vec<Envelope> {
        // An epoch the owner never made would be waited for for ever (and block snapshots);
        // one made since reaches this node with the access state (a writer's push carries it
        // when its epoch is new to the receiver), and the envelope comes again in catch-up: not
        // refused as a forgery, only set aside for now.
        let newest = lock(&ds.access).epoch();
        let (early, envs): (Vec<_>, Vec<_>) = envs.into_iter().partition(|e| e.epoch > newest);
        if let Some(e) = early.first() {
            tracing::debug!(dataset = %ds.meta.id, count = early.len(), epoch = e.epoch, newest, "envelopes of an epoch this node does not know yet set aside until catch-up");
        }
        let (ok, refused): (Vec<_>, Vec<_>) = {
            let may = self.authority(ds);
            envs.into_iter().partition(|env| may(env))
        };
        for env in &refused {
            tracing::warn!(dataset = %ds.meta.id, author = %env.author, seq = env.seq, epoch = env.epoch, "envelope refused: no write authority, or dated more than an hour ahead");
            let m = &self.inner.metrics.envelopes_rejected;
            m.inc_by("dataset", &ds.meta.id.to_string(), 1);
        }
        self.audit_refused_envelopes(&ds.meta.id, &refused);
        ok
    }

    /// Whether an envelope received by push may be passed on before it is applied here: its
    /// dataset is held, its epoch known, no fork of its author kept, it is not held here yet and
    /// is within the changes this node would hold back for its author, and its author may write
    /// it (as [`Self::authorized`] judges, with nothing counted or logged). Its signature is the
    /// caller's to check.
    pub(crate) fn may_pass_on(&self, env: &Envelope) -> bool {
        let Some(ds) = self.held(&env.dataset) else {
            return false;
        };
        if env.epoch > lock(&ds.access).epoch() || self.fork_of(&env.dataset, &env.author).is_some()
        {
            return false;
        }
        let held = ds.version_vector().get(&env.author);
        let ahead = held.saturating_add(super::MAX_HELD_PER_AUTHOR as u64);
        if env.seq <= held || env.seq > ahead {
            return false;
        }
        let stored = self
            .inner
            .store
            .has_envelope(&env.dataset, &env.author, env.seq);
        if stored.unwrap_or(true) {
            return false;
        }
        let may = self.authority(&ds);
        may(env)
    }

    /// The rule of write authority for `ds` as it stands: the owner, or a member organization
    /// with write authority for the envelope's epoch, never dated more than the clock skew
    /// ahead, never by a key its organization rotated away before the envelope's time.
    fn authority<'a>(&'a self, ds: &'a Dataset) -> impl Fn(&Envelope) -> bool + 'a {
        let set = lock(&ds.access);
        let horizon = hlc::wall_millis().saturating_add(MAX_CLOCK_SKEW_MS);
        let dir = self.directory();
        move |env: &Envelope| {
            let millis = hlc::Timestamp(env.hlc).millis();
            // A time far ahead would drag every clock forward and break grant expiry checks.
            if millis > horizon {
                return false;
            }
            // A key its organization rotated away writes nothing dated after the rotation.
            let Some(m) = dir.0.values().find(|m| m.signed(&env.author, env.hlc)) else {
                return env.author == ds.owner_key && !dir.0.values().any(|m| m.has(&env.author));
            };
            let writer = Writer {
                org: &m.org,
                key: &env.author,
                first_key: m.first_key(),
            };
            m.org == ds.meta.id.owner() || set.may_write(writer, env.epoch, env.seq, millis)
        }
    }

    /// Whether `caller` may do `action` on `ds`, and the name prefix it is limited to. Datasets
    /// of this node's organization follow the app's local rights or a grant naming it; other
    /// organizations' datasets need their owner's grant (the admin may read and query what
    /// this node can open).
    pub(crate) fn authorize(
        &self,
        caller: &App,
        action: Action,
        ds: &Dataset,
    ) -> std::result::Result<Option<String>, bool> {
        let org = &self.inner.config.org;
        let now = hlc::wall_millis();
        let set = lock(&ds.access);
        if let Some(g) = set.allowing(org, &caller.name, action, now) {
            return Ok(g.prefix.clone());
        }
        let id = &ds.meta.id;
        let own = id.owner() == org;
        let allowed = if own {
            caller.may(action, id)
        } else {
            caller.admin && action != Action::Write
        };
        if allowed {
            return Ok(None);
        }
        // Err(true): the caller may know the dataset exists (403); Err(false): hide it (404).
        Err(!own || caller.sees(id) || set.names_org(org, now))
    }
}

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
