//! One dataset's access state as every member holds it: the standing grant per grantee and the
//! epoch keys wrapped for member nodes, all signed by the owner. Merging is idempotent and
//! order-independent for honest input, so any member may relay it. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::apps::Action;
use crate::identity::AuthorId;
use crate::naming::DatasetId;

use super::grant::{self, Grant, Grantee, SignedGrant};
use super::owner::Signers;
use super::wrap::{self, WrappedKey};

/// Most grantees one dataset may have.
pub const MAX_GRANTS: usize = 4096;
/// Most wrapped keys one dataset may carry (epochs x member nodes).
pub const MAX_WRAPS: usize = 65_536;

/// The encoded form, for the wire and the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Encoded signed grants.
    pub grants: Vec<ByteBuf>,
    /// Encoded wrapped keys.
    pub wraps: Vec<ByteBuf>,
}

impl Bundle {
    /// Fails on a grant whose times lie past year 9999 ([`grant::Grant::check_times`]):
    /// checked where a bundle arrives from a peer, not where a stored set is opened (a node
    /// that took one before this check still opens).
    pub fn check_times(&self) -> Result<(), Error> {
        for bytes in &self.grants {
            SignedGrant::decode(bytes)?.grant.check_times()?;
        }
        Ok(())
    }
}

/// Why (part of) a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A grant was refused.
    #[error(transparent)]
    Grant(#[from] grant::Error),
    /// A wrapped key was refused.
    #[error(transparent)]
    Wrap(#[from] wrap::Error),
    /// Too many items.
    #[error("access bundle of {0}: {1}")]
    TooMany(String, &'static str),
}

/// The author of an envelope as write authority needs it.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// Its organization.
    pub org: &'a str,
    /// The key that signed the envelope.
    pub key: &'a AuthorId,
    /// The first key its organization had (a version-1 grant's cut is that key's).
    pub first_key: &'a AuthorId,
}

/// A dataset's grants and wrapped keys.
#[derive(Debug, Clone)]
pub struct AccessSet {
    dataset: DatasetId,
    grants: BTreeMap<Grantee, SignedGrant>,
    wraps: BTreeMap<(u64, AuthorId), WrappedKey>,
    /// [`Self::digest`], computed once per change (every Hello asks for it).
    digest: std::sync::OnceLock<[u8; 32]>,
}

impl AccessSet {
    /// An empty set for `dataset`.
    pub fn new(dataset: DatasetId) -> Self {
        Self {
            dataset,
            grants: BTreeMap::new(),
            wraps: BTreeMap::new(),
            digest: std::sync::OnceLock::new(),
        }
    }

    /// The newest key epoch any grant or wrapped key names (0: none yet).
    pub fn epoch(&self) -> u64 {
        let g = self.grants.values().map(|g| g.grant.epoch);
        let w = self.wraps.keys().map(|(e, _)| *e);
        g.chain(w).max().unwrap_or(0)
    }

    /// The sequence number the owner's next grant takes.
    pub fn next_seq(&self) -> u64 {
        let top = self.grants.values().map(|g| g.grant.seq).max().unwrap_or(0);
        top.saturating_add(1)
    }

    /// Adds a grant signed by `owner` unless an equal or newer one stands for its grantee.
    /// Returns whether it changed anything.
    pub fn merge_grant(
        &mut self,
        g: SignedGrant,
        owner: &(impl Signers + ?Sized),
    ) -> Result<bool, grant::Error> {
        // Held already: it was checked when it came (perhaps signed by a key retired since).
        if self.grants.get(&g.grant.grantee) == Some(&g) {
            return Ok(false);
        }
        g.verify(owner)?;
        if g.grant.dataset != self.dataset {
            return Err(grant::Error::Dataset {
                id: g.grant.id.clone(),
                got: g.grant.dataset.to_string(),
                want: self.dataset.to_string(),
            });
        }
        if let Some(have) = self.grants.get(&g.grant.grantee) {
            if have.grant.seq > g.grant.seq {
                return Err(grant::Error::Superseded {
                    id: g.grant.id.clone(),
                    grantee: g.grant.grantee.to_string(),
                    got: g.grant.seq,
                    have: have.grant.seq,
                });
            }
            if have.grant.seq == g.grant.seq {
                return if *have == g {
                    Ok(false)
                } else {
                    Err(grant::Error::Equivocation(g.grant.id.clone()))
                };
            }
        } else if self.grants.len() >= MAX_GRANTS {
            return Err(grant::Error::Invalid(format!(
                "{} already has {MAX_GRANTS} grantees",
                self.dataset
            )));
        }
        self.digest = std::sync::OnceLock::new();
        self.grants.insert(g.grant.grantee.clone(), g);
        Ok(true)
    }

    /// Adds a wrapped key signed by `owner`; returns whether it was new. One signed with a
    /// current key replaces the one its slot holds if that one is not (its owner re-signed it
    /// after a key rotation).
    pub fn merge_wrap(
        &mut self,
        w: WrappedKey,
        owner: &(impl Signers + ?Sized),
    ) -> Result<bool, wrap::Error> {
        let key = (w.epoch, w.recipient);
        if self.wraps.get(&key) == Some(&w) {
            return Ok(false);
        }
        w.verify(owner)?;
        if w.dataset != self.dataset {
            return Err(wrap::Error::Signature(w.dataset.to_string()));
        }
        if let Some(held) = self.wraps.get(&key) {
            if held.verify(owner).is_ok() {
                return Ok(false);
            }
            self.digest = std::sync::OnceLock::new();
            self.wraps.insert(key, w);
            return Ok(true);
        }
        if self.wraps.len() >= MAX_WRAPS {
            return Err(wrap::Error::Hpke(
                w.dataset.to_string(),
                format!("already {MAX_WRAPS} wrapped keys"),
            ));
        }
        self.digest = std::sync::OnceLock::new();
        self.wraps.insert(key, w);
        Ok(true)
    }

    /// The standing grant of every grantee, revocations included.
    pub fn grants(&self) -> impl Iterator<Item = &SignedGrant> {
        self.grants.values()
    }

    /// Every wrapped key.
    pub fn wraps(&self) -> impl Iterator<Item = &WrappedKey> {
        self.wraps.values()
    }

    /// The standing grant with id `id`.
    pub fn find(&self, id: &str) -> Option<&Grant> {
        self.grants.values().map(|g| &g.grant).find(|g| g.id == id)
    }

    /// A live grant letting app `app` of `org` do `action` at `now_ms` (the app's own grant
    /// before the organization-wide one).
    pub fn allowing(&self, org: &str, app: &str, action: Action, now_ms: u64) -> Option<&Grant> {
        let own = Grantee {
            org: org.to_owned(),
            app: app.to_owned(),
        };
        let any = Grantee {
            org: org.to_owned(),
            app: grant::ANY_APP.to_owned(),
        };
        [own, any]
            .iter()
            .filter_map(|g| self.grants.get(g))
            .map(|g| &g.grant)
            .find(|g| g.allows(org, app, action, now_ms))
    }

    /// Whether any live grant names an app of `org`.
    pub fn names_org(&self, org: &str, now_ms: u64) -> bool {
        self.grants
            .values()
            .any(|g| g.grant.grantee.org == org && g.grant.live(now_ms))
    }

    /// Organizations whose nodes must hold the keys (a live read or write grant) at `now_ms`.
    pub fn key_holders(&self, now_ms: u64) -> BTreeSet<String> {
        self.grants
            .values()
            .map(|g| &g.grant)
            .filter(|g| g.live(now_ms) && g.rights.needs_keys())
            .map(|g| g.grantee.org.clone())
            .collect()
    }

    /// Whether an envelope by `org`'s node with key epoch `epoch`, sequence `seq` and clock
    /// `millis` carries write authority: a live write grant of the organization issued at or
    /// before that epoch and not expired at that time, or a sequence the owner vouched for (at
    /// or below a standing grant's `cut`) when it signed.
    pub fn may_write(&self, writer: Writer<'_>, epoch: u64, seq: u64, millis: u64) -> bool {
        self.grants
            .values()
            .map(|g| &g.grant)
            .filter(|g| g.grantee.org == writer.org)
            .any(|g| {
                seq <= g.cut_of(writer.key, writer.first_key)
                    || (g.rights.allows(Action::Write)
                        && g.epoch <= epoch
                        && g.not_after.is_none_or(|t| millis <= t))
            })
    }

    /// Whether `writer` could ever have written here: some grant to its organization carries
    /// the write right or vouches for sequences of its key.
    pub fn ever_writes(&self, writer: Writer<'_>) -> bool {
        self.grants
            .values()
            .map(|g| &g.grant)
            .filter(|g| g.grantee.org == writer.org)
            .any(|g| g.rights.allows(Action::Write) || g.cut_of(writer.key, writer.first_key) > 0)
    }

    /// Whether the key of `epoch` is wrapped for `recipient`.
    pub fn has_wrap(&self, epoch: u64, recipient: &AuthorId) -> bool {
        self.wraps.contains_key(&(epoch, *recipient))
    }

    /// The keys wrapped for `recipient`.
    pub fn wraps_for<'a>(
        &'a self,
        recipient: &'a AuthorId,
    ) -> impl Iterator<Item = &'a WrappedKey> {
        self.wraps
            .iter()
            .filter(move |((_, r), _)| r == recipient)
            .map(|(_, w)| w)
    }

    /// Encoded form.
    pub fn bundle(&self) -> Bundle {
        Bundle {
            grants: self
                .grants
                .values()
                .map(|g| ByteBuf::from(g.encode()))
                .collect(),
            wraps: self
                .wraps
                .values()
                .map(|w| ByteBuf::from(w.encode()))
                .collect(),
        }
    }

    /// A digest of the whole set: equal sets have equal digests. Computed once per change.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| {
            let mut h = Sha256::new();
            for g in self.grants.values() {
                h.update(g.encode());
            }
            h.update(b"|");
            for w in self.wraps.values() {
                h.update(w.encode());
            }
            h.finalize().into()
        })
    }

    /// True when every item of `b` is held as it is (nothing to check or merge). An item that
    /// does not decode is not held.
    pub fn holds_all(&self, b: &Bundle) -> bool {
        let grants = b.grants.iter().all(|bytes| {
            SignedGrant::decode(bytes).is_ok_and(|g| self.grants.get(&g.grant.grantee) == Some(&g))
        });
        grants
            && b.wraps.iter().all(|bytes| {
                WrappedKey::decode(bytes)
                    .is_ok_and(|w| self.wraps.get(&(w.epoch, w.recipient)) == Some(&w))
            })
    }

    /// Merges an encoded bundle signed by `owner`. Items already held or superseded are skipped;
    /// the first item that does not decode or verify fails the merge (after the good ones before
    /// it). Returns how many items were new.
    pub fn merge_bundle(
        &mut self,
        b: &Bundle,
        owner: &(impl Signers + ?Sized),
    ) -> Result<usize, Error> {
        let id = self.dataset.to_string();
        if b.grants.len() > MAX_GRANTS {
            return Err(Error::TooMany(id, "grants"));
        }
        if b.wraps.len() > MAX_WRAPS {
            return Err(Error::TooMany(id, "wrapped keys"));
        }
        let mut new = 0;
        for bytes in &b.grants {
            match self.merge_grant(SignedGrant::decode(bytes)?, owner) {
                Ok(true) => new += 1,
                Ok(false) | Err(grant::Error::Superseded { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for bytes in &b.wraps {
            new += usize::from(self.merge_wrap(WrappedKey::decode(bytes)?, owner)?);
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::super::grant::Rights;
    use super::*;
    use crate::identity::Identity;

    fn grant(seq: u64, to: &str, rights: &str, epoch: u64, cut: u64) -> Grant {
        Grant {
            id: format!("g{seq}"),
            dataset: DatasetId::parse("hospital/flu").expect("valid"),
            grantee: Grantee::parse(to).expect("valid"),
            rights: Rights::parse(rights).expect("valid"),
            prefix: None,
            not_after: Some(1_000),
            seq,
            epoch,
            cut,
            issued: 0,
            cuts: Vec::new(),
        }
    }

    fn set() -> (AccessSet, Identity) {
        let ds = DatasetId::parse("hospital/flu").expect("valid");
        (AccessSet::new(ds), Identity::from_seed([1; 32]))
    }

    /// A bundle from a peer holding a grant the owner signed with an expiry or issue time past
    /// year 9999 (which no reader can show: a dashboard panel went blank on one) is refused; one
    /// at the limit passes; a stored set holding one (taken before the check) still opens.
    #[test]
    fn a_grant_with_a_time_past_year_9999_is_refused_from_peers() {
        let (mut s, owner) = set();
        let max = crate::record::TIME_MAX_MS;
        let bundle = |g: Grant| Bundle {
            grants: vec![ByteBuf::from(g.sign(&owner).encode())],
            wraps: vec![],
        };
        // Which time a bundle is refused for.
        let refused_time = |b: Bundle| match b.check_times() {
            Err(Error::Grant(grant::Error::TimeOutOfRange { what, .. })) => Some(what),
            _ => None,
        };
        let mut far = grant(1, "pharmacy/*", "read", 1, 0);
        far.not_after = Some(max + 1);
        assert_eq!(refused_time(bundle(far.clone())), Some("expiry"));
        let mut late = grant(1, "pharmacy/*", "read", 1, 0);
        late.issued = u64::MAX;
        assert_eq!(refused_time(bundle(late)), Some("issued"));
        let mut edge = grant(1, "pharmacy/*", "read", 1, 0);
        (edge.not_after, edge.issued) = (Some(max), max);
        assert_eq!(bundle(edge).check_times(), Ok(()));
        // What a store already holds opens.
        assert_eq!(s.merge_bundle(&bundle(far), &owner.author()), Ok(1));
    }

    /// From an attacker review: the thief of a key the owner rotated away cannot add a grant or
    /// wrap a key of its choosing (for a future epoch, to make members seal under it); what the
    /// retired key signed before stays where it is held; the owner's re-signed copies replace it.
    #[test]
    fn a_retired_owner_key_adds_nothing_and_re_signed_copies_replace_its_items() {
        use crate::access::{EpochKey, OwnerKeys};
        let (mut s, old) = set();
        let new = Identity::from_seed([9; 32]);
        let member = Identity::from_seed([5; 32]);
        let (key, epoch_key) = (member.author(), EpochKey::generate());
        let ds = s.dataset.clone();
        let wrap = |by: &Identity, epoch| {
            WrappedKey::wrap(by, &ds, epoch, &epoch_key, key, &member.agreement_public())
                .expect("wrap")
        };
        let held_grant = grant(1, "pharmacy/*", "read", 1, 0).sign(&old);
        let held_wrap = wrap(&old, 1);
        s.merge_grant(held_grant.clone(), &old.author())
            .expect("grant");
        s.merge_wrap(held_wrap.clone(), &old.author())
            .expect("wrap");
        let mut keys = OwnerKeys::one(new.author());
        keys.add(old.author(), false);
        // What it signed before: held, harmless.
        assert_eq!(s.merge_grant(held_grant.clone(), &keys), Ok(false));
        assert_eq!(s.merge_wrap(held_wrap.clone(), &keys), Ok(false));
        // Anything new it signs: refused.
        assert!(s.merge_wrap(wrap(&old, 1_000_000), &keys).is_err());
        let forged = grant(u64::MAX, "mallory/*", "read,write", 1_000_000, 0).sign(&old);
        assert!(s.merge_grant(forged, &keys).is_err());
        assert_eq!(s.epoch(), 1);
        // The owner's copies under its new key replace the old ones.
        assert!(s
            .merge_wrap(held_wrap.resigned(&new), &keys)
            .expect("re-signed"));
        assert!(s.wraps().all(|w| w.signed_by(&new.author())));
        let again = held_grant.grant.reissued(2, 5).sign(&new);
        assert!(s.merge_grant(again, &keys).expect("re-issued"));
        assert!(s.grants().all(|g| g.verify(&new.author()).is_ok()));
        assert_eq!(s.next_seq(), 3);
    }

    #[test]
    fn a_superseded_grant_cannot_be_replayed() {
        let (mut s, owner) = set();
        let me = owner.author();
        let old = grant(1, "pharmacy/restock", "read", 1, 0).sign(&owner);
        let revoked = grant(2, "pharmacy/restock", "", 2, 0).sign(&owner);
        assert!(s.merge_grant(old.clone(), &me).expect("first"));
        assert!(s.merge_grant(revoked.clone(), &me).expect("newer"));
        assert!(matches!(
            s.merge_grant(old, &me),
            Err(grant::Error::Superseded {
                got: 1,
                have: 2,
                ..
            })
        ));
        assert!(!s.merge_grant(revoked, &me).expect("duplicate is harmless"));
        let forked = grant(2, "pharmacy/restock", "read", 2, 0).sign(&owner);
        assert!(matches!(
            s.merge_grant(forked, &me),
            Err(grant::Error::Equivocation(_))
        ));
        assert!(s
            .allowing("pharmacy", "restock", Action::Read, 10)
            .is_none());
    }

    #[test]
    fn grants_from_a_non_owner_or_for_another_dataset_are_rejected() {
        let (mut s, owner) = set();
        let mallory = Identity::from_seed([9; 32]);
        let forged = grant(1, "insurer/*", "read,write", 1, 0).sign(&mallory);
        assert!(s.merge_grant(forged, &owner.author()).is_err());
        let mut other = grant(1, "insurer/*", "read", 1, 0);
        other.dataset = DatasetId::parse("hospital/other").expect("valid");
        assert!(matches!(
            s.merge_grant(other.sign(&owner), &owner.author()),
            Err(grant::Error::Dataset { .. })
        ));
        assert_eq!(s.grants().count(), 0);
    }

    #[test]
    fn write_authority_follows_epochs_expiry_and_cuts() {
        let (mut s, owner) = set();
        let me = owner.author();
        s.merge_grant(grant(1, "pharmacy/*", "read,write", 2, 0).sign(&owner), &me)
            .expect("grant");
        let (k1, k2) = (AuthorId::from_bytes([1; 32]), AuthorId::from_bytes([2; 32]));
        let pharmacy = Writer {
            org: "pharmacy",
            key: &k1,
            first_key: &k1,
        };
        let insurer = Writer {
            org: "insurer",
            ..pharmacy
        };
        assert!(s.may_write(pharmacy, 2, 1, 500));
        assert!(
            !s.may_write(pharmacy, 1, 1, 500),
            "before the grant's epoch"
        );
        assert!(!s.may_write(pharmacy, 2, 1, 1_001), "after expiry");
        assert!(!s.may_write(insurer, 2, 1, 500), "no grant");
        // Revoked at epoch 3, after the owner had accepted 40 of its envelopes.
        s.merge_grant(grant(2, "pharmacy/*", "", 3, 40).sign(&owner), &me)
            .expect("revoke");
        assert!(s.may_write(pharmacy, 2, 40, 500), "vouched for");
        assert!(
            !s.may_write(pharmacy, 2, 41, 500),
            "written after the revocation"
        );
        assert!(!s.may_write(pharmacy, 3, 41, 500));
        assert!(s.key_holders(500).is_empty());
        // The pharmacy rotated to k2: a version-1 cut vouches for its first key only.
        let rotated = Writer {
            key: &k2,
            ..pharmacy
        };
        assert!(
            !s.may_write(rotated, 2, 1, 500),
            "the new key's seq 1 is not vouched for"
        );
        // A later grant states each key's cut.
        let mut g = grant(3, "pharmacy/*", "", 4, 0);
        g.cuts = vec![(k1, 45), (k2, 3)];
        s.merge_grant(g.sign(&owner), &me).expect("revoke again");
        assert!(s.may_write(pharmacy, 2, 45, 500));
        assert!(!s.may_write(pharmacy, 2, 46, 500));
        assert!(s.may_write(rotated, 4, 3, 500));
        assert!(!s.may_write(rotated, 4, 4, 500));
    }

    #[test]
    fn bundles_round_trip_and_digests_match() {
        let (mut s, owner) = set();
        let me = owner.author();
        let reader = Identity::from_seed([2; 32]);
        s.merge_grant(grant(1, "pharmacy/*", "read", 1, 0).sign(&owner), &me)
            .expect("grant");
        let key = super::super::seal::EpochKey::generate();
        let w = WrappedKey::wrap(
            &owner,
            &s.dataset.clone(),
            1,
            &key,
            reader.author(),
            &reader.agreement_public(),
        )
        .expect("wrap");
        assert!(s.merge_wrap(w, &me).expect("wrap merges"));
        let (mut copy, _) = set();
        assert!(!copy.holds_all(&s.bundle()));
        let before = copy.digest();
        assert_eq!(copy.merge_bundle(&s.bundle(), &me).expect("merge"), 2);
        assert_ne!(copy.digest(), before, "the cached digest follows a change");
        assert_eq!(copy.digest(), s.digest());
        assert!(copy.holds_all(&s.bundle()));
        let mut odd = s.bundle();
        odd.grants.push(ByteBuf::from(vec![0xff]));
        assert!(
            !copy.holds_all(&odd),
            "an item that does not decode is not held"
        );
        assert_eq!(copy.merge_bundle(&s.bundle(), &me).expect("again"), 0);
        assert_eq!(copy.wraps_for(&reader.author()).count(), 1);
        assert_eq!(copy.epoch(), 1);
        let mallory = Identity::from_seed([9; 32]);
        let (mut fresh, _) = set();
        assert!(fresh.merge_bundle(&s.bundle(), &mallory.author()).is_err());
        // What is held already was checked when it came: merging it again changes nothing.
        assert_eq!(copy.merge_bundle(&s.bundle(), &mallory.author()), Ok(0));
    }
}
