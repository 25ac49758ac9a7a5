//! Grants: capabilities a dataset's owner signs for one organization's app (or all its apps).
//!
//! Canonical encoding, version 1 (integers big-endian, strings u16-length-prefixed UTF-8):
//!
//! ```text
//! "FMG" 0x01 | id | dataset | org | app | rights u8 | prefix? | not_after? u64
//!            | seq u64 | epoch u64 | cut u64 | issued u64 | signature[64]
//! ```
//!
//! `?` is a presence byte (0 or 1) then the value. The signature is the owner node's ed25519
//! signature over [`GRANT_DOMAIN`] and every byte before it. Decoding is strict: unknown rights
//! bits, other presence values, bad names, trailing bytes are all refused, so every single-byte
//! change of a grant fails to decode or to verify.
//!
//! A grant with no rights is a revocation. Grants to one grantee are ordered by `seq` (the owner's
//! counter per dataset); only the highest stands, and an older one presented again is refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::owner::Signers;
use crate::apps::Action;
use crate::codec::{Malformed, Reader, Writer};
use crate::identity::{AuthorId, Identity};
use crate::naming::{self, DatasetId};

/// Domain-separation tag prefixed to the signed bytes of a grant.
pub const GRANT_DOMAIN: &[u8] = b"fogmesh/grant/v1\0";
/// Largest encoded grant accepted.
pub const MAX_GRANT_BYTES: usize = 2048;
/// Most keys of the grantee's organization one grant states a cut for.
pub const MAX_CUTS: usize = 16;
const MAGIC: &[u8; 3] = b"FMG";
/// Version 1: one cut, for the grantee organization's only key; version 2 adds per-key cuts
/// (written once the grantee rotated a key).
const VERSION: u8 = 1;
const VERSION_CUTS: u8 = 2;
/// The app name that stands for every app of the grantee organization.
pub const ANY_APP: &str = "*";

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bytes that are not a grant.
    #[error("grant: {0}")]
    Malformed(#[from] Malformed),
    /// Too large to be a grant.
    #[error("grant of {0} bytes exceeds the cap of {MAX_GRANT_BYTES}")]
    TooLarge(usize),
    /// The signature is not the dataset owner's.
    #[error("grant {0}: signature is not the dataset owner's")]
    Signature(String),
    /// A grant for another dataset.
    #[error("grant {id} is for dataset {got}, not {want}")]
    Dataset {
        /// Grant id.
        id: String,
        /// Its dataset.
        got: String,
        /// The dataset it was presented for.
        want: String,
    },
    /// An older grant than the one standing for its grantee.
    #[error("grant {id} (sequence {got}) is superseded by sequence {have} for {grantee}")]
    Superseded {
        /// Grant id.
        id: String,
        /// Grantee.
        grantee: String,
        /// Its sequence.
        got: u64,
        /// The standing sequence.
        have: u64,
    },
    /// Two different grants with one sequence number for one grantee.
    #[error("grant {0}: the owner signed two different grants with one sequence")]
    Equivocation(String),
    /// Input from a user that cannot become a grant.
    #[error("{0}")]
    Invalid(String),
    /// A time past what a date shows (the end of year 9999).
    #[error("grant {id}: its {what} ({ms} ms) lies past the end of year 9999")]
    TimeOutOfRange {
        /// Grant id.
        id: String,
        /// `expiry` or `issued`.
        what: &'static str,
        /// The time.
        ms: u64,
    },
}

/// What a grant allows, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Rights(u8);

impl Rights {
    const READ: u8 = 1;
    const WRITE: u8 = 2;
    const QUERY: u8 = 4;
    const ALL: u8 = Self::READ | Self::WRITE | Self::QUERY;

    /// No rights: a revocation.
    pub const NONE: Self = Self(0);

    fn bit(a: Action) -> u8 {
        match a {
            Action::Read => Self::READ,
            Action::Write => Self::WRITE,
            Action::Query => Self::QUERY,
            // Not a right between organizations: no grant carries it.
            Action::Metrics => 0,
        }
    }

    /// The set of `actions`.
    pub fn of(actions: &[Action]) -> Self {
        Self(actions.iter().fold(0, |m, a| m | Self::bit(*a)))
    }

