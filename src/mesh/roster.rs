//! The mesh roster: who is a member, proven by signed certificates that chain to the founder.
//!
//! A certificate binds an organization to its identity key, PeerId, X25519 key and addresses. The
//! founder signs its own; every later member is signed by a member already on the roster (the one
//! that invited it); a member may re-sign its own entry to update its addresses. Rosters merge by
//! taking every certificate that verifies against what is already trusted, newest per organization,
//! so any member can relay the roster and no member can forge another's entry. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{AuthorId, Identity};
use crate::naming;

/// Domain-separation tag of member certificates.
pub const CERT_DOMAIN: &[u8] = b"fogmesh/member/v1\0";
/// Most members a roster may hold.
pub const MAX_MEMBERS: usize = 1024;
/// Most addresses one member may list.
pub const MAX_ADDRESSES: usize = 16;

/// Why a certificate or roster was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The signature does not verify.
    #[error("certificate of {0} has a bad signature")]
    Signature(String),
    /// Signed by someone who is not a member.
    #[error("certificate of {0} is signed by a non-member")]
    UnknownSigner(String),
    /// For another mesh.
    #[error("certificate of {org} is for mesh {mesh:?}")]
    OtherMesh {
        /// The org.
        org: String,
        /// The mesh it names.
        mesh: String,
    },
    /// The org already belongs to a different key.
    #[error("organization {0} is already a member with another key")]
    OrgTaken(String),
    /// The PeerId does not match the identity key.
    #[error("certificate of {0}: peer id does not match its key")]
    PeerId(String),
    /// Malformed fields.
    #[error("certificate: {0}")]
    Invalid(String),
    /// Too many members.
    #[error("roster is full ({MAX_MEMBERS} members)")]
    Full,
}

/// What a certificate says about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Mesh name.
    pub mesh: String,
    /// Organization.
    pub org: String,
    /// libp2p PeerId (derived from `author`).
    pub peer_id: String,
    /// ed25519 identity key, hex.
    pub author: String,
    /// X25519 key for key wrapping, hex.
    pub agreement_key: String,
    /// Last known multiaddrs.
    pub addresses: Vec<String>,
    /// When this version was signed (ms); newer versions of one org's entry replace older ones.
    pub updated: u64,
}

/// A signed member entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    /// The entry.
    pub member: Member,
    /// Hex author key of the signer (the member itself, or the member that admitted it).
    pub signer: String,
    /// Hex ed25519 signature over [`CERT_DOMAIN`] + canonical JSON of `member`.
    pub signature: String,
}

fn signed_bytes(m: &Member) -> Vec<u8> {
    let mut out = CERT_DOMAIN.to_vec();
    // Struct fields serialize in declaration order: the encoding is canonical for this version.
    out.extend_from_slice(&serde_json::to_vec(m).unwrap_or_default());
    out
}

fn parse_author(hex_key: &str) -> Option<AuthorId> {
    AuthorId::from_hex(hex_key)
}

impl Member {
    /// This node's entry.
    pub fn of(
        id: &Identity,
        mesh: &str,
        org: &str,
        addresses: Vec<String>,
        now_ms: u64,
    ) -> Result<Self, Error> {
        let peer_id = id
            .peer_id()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .to_string();
        Ok(Self {
            mesh: mesh.to_owned(),
            org: org.to_owned(),
            peer_id,
            author: id.author().to_string(),
            agreement_key: hex::encode(id.agreement_public()),
            addresses,
            updated: now_ms,
        })
    }

    /// The identity key.
    pub fn author_id(&self) -> Option<AuthorId> {
        parse_author(&self.author)
    }

    fn check_fields(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        naming::validate_ident("org", &self.org).map_err(|e| Error::Invalid(e.to_string()))?;
        if self.addresses.len() > MAX_ADDRESSES || self.addresses.iter().any(|a| a.len() > 256) {
            return bad(format!("{}: too many or too long addresses", self.org));
        }
        let Some(author) = self.author_id() else {
            return bad(format!("{}: bad author key", self.org));
        };
        let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(author.as_bytes())
            .map_err(|_| Error::Invalid(format!("{}: bad author key", self.org)))?;
        let derived = libp2p::identity::PublicKey::from(key)
            .to_peer_id()
            .to_string();
        if derived != self.peer_id {
            return Err(Error::PeerId(self.org.clone()));
        }
        if hex::decode(&self.agreement_key).map(|b| b.len()) != Ok(32) {
            return bad(format!("{}: bad agreement key", self.org));
        }
        Ok(())
    }
}

