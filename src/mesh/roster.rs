//! The mesh roster: who is a member, with which keys, role and addresses.
//!
//! Membership and roles come from signed governance operations ([`super::govern`]): the founder's
//! own entry, admissions, role changes and removals signed by admins, resolved the same way on
//! every node. An organization's keys are those of the operation that admitted it; its
//! addresses change only by a [`Cert`] signed with its own key, the newest (by `updated`) winning.
//! Rosters merge by taking every operation and certificate that verifies, so any member can relay
//! the roster and no member can forge another's entry or admit anyone without being an admin.
//! Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{AuthorId, Identity};
use crate::naming;

use super::govern::{self, Action, Entry, Log, Op, OpId, Role};

/// Domain-separation tag of member certificates.
pub const CERT_DOMAIN: &[u8] = b"fogmesh/member/v1\0";
/// Most members a roster may hold.
pub const MAX_MEMBERS: usize = 1024;
/// Most addresses one member may list.
pub const MAX_ADDRESSES: usize = 16;
/// Longest address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// How far ahead of the receiver's clock a certificate may be dated.
pub const MAX_CERT_SKEW_MS: u64 = 3_600_000;

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
    /// A governance operation was refused.
    #[error(transparent)]
    Governance(#[from] govern::Error),
    /// A governance operation verified but did not take effect (the author lacks the authority,
    /// the target is not a member, ...).
    #[error("not applied: {0}")]
    NotApplied(String),
    /// The certificate is not newer than the one held.
    #[error("certificate of {0} is dated more than an hour ahead")]
    Future(String),
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
    /// When this version was signed (ms); newer versions of one org's addresses replace older
    /// ones. At most an hour ahead of the receiver's clock.
    pub updated: u64,
}

/// A signed member entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cert {
    /// The entry.
    pub member: Member,
    /// Hex author key of the signer: the member itself.
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

    pub(crate) fn check_fields(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        naming::validate_ident("org", &self.org).map_err(|e| Error::Invalid(e.to_string()))?;
        if self.addresses.len() > MAX_ADDRESSES
            || self
                .addresses
                .iter()
                .any(|a| a.len() > MAX_ADDRESS_BYTES || a.parse::<libp2p::Multiaddr>().is_err())
        {
            return bad(format!(
                "{}: too many, too long or malformed addresses",
                self.org
            ));
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

/// The members of one mesh: governance operations and the members' own address certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// Mesh name.
    pub mesh: String,
    /// Hex author key of the founder: the root of trust.
    pub founder: String,
    /// The governance operations.
    pub log: Log,
    /// Each organization's newest self-signed certificate (its addresses).
    pub certs: BTreeMap<String, Cert>,
    /// The resolved state; rebuilt from `log`, never taken from a peer.
    #[serde(skip)]
    state: govern::State,
}

/// A member as `fogmesh member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// Organization.
    pub org: String,
    /// `admin` or `member`.
    pub role: Role,
    /// `active` or `removed`.
    pub state: &'static str,
    /// PeerId.
    pub peer_id: String,
    /// Identity key (hex).
    pub author: String,
    /// X25519 key epoch keys are wrapped for (hex).
    pub agreement_key: String,
    /// Current addresses.
    pub addresses: Vec<String>,
    /// Governance operation that admitted it.
    pub admitted_by: OpId,
    /// Governance operation that removed it.
    pub removed_by: Option<OpId>,
    /// Identity keys it rotated away (hex), oldest first.
    pub retired_keys: Vec<String>,
}

impl Roster {
    /// A new mesh founded by `id` as organization `member.org`.
    pub fn found(member: Member, id: &Identity) -> Result<Self, Error> {
        let mut r = Self::empty(&member.mesh, &member.author);
        let (mesh, time) = (member.mesh.clone(), member.updated);
        let op = Op::sign(&mesh, Action::Found { member }, vec![], id, time);
        r.apply(op)?;
        Ok(r)
    }