    /// Parses `read,write,query` (any subset, comma separated).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut m = 0;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            m |= match part {
                "read" => Self::READ,
                "write" => Self::WRITE,
                "query" => Self::QUERY,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown right {other:?}; rights are read, write, query"
                    )))
                }
            };
        }
        Ok(Self(m))
    }

    /// Whether `action` is included.
    pub fn allows(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    /// Whether the set is empty (a revocation).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the grantee's node needs the dataset's keys (to read or to write).
    pub fn needs_keys(self) -> bool {
        self.0 & (Self::READ | Self::WRITE) != 0
    }

    /// The actions, in order read, write, query.
    pub fn actions(self) -> Vec<Action> {
        [Action::Read, Action::Write, Action::Query]
            .into_iter()
            .filter(|a| self.allows(*a))
            .collect()
    }
}

impl Serialize for Rights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.actions().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::of(&Vec::<Action>::deserialize(d)?))
    }
}

/// Who a grant is for: `org/app`, or `org/*` for every app of the organization.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grantee {
    /// Organization.
    pub org: String,
    /// App name, or [`ANY_APP`].
    pub app: String,
}

impl Grantee {
    /// Parses `org/app` or `org/*`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (org, app) = s
            .split_once('/')
            .ok_or_else(|| Error::Invalid(format!("grantee {s:?} must be ORG/APP or ORG/*")))?;
        let bad = |e: naming::Error| Error::Invalid(format!("grantee {s:?}: {e}"));
        naming::validate_ident("organization", org).map_err(bad)?;
        if app != ANY_APP {
            naming::validate_ident("app name", app).map_err(bad)?;
        }
        Ok(Self {
            org: org.to_owned(),
            app: app.to_owned(),
        })
    }

    /// Whether this grantee covers app `app` of organization `org`.
    pub fn covers(&self, org: &str, app: &str) -> bool {
        self.org == org && (self.app == ANY_APP || self.app == app)
    }
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.app)
    }
}

impl Serialize for Grantee {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A capability on one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Unique id (a ULID).
    pub id: String,
    /// The dataset.
    pub dataset: DatasetId,
    /// Who it is for.
    pub grantee: Grantee,
    /// What it allows; empty for a revocation.
    pub rights: Rights,
    /// Only records whose name lies under this prefix.
    pub prefix: Option<String>,
    /// Expiry (ms since epoch); `None`: until revoked.
    pub not_after: Option<u64>,
    /// The owner's grant counter in this dataset: a higher one supersedes.
    pub seq: u64,
    /// The key epoch in force when it was issued (a revocation starts this epoch).
    pub epoch: u64,
    /// Envelopes of the grantee's node up to this sequence were accepted by the owner when it
    /// signed: they stay valid whatever this grant says.
    pub cut: u64,
    /// When it was signed (ms).
    pub issued: u64,
    /// Once the grantee's organization rotated its key: the cut of each of its keys (`cut` is
    /// then that of none but those listed). Empty: `cut` is that of its first key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<(AuthorId, u64)>,
}

impl Grant {
    /// Fails when a time it carries lies past the end of year 9999 (what a date shows): such a
    /// grant, signed by a member, is refused alone where it enters, so that no reader has to
    /// show or compute with it.
    pub fn check_times(&self) -> Result<(), Error> {
        let times = [("expiry", self.not_after), ("issued", Some(self.issued))];
        match times.into_iter().find_map(|(what, t)| {
            t.filter(|t| *t > crate::record::TIME_MAX_MS)
                .map(|ms| (what, ms))
        }) {
            Some((what, ms)) => Err(Error::TimeOutOfRange {
                id: self.id.clone(),
                what,
                ms,
            }),
            None => Ok(()),
        }
    }