impl Cert {
    /// Signs `member` with `signer`.
    pub fn sign(member: Member, signer: &Identity) -> Self {
        let signature = hex::encode(signer.sign(&signed_bytes(&member)));
        Self {
            member,
            signer: signer.author().to_string(),
            signature,
        }
    }

    fn signature_ok(&self) -> bool {
        let (Some(signer), Ok(sig)) = (parse_author(&self.signer), hex::decode(&self.signature))
        else {
            return false;
        };
        let Ok(sig): Result<[u8; 64], _> = sig.try_into() else {
            return false;
        };
        signer.verify(&signed_bytes(&self.member), &sig)
    }
}

/// The set of members of one mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Mesh name.
    pub mesh: String,
    /// Hex author key of the founder: the root of trust.
    pub founder: String,
    /// Certificates by organization.
    pub members: BTreeMap<String, Cert>,
}

impl Roster {
    /// A new mesh founded by `cert`'s member, which must be self-signed.
    pub fn found(cert: Cert) -> Result<Self, Error> {
        let mut r = Self {
            mesh: cert.member.mesh.clone(),
            founder: cert.member.author.clone(),
            members: BTreeMap::new(),
        };
        r.admit(cert)?;
        Ok(r)
    }

    fn is_member_key(&self, author_hex: &str) -> bool {
        author_hex == self.founder || self.members.values().any(|c| c.member.author == author_hex)
    }

    /// Adds or updates one certificate if it verifies; `Ok(false)` when it is not newer.
    pub fn admit(&mut self, cert: Cert) -> Result<bool, Error> {
        let m = &cert.member;
        if m.mesh != self.mesh {
            return Err(Error::OtherMesh {
                org: m.org.clone(),
                mesh: m.mesh.clone(),
            });
        }
        m.check_fields()?;
        if !cert.signature_ok() {
            return Err(Error::Signature(m.org.clone()));
        }
        match self.members.get(&m.org) {
            Some(old) if old.member.author != m.author => {
                return Err(Error::OrgTaken(m.org.clone()))
            }
            Some(old) if old.member.updated >= m.updated => return Ok(false),
            Some(_) if cert.signer == m.author || self.is_member_key(&cert.signer) => {}
            None if self.is_member_key(&cert.signer) => {}
            _ => return Err(Error::UnknownSigner(m.org.clone())),
        }
        if self.members.len() >= MAX_MEMBERS && !self.members.contains_key(&m.org) {
            return Err(Error::Full);
        }
        if self
            .members
            .values()
            .any(|c| c.member.author == m.author && c.member.org != m.org)
        {
            return Err(Error::Invalid(format!(
                "key of {} already belongs to another org",
                m.org
            )));
        }
        self.members.insert(m.org.clone(), cert);
        Ok(true)
    }

    /// Merges another roster of the same mesh and founder: admits what verifies, in an order that
    /// lets chains resolve. Returns how many entries changed and the refusals.
    pub fn merge(&mut self, other: &Roster) -> (usize, Vec<Error>) {
        if other.mesh != self.mesh || other.founder != self.founder {
            return (
                0,
                vec![Error::OtherMesh {
                    org: String::new(),
                    mesh: other.mesh.clone(),
                }],
            );
        }
        let mut pending: Vec<&Cert> = other.members.values().collect();
        let mut changed = 0;
        loop {
            let before = pending.len();
            let mut errors = Vec::new();
            pending.retain(|c| match self.admit((*c).clone()) {
                Ok(true) => {
                    changed += 1;
                    false
                }
                Ok(false) => false,
                Err(Error::UnknownSigner(_)) => true,
                Err(e) => {
                    errors.push(e);
                    false
                }
            });
            if pending.is_empty() || pending.len() == before {
                errors.extend(
                    pending
                        .iter()
                        .map(|c| Error::UnknownSigner(c.member.org.clone())),
                );
                return (changed, errors);
            }
        }
    }