    fn empty(mesh: &str, founder: &str) -> Self {
        Self {
            mesh: mesh.to_owned(),
            founder: founder.to_owned(),
            log: Log::default(),
            certs: BTreeMap::new(),
            state: govern::State::default(),
        }
    }

    /// Adds one governance operation signed here and resolves; an error if it did not take
    /// effect (the roster is then unchanged).
    pub fn apply(&mut self, op: Op) -> Result<OpId, Error> {
        let id = op.check(&self.mesh)?;
        op.check_times()?;
        let mut next = self.clone();
        next.log.insert(id.clone(), op)?;
        next.resolve();
        if !next.state.applied.contains(&id) {
            let why = next.state.dropped.get(&id).cloned().unwrap_or_default();
            return Err(Error::NotApplied(why));
        }
        *self = next;
        Ok(id)
    }

    /// The deps of the next operation signed here: the log's heads, those that took effect
    /// first, at most [`govern::MAX_DEPS`]. (Operations stored and dropped, such as a removed
    /// admin's, must not crowd out a removal the signer has seen.)
    pub fn heads(&self) -> Vec<OpId> {
        let mut heads = self.log.heads();
        heads.sort_by_key(|h| !self.state.applied.contains(h));
        heads.truncate(govern::MAX_DEPS);
        heads
    }

    /// Signs `action` by `id` after this roster's heads, and applies it.
    pub fn sign_and_apply(
        &mut self,
        action: Action,
        id: &Identity,
        now_ms: u64,
    ) -> Result<Op, Error> {
        let op = Op::sign(&self.mesh, action, self.heads(), id, now_ms);
        self.apply(op.clone())?;
        Ok(op)
    }

    fn resolve(&mut self) {
        self.state = self.log.resolve(&self.founder);
        let state = &self.state;
        // A certificate outlives nothing: it must match its organization's admitted keys.
        self.certs.retain(|org, c| {
            state
                .entries
                .get(org)
                .is_some_and(|e| e.active() && same_keys(&e.member, &c.member))
        });
    }

    /// Adds or updates one organization's own certificate (its addresses) if it verifies; `Ok(false)`
    /// when it is not newer than the one held.
    pub fn admit(&mut self, cert: Cert, now_ms: u64) -> Result<bool, Error> {
        let m = &cert.member;
        if m.mesh != self.mesh {
            return Err(Error::OtherMesh {
                org: m.org.clone(),
                mesh: m.mesh.clone(),
            });
        }
        m.check_fields()?;
        let entry = match self.state.entries.get(&m.org) {
            Some(e) if e.active() => e,
            _ => return Err(Error::UnknownSigner(m.org.clone())),
        };
        if !same_keys(&entry.member, m) {
            return Err(Error::OrgTaken(m.org.clone()));
        }
        if cert.signer != m.author || !cert.signature_ok() {
            return Err(Error::Signature(m.org.clone()));
        }
        if m.updated > now_ms.saturating_add(MAX_CERT_SKEW_MS) {
            return Err(Error::Future(m.org.clone()));
        }
        // A total order, so two certificates of one date cannot leave two nodes apart. The
        // entry an admin signed loses to the organization's own certificate if it is dated
        // further ahead than a certificate may be: an admission dated in year 9999 must not
        // freeze the organization's addresses.
        let ahead = entry.member.updated > now_ms.saturating_add(MAX_CERT_SKEW_MS);
        let newer = match self.certs.get(&m.org) {
            Some(c) => (m.updated, &cert.signature) > (c.member.updated, &c.signature),
            None => ahead || m.updated > entry.member.updated,
        };
        if !newer {
            return Ok(false);
        }
        self.certs.insert(m.org.clone(), cert);
        Ok(true)
    }