    /// Checks the fields a user chose.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(p) = &self.prefix {
            naming::validate_record_name(p)
                .map_err(|e| Error::Invalid(format!("name prefix {p:?}: {e}")))?;
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if self.id.is_empty() || self.id.len() > 64 || !self.id.chars().all(id_ok) {
            return Err(Error::Invalid(format!("grant id {:?}", self.id)));
        }
        if self.seq == 0 {
            return Err(Error::Invalid("grant sequence starts at 1".into()));
        }
        if self.cuts.len() > MAX_CUTS {
            return Err(Error::Invalid(format!("more than {MAX_CUTS} key cuts")));
        }
        Ok(())
    }

    /// The sequence up to which envelopes of grantee key `author` stay valid whatever this
    /// grant says; `first` is the first key the grantee's organization had.
    pub fn cut_of(&self, author: &AuthorId, first: &AuthorId) -> u64 {
        if self.cuts.is_empty() {
            return if author == first { self.cut } else { 0 };
        }
        self.cuts
            .iter()
            .find(|(k, _)| k == author)
            .map_or(0, |(_, c)| *c)
    }

    /// Whether it is in force at `now_ms` (not a revocation, not expired).
    pub fn live(&self, now_ms: u64) -> bool {
        !self.rights.is_empty() && self.not_after.is_none_or(|t| now_ms <= t)
    }

    /// Whether it lets app `app` of `org` do `action` at `now_ms`.
    pub fn allows(&self, org: &str, app: &str, action: Action, now_ms: u64) -> bool {
        self.grantee.covers(org, app) && self.rights.allows(action) && self.live(now_ms)
    }

    fn body(&self) -> Writer {
        let mut w = Writer::default();
        let version = if self.cuts.is_empty() {
            VERSION
        } else {
            VERSION_CUTS
        };
        w.bytes(MAGIC).u8(version);
        w.str(&self.id).str(&self.dataset.to_string());
        w.str(&self.grantee.org).str(&self.grantee.app);
        w.u8(self.rights.0);
        w.option(self.prefix.as_deref(), |w, p| {
            w.str(p);
        });
        w.option(self.not_after, |w, t| {
            w.u64(t);
        });
        w.u64(self.seq)
            .u64(self.epoch)
            .u64(self.cut)
            .u64(self.issued);
        if !self.cuts.is_empty() {
            w.u8(self.cuts.len() as u8);
            for (k, c) in &self.cuts {
                w.bytes(k.as_bytes()).u64(*c);
            }
        }
        w
    }

    fn signed_bytes(&self) -> Vec<u8> {
        [GRANT_DOMAIN, &self.body().0].concat()
    }

    /// The same grant under a new sequence number, for re-signing with a new key.
    pub fn reissued(&self, seq: u64, issued: u64) -> Self {
        Self {
            seq,
            issued,
            ..self.clone()
        }
    }

    /// Signs the grant as the dataset's owner.
    pub fn sign(self, owner: &Identity) -> SignedGrant {
        let signature = owner.sign(&self.signed_bytes());
        SignedGrant {
            grant: self,
            signature,
        }
    }
}

/// A grant with its owner's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGrant {
    /// The grant.
    pub grant: Grant,
    /// ed25519 signature by the dataset's owner node.
    pub signature: [u8; 64],
}