    /// A copy of `other` that keeps only what verifies from its founder down: what a joining node
    /// adopts from the member that admitted it.
    pub fn verified(other: &Roster) -> Result<Self, Error> {
        let founder = other
            .members
            .values()
            .find(|c| c.member.author == other.founder)
            .ok_or_else(|| Error::Invalid("the roster lacks its founder".into()))?;
        let mut r = Self::found(founder.clone())?;
        r.merge(other);
        Ok(r)
    }

    /// SHA-256 of the canonical JSON: equal digests mean equal rosters.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into()
    }

    /// The member with this PeerId.
    pub fn by_peer(&self, peer_id: &str) -> Option<&Member> {
        self.members
            .values()
            .map(|c| &c.member)
            .find(|m| m.peer_id == peer_id)
    }

    /// The member of this organization.
    pub fn by_org(&self, org: &str) -> Option<&Member> {
        self.members.get(org).map(|c| &c.member)
    }

    /// Every member.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|c| &c.member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seed: u8, org: &str) -> (Identity, Member) {
        let id = Identity::from_seed([seed; 32]);
        let m =
            Member::of(&id, "flu", org, vec!["/ip4/127.0.0.1/tcp/1".into()], 10).expect("member");
        (id, m)
    }

    fn founded() -> (Identity, Roster) {
        let (a, ma) = member(1, "hospital");
        let r = Roster::found(Cert::sign(ma, &a)).expect("found");
        (a, r)
    }

    #[test]
    fn members_admitted_by_members_chain_to_the_founder() {
        let (a, mut r) = founded();
        let (b, mb) = member(2, "pharmacy");
        assert_eq!(r.admit(Cert::sign(mb, &a)), Ok(true));
        let (_, mc) = member(3, "insurer");
        assert_eq!(r.admit(Cert::sign(mc, &b)), Ok(true), "a member may admit");
        assert_eq!(r.iter().count(), 3);
        assert_eq!(
            r.by_org("pharmacy").map(|m| m.peer_id.clone()),
            Some(b.peer_id().expect("p").to_string())
        );
    }

    #[test]
    fn strangers_and_forgeries_are_refused() {
        let (a, mut r) = founded();
        let (x, mx) = member(9, "mallory");
        assert!(matches!(
            r.admit(Cert::sign(mx.clone(), &x)),
            Err(Error::UnknownSigner(_))
        ));
        let mut cert = Cert::sign(mx, &a);
        cert.member.org = "mallory2".into();
        assert!(matches!(r.admit(cert), Err(Error::Signature(_))));
        let (_, mut mp) = member(4, "pharmacy");
        mp.peer_id = a.peer_id().expect("p").to_string();
        assert!(matches!(r.admit(Cert::sign(mp, &a)), Err(Error::PeerId(_))));
    }

    #[test]
    fn an_org_cannot_be_taken_over_but_may_update_itself() {
        let (a, mut r) = founded();
        let (b, mut mb) = member(2, "pharmacy");
        r.admit(Cert::sign(mb.clone(), &a)).expect("admit");
        let (_, mut evil) = member(5, "pharmacy");
        evil.updated = 99;
        assert!(matches!(
            r.admit(Cert::sign(evil, &a)),
            Err(Error::OrgTaken(_))
        ));
        mb.addresses = vec!["/ip4/10.0.0.2/tcp/7071".into()];
        mb.updated = 20;
        assert_eq!(r.admit(Cert::sign(mb.clone(), &b)), Ok(true), "self-update");
        mb.updated = 15;
        assert_eq!(
            r.admit(Cert::sign(mb, &b)),
            Ok(false),
            "older version ignored"
        );
    }

    #[test]
    fn rosters_merge_whatever_the_order() {
        let (a, mut r1) = founded();
        let (b, mb) = member(2, "pharmacy");
        let (_, mc) = member(3, "insurer");
        let mut r2 = r1.clone();
        r2.admit(Cert::sign(mb, &a)).expect("b");
        r2.admit(Cert::sign(mc, &b)).expect("c");
        let (changed, errors) = r1.merge(&r2);
        assert_eq!((changed, errors), (2, vec![]));
        assert_eq!(r1, r2);
        let (x, mx) = member(8, "other");
        let foreign = Roster::found(Cert::sign(mx, &x)).expect("found");
        assert_eq!(r1.merge(&foreign).0, 0);
    }
}