    /// Merges another roster of the same mesh and founder: every operation and certificate
    /// that verifies. Returns how many items were new and the refusals.
    pub fn merge(&mut self, other: &Roster, now_ms: u64) -> (usize, Vec<Error>) {
        if other.mesh != self.mesh || other.founder != self.founder {
            return (
                0,
                vec![Error::OtherMesh {
                    org: String::new(),
                    mesh: other.mesh.clone(),
                }],
            );
        }
        let (mut changed, mut errors) = (0, Vec::new());
        let mut pending: Vec<(OpId, &Op)> = Vec::new();
        for op in other.log.ops.values() {
            if self.log.ops.contains_key(&op.id()) {
                continue;
            }
            match op
                .check(&self.mesh)
                .and_then(|id| op.check_times().map(|()| id))
            {
                Ok(id) => pending.push((id, op)),
                Err(e) => errors.push(e.into()),
            }
        }
        // Stored only once what they name is held, in as many sweeps as the chain is long.
        let mut admins = govern::admin_keys(&self.founder, self.log.ops.values());
        let mut keys = govern::keys_by_org(self.log.ops.values());
        let mut progress = true;
        while progress && !pending.is_empty() {
            progress = false;
            let mut rest = Vec::new();
            for (id, op) in pending {
                let deps_held = op.body.deps.iter().all(|d| self.log.ops.contains_key(d));
                // An author made an admin by an operation later in this batch: try again after it.
                let may_sign = deps_held
                    && match &op.body.action {
                        Action::Found { .. } => true,
                        Action::Rotate { member, .. } => {
                            let own = keys
                                .get(&member.org)
                                .is_some_and(|k| k.contains(&op.body.author));
                            own && self.rotations_before(op, &member.org) < govern::MAX_ROTATIONS
                        }
                        _ => admins.contains(&op.body.author),
                    };
                if !may_sign {
                    rest.push((id, op));
                    continue;
                }
                progress = true;
                match self.store(id, op) {
                    Ok(()) => {
                        changed += 1;
                        if let Action::Found { member } | Action::Admit { member, .. } =
                            &op.body.action
                        {
                            keys.entry(member.org.clone())
                                .or_default()
                                .push(member.author.clone());
                        }
                        match &op.body.action {
                            Action::Admit {
                                member,
                                role: Role::Admin,
                                ..
                            } => {
                                admins.insert(member.author.clone());
                            }
                            Action::Role {
                                role: Role::Admin, ..
                            } => {
                                admins = govern::admin_keys(&self.founder, self.log.ops.values());
                            }
                            Action::Rotate { member, .. } => {
                                keys.entry(member.org.clone())
                                    .or_default()
                                    .push(member.author.clone());
                                if admins.contains(&op.body.author) {
                                    admins.insert(member.author.clone());
                                }
                            }
                            _ => {}
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            pending = rest;
        }
        errors.extend(pending.into_iter().map(|(id, _)| {
            Error::NotApplied(format!(
                "governance operation {id} names an operation not held, or is signed by a key no \
                 operation held here made an admin; not kept"
            ))
        }));
        if changed > 0 {
            self.resolve();
        }
        for cert in other.certs.values() {
            match self.admit(cert.clone(), now_ms) {
                Ok(new) => changed += usize::from(new),
                Err(e) => errors.push(e),
            }
        }
        (changed, errors)
    }

    /// Keeps one checked operation whose deps are held and whose author may sign (the caller
    /// checked both); a founding only as the mesh's first and only one.
    fn store(&mut self, id: OpId, op: &Op) -> Result<(), Error> {
        if matches!(op.body.action, Action::Found { .. })
            && (self.founding().is_some() || op.body.author != self.founder)
        {
            return Err(Error::NotApplied(format!(
                "governance operation {id}: a mesh is founded once, by its founder"
            )));
        }
        self.log.insert(id, op.clone())?;
        Ok(())
    }

    /// A copy of `other` that keeps only what verifies from its founder down: what a joining
    /// node adopts, and what a node rebuilds from its store.
    pub fn verified(other: &Roster, now_ms: u64) -> Result<Self, Error> {
        let mut r = Self::empty(&other.mesh, &other.founder);
        let (_, errors) = r.merge(other, now_ms);
        for e in errors {
            tracing::warn!(error = %e, "roster item refused");
        }
        if r.state
            .entries
            .values()
            .all(|e| e.keys().all(|k| k != r.founder))
        {
            return Err(Error::Invalid("the roster lacks its founder".into()));
        }
        Ok(r)
    }

    /// SHA-256 of the canonical encoding: equal digests mean equal rosters.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(serde_json::to_vec(self).unwrap_or_default()).into()
    }

    /// The current member with this PeerId.
    pub fn by_peer(&self, peer_id: &str) -> Option<Member> {
        self.iter().find(|m| m.peer_id == peer_id)
    }

    /// The current member of this organization.
    pub fn by_org(&self, org: &str) -> Option<Member> {
        let e = self.state.entries.get(org).filter(|e| e.active())?;
        Some(self.current(e))
    }

    /// The governance entry of `org`, removed ones included.
    pub fn entry(&self, org: &str) -> Option<&Entry> {
        self.state.entries.get(org)
    }

    /// Whether `org` is a current admin.
    pub fn is_admin(&self, org: &str) -> bool {
        self.entry(org)
            .is_some_and(|e| e.active() && e.role == Role::Admin)
    }

    /// Every current member, with its newest addresses.
    pub fn iter(&self) -> impl Iterator<Item = Member> + '_ {
        self.state
            .entries
            .values()
            .filter(|e| e.active())
            .map(|e| self.current(e))
    }

    /// Current members' organizations.
    pub fn orgs(&self) -> Vec<String> {
        self.iter().map(|m| m.org).collect()
    }

    /// Identity keys of removed members, and keys members rotated away: never to be let in
    /// again.
    pub fn removed_keys(&self) -> Vec<Member> {
        let removed = self.state.entries.values().filter(|e| !e.active());
        let retired = self.state.entries.values().flat_map(|e| &e.retired);
        removed
            .map(|e| e.member.clone())
            .chain(retired.map(|r| r.member.clone()))
            .collect()
    }

    /// The governance entries of every organization ever admitted, removed ones included.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.state.entries.values()
    }

    /// Every organization ever admitted, with role and state.
    pub fn list(&self) -> Vec<Listed> {
        self.state
            .entries
            .values()
            .map(|e| {
                let m = self.current(e);
                Listed {
                    org: m.org,
                    role: e.role,
                    state: if e.active() { "active" } else { "removed" },
                    peer_id: m.peer_id,
                    author: m.author,
                    agreement_key: m.agreement_key,
                    addresses: m.addresses,
                    admitted_by: e.admitted_by.clone(),
                    removed_by: e.removed_by.clone(),
                    retired_keys: e.retired.iter().map(|r| r.member.author.clone()).collect(),
                }
            })
            .collect()
    }

    /// Id of the operation that founded the mesh.
    pub fn founding(&self) -> Option<OpId> {
        self.log
            .ops
            .iter()
            .find(|(_, o)| matches!(o.body.action, Action::Found { .. }))
            .map(|(id, _)| id.clone())
    }

    /// Governance operations held that did not take effect, and why.
    pub fn dropped(&self) -> &BTreeMap<OpId, String> {
        &self.state.dropped
    }

    fn current(&self, e: &Entry) -> Member {
        match self.certs.get(&e.member.org) {
            Some(c) => c.member.clone(),
            None => e.member.clone(),
        }
    }
}

fn same_keys(a: &Member, b: &Member) -> bool {
    a.author == b.author && a.agreement_key == b.agreement_key && a.peer_id == b.peer_id
}

#[path = "roster_rotation.rs"]
mod rotation;

#[cfg(test)]
#[path = "roster_tests.rs"]
mod tests;