impl SignedGrant {
    /// The canonical wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.grant.body();
        w.bytes(&self.signature);
        w.0
    }

    /// Parses strictly, without checking the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_GRANT_BYTES {
            return Err(Error::TooLarge(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return Err(Malformed("grant header").into());
        }
        let version = r.u8()?;
        if version != VERSION && version != VERSION_CUTS {
            return Err(Malformed("grant version").into());
        }
        let id = r.str()?.to_owned();
        let dataset = DatasetId::parse(r.str()?).map_err(|_| Malformed("grant dataset"))?;
        let grantee = Grantee::parse(&format!("{}/{}", r.str()?, r.str()?))
            .map_err(|_| Malformed("grantee"))?;
        let rights = r.u8()?;
        if rights & !Rights::ALL != 0 {
            return Err(Malformed("rights bits").into());
        }
        let prefix = r.option(|r| r.str().map(str::to_owned))?;
        let not_after = r.option(Reader::u64)?;
        let grant = Grant {
            id,
            dataset,
            grantee,
            rights: Rights(rights),
            prefix,
            not_after,
            seq: r.u64()?,
            epoch: r.u64()?,
            cut: r.u64()?,
            issued: r.u64()?,
            cuts: Vec::new(),
        };
        let mut grant = grant;
        if version == VERSION_CUTS {
            let n = usize::from(r.u8()?);
            if n == 0 || n > MAX_CUTS {
                return Err(Malformed("grant key cuts").into());
            }
            for _ in 0..n {
                grant
                    .cuts
                    .push((AuthorId::from_bytes(r.array()?), r.u64()?));
            }
        }
        let signature = r.array::<64>()?;
        r.finish()?;
        grant.validate().map_err(|_| Malformed("grant fields"))?;
        Ok(Self { grant, signature })
    }

    /// Checks that `owner` (the dataset owner's node key) signed it.
    pub fn verify(&self, owner: &(impl Signers + ?Sized)) -> Result<(), Error> {
        if owner.signed(&self.grant.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(Error::Signature(self.grant.id.clone()))
        }
    }

    /// Parses and verifies against the owner's key.
    pub fn decode_verified(bytes: &[u8], owner: &AuthorId) -> Result<Self, Error> {
        let g = Self::decode(bytes)?;
        g.verify(owner)?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: u64) -> Grant {
        Grant {
            id: format!("01J{seq:023}"),
            dataset: DatasetId::parse("hospital/flu-daily").expect("valid"),
            grantee: Grantee::parse("pharmacy/restock").expect("valid"),
            rights: Rights::parse("read,query").expect("valid"),
            prefix: Some("district-7".into()),
            not_after: Some(1_900_000_000_000),
            seq,
            epoch: 2,
            cut: 17,
            issued: 1_800_000_000_000,
            cuts: Vec::new(),
        }
    }

    #[test]
    fn a_grant_with_key_cuts_round_trips_and_every_byte_flip_is_rejected() {
        let owner = Identity::from_seed([1; 32]);
        let mut g = sample(4);
        g.cuts = vec![
            (AuthorId::from_bytes([7; 32]), 12),
            (AuthorId::from_bytes([8; 32]), 3),
        ];
        let wire = g.clone().sign(&owner).encode();
        let back = SignedGrant::decode_verified(&wire, &owner.author()).expect("decodes");
        assert_eq!(back.grant, g);
        assert_eq!(
            back.grant.cut_of(
                &AuthorId::from_bytes([8; 32]),
                &AuthorId::from_bytes([7; 32])
            ),
            3
        );
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x01;
            assert!(
                SignedGrant::decode_verified(&bad, &owner.author()).is_err(),
                "byte {i}"
            );
        }
        // A version-1 grant's cut is its grantee's first key's only.
        let v1 = sample(5);
        let first = AuthorId::from_bytes([7; 32]);
        assert_eq!(v1.cut_of(&first, &first), 17);
        assert_eq!(v1.cut_of(&AuthorId::from_bytes([8; 32]), &first), 0);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let owner = Identity::from_seed([1; 32]);
        let wire = sample(3).sign(&owner).encode();
        assert!(SignedGrant::decode_verified(&wire, &owner.author()).is_ok());
        for i in 0..wire.len() {
            for bit in [0x01u8, 0x20, 0x80, 0xff] {
                let mut bad = wire.clone();
                bad[i] ^= bit;
                assert!(
                    SignedGrant::decode_verified(&bad, &owner.author()).is_err(),
                    "flip {bit:#x} at byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn a_grant_signed_by_a_non_owner_is_rejected() {
        let owner = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let wire = sample(1).sign(&other).encode();
        assert!(matches!(
            SignedGrant::decode_verified(&wire, &owner.author()),
            Err(Error::Signature(_))
        ));
    }

    #[test]
    fn truncated_and_extended_grants_are_rejected() {
        let wire = sample(1).sign(&Identity::from_seed([1; 32])).encode();
        for n in 0..wire.len() {
            assert!(SignedGrant::decode(&wire[..n]).is_err(), "prefix of {n}");
        }
        let mut long = wire;
        long.push(0);
        assert!(SignedGrant::decode(&long).is_err());
    }

    #[test]
    fn expiry_and_revocation_end_a_grant() {
        let g = sample(1);
        assert!(g.allows("pharmacy", "restock", Action::Read, 1_800_000_000_000));
        assert!(!g.allows("pharmacy", "restock", Action::Write, 1_800_000_000_000));
        assert!(!g.allows("pharmacy", "other", Action::Read, 1_800_000_000_000));
        assert!(!g.allows("pharmacy", "restock", Action::Read, 1_900_000_000_001));
        let revoked = Grant {
            rights: Rights::NONE,
            ..g
        };
        assert!(!revoked.live(0));
    }

    #[test]
    fn rights_and_grantees_parse_strictly() {
        assert_eq!(
            Rights::parse("read, query").expect("ok").actions(),
            vec![Action::Read, Action::Query]
        );
        assert!(Rights::parse("read,delete").is_err());
        assert!(Grantee::parse("pharmacy").is_err());
        assert!(Grantee::parse("Pharmacy/x").is_err());
        assert!(Grantee::parse("pharmacy/*")
            .expect("ok")
            .covers("pharmacy", "any"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = SignedGrant::decode(&bytes);
        }
    }
}
