//! Governance of a mesh: who is a member and who may change that, as a set of signed operations
//! that every node resolves to the same roster whatever order they arrived in. Pure: no I/O.
//!
//! # Operations
//!
//! Each [`Op`] is signed by its author's identity key and names the operations its author had
//! seen (`deps`, the heads of its set when it signed), so the operations form a DAG:
//!
//! | action | who may sign it | effect |
//! |---|---|---|
//! | `found` | the founder (the roster's root of trust), once, with no deps | the founder is an admin |
//! | `admit` | an admin | a new organization joins with the keys in its entry, as `member` or `admin` |
//! | `role` | an admin | an organization's role changes |
//! | `remove` | an admin | an organization is removed; its key may never be admitted again |
//! | `rotate` | the organization itself, with its current key | its keys are replaced; `proof` is the new key's signature |
//!
//! # Resolution (the rule every node applies)
//!
//! 1. An operation whose deps are not all held waits; it takes part once they arrive.
//! 2. Operations are applied in one fixed order that respects the DAG: by height (1 + the
//!    greatest height of its deps), then by hash. Each is checked against the state built by the
//!    operations before it: its author must be a member, an admin for `admit`, `role` and
//!    `remove`; `admit` needs an organization name and a key not seen before (removed ones
//!    included); `role` and `remove` need a current member. Every operation but `found` must
//!    be signed with its author's current key: a key its organization rotated away signs
//!    nothing more. `rotate` needs a key not seen before, for the signer's own organization.
//! 3. **Strong remove and demote.** Once an organization is removed by operation R, every
//!    operation its key signed that R did not see (concurrent with R, or after it) is dropped,
//!    except its removal of the admin that signed R: two admins that remove each other
//!    concurrently are both removed. Likewise every operation a key signed that its last demotion
//!    did not see (a `rotate` excepted: it needs no admin). Likewise, once an organization
//!    rotates its key in operation T, every operation the retired key signed that T did not
//!    see. Dropping an operation can undo what it did, so resolution repeats until the
//!    set of dropped operations is stable; should the passes cycle, the union of the cycle's
//!    dropped sets is dropped.
//! 4. **Equivocating rotations.** Two `rotate` operations signed with one key where neither saw
//!    the other mean the key is in two hands (a thief's and its organization's): both are
//!    dropped and the organization is removed, as if by the lower of the two.
//! 5. **Conflicting admissions.** Then, two admissions of one organization name or one key, both
//!    signed with authority, where neither saw the other, are both dropped (and step 3 settles
//!    again around that): no admin can take over a member's name, and with it the keys wrapped
//!    for it, by signing a second admission that sorts first. An admission of the founder's name
//!    or key is simply invalid.
//!
//! What a node stores is decided from what it already holds, never from the batch that brings
//! it: an operation is kept only once every operation it names is held, and only if its author
//! was made an admin (or founded the mesh) by an operation already held; a second `found` is
//! never kept. So every stored operation takes part in resolution, and a member that is no admin
//! can neither fill the log nor leave an operation waiting that every later one would name.
//!
//! The result is a function of the set of operations alone, so every node that holds the same
//! set holds the same roster. An organization's entry otherwise changes only through a
//! [`Cert`](super::roster::Cert) signed with its own key (its addresses).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::roster::Member;
use crate::identity::{AuthorId, Identity};

mod resolve;

pub use resolve::{admin_keys, keys_by_org};

/// Domain-separation tag of governance operations.
pub const OP_DOMAIN: &[u8] = b"fogmesh/governance/v1\0";
/// Domain-separation tag of the new key's proof in a `rotate`.
pub const ROTATE_DOMAIN: &[u8] = b"fogmesh/rotate/v1\0";
/// Most key rotations one organization may store: a member that is no admin may sign these,
/// so they are capped for it not to fill the log.
pub const MAX_ROTATIONS: usize = 64;
/// Most operations a mesh's governance may hold.
pub const MAX_OPS: usize = 4096;
/// Most deps one operation may name.
pub const MAX_DEPS: usize = 64;
/// Resolution passes before the dropped set is taken as it is (each pass can only follow a
/// removal one step further down a chain of admins removing each other).
const MAX_PASSES: usize = 16;

/// An operation's id: hex SHA-256 of its signed bytes and signature.
pub type OpId = String;

/// What a member may do to the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May invite and admit, change roles, remove members.
    Admin,
    /// Takes part in the mesh; changes nothing but its own entry.
    Member,
}

impl Role {
    /// `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// Parses `admin` or `member`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// A governance action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Action {
    /// The founder's own entry; the first operation of a mesh.
    Found {
        /// The founder.
        member: Member,
    },
    /// An admin admits an organization that redeemed its invitation.
    Admit {
        /// The new member's entry (its keys, its first addresses).
        member: Member,
        /// Its role.
        role: Role,
        /// Hash of the invitation's secret it redeemed.
        invitation: String,
    },
    /// An admin changes a member's role.
    Role {
        /// The organization.
        org: String,
        /// Its new role.
        role: Role,
    },
    /// An admin removes a member.
    Remove {
        /// The organization.
        org: String,
    },
    /// An organization replaces its keys, signed with its current key.
    Rotate {
        /// Its entry with the new keys (and its addresses).
        member: Member,
        /// Envelopes the retired key signs are history up to this HLC time; later ones are
        /// refused.
        until: u64,
        /// Hex signature by the new key over [`ROTATE_DOMAIN`], the mesh, the organization and
        /// the retired key: nobody rotates to a key it does not hold.
        proof: String,
    },
}

impl Action {
    /// Short name for logs and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Found { .. } => "found",
            Self::Admit { .. } => "admit",
            Self::Role { .. } => "role",
            Self::Remove { .. } => "remove",
            Self::Rotate { .. } => "rotate",
        }
    }
}

fn proof_message(mesh: &str, org: &str, retired: &str) -> Vec<u8> {
    [
        ROTATE_DOMAIN,
        mesh.as_bytes(),
        b"\0",
        org.as_bytes(),
        b"\0",
        retired.as_bytes(),
    ]
    .concat()
}

/// The new key's proof for a rotation of `org`'s key `retired` (hex) to `new`.
pub fn rotation_proof(mesh: &str, org: &str, retired: &str, new: &Identity) -> String {
    hex::encode(new.sign(&proof_message(mesh, org, retired)))
}

fn proof_ok(mesh: &str, retired: &str, member: &Member, proof: &str) -> bool {
    let (Some(new), Ok(sig)) = (member.author_id(), hex::decode(proof)) else {
        return false;
    };
    <[u8; 64]>::try_from(sig)
        .is_ok_and(|s| new.verify(&proof_message(mesh, &member.org, retired), &s))
}

/// What an operation's author signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// Mesh name.
    pub mesh: String,
    /// The action.
    pub action: Action,
    /// Ids of the operations the author had seen: the heads of its set.
    pub deps: Vec<OpId>,
    /// Hex identity key of the author.
    pub author: String,
    /// When it was signed (ms), for people; resolution never reads it.
    pub time: u64,
}

/// A signed governance operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// What was signed.
    pub body: Body,
    /// Hex ed25519 signature over [`OP_DOMAIN`] + canonical JSON of `body`.
    pub signature: String,
}

/// Why an operation was refused outright (before resolution).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The signature does not verify, or the author key is malformed.
    #[error("governance operation {0}: bad signature")]
    Signature(OpId),
    /// For another mesh.
    #[error("governance operation {id}: for mesh {mesh:?}")]
    OtherMesh {
        /// The operation.
        id: OpId,
        /// The mesh it names.
        mesh: String,
    },
    /// Malformed: too many deps, a bad id, a bad entry.
    #[error("governance operation {id}: {detail}")]
    Invalid {
        /// The operation.
        id: OpId,
        /// What is wrong.
        detail: String,
    },
    /// The mesh holds as many operations as it may.
    #[error("governance is full ({MAX_OPS} operations)")]
    Full,
}

fn canonical(body: &Body) -> Vec<u8> {
    let mut out = OP_DOMAIN.to_vec();
    // Struct fields serialize in declaration order: the encoding is canonical for this version.
    out.extend_from_slice(&serde_json::to_vec(body).unwrap_or_default());
    out
}

impl Op {
    /// Signs `action` by `signer`, after `deps`.
    pub fn sign(mesh: &str, action: Action, deps: Vec<OpId>, signer: &Identity, time: u64) -> Self {
        let body = Body {
            mesh: mesh.to_owned(),
            action,
            deps,
            author: signer.author().to_string(),
            time,
        };
        let signature = hex::encode(signer.sign(&canonical(&body)));
        Self { body, signature }
    }

    /// The operation's id.
    pub fn id(&self) -> OpId {
        let mut h = Sha256::new();
        h.update(canonical(&self.body));
        h.update(self.signature.as_bytes());
        hex::encode(h.finalize())
    }

    /// Checks signature, mesh and shape; returns the id.
    pub fn check(&self, mesh: &str) -> Result<OpId, Error> {
        let id = self.id();
        let invalid = |detail: &str| Error::Invalid {
            id: id.clone(),
            detail: detail.to_owned(),
        };
        if self.body.mesh != mesh {
            return Err(Error::OtherMesh {
                id,
                mesh: self.body.mesh.clone(),
            });
        }
        if self.body.deps.len() > MAX_DEPS {
            return Err(invalid("too many deps"));
        }
        if self.body.deps.iter().any(|d| !is_id(d)) {
            return Err(invalid("a dep is not an operation id"));
        }
        match &self.body.action {
            Action::Found { member }
            | Action::Admit { member, .. }
            | Action::Rotate { member, .. } => {
                if member.mesh != mesh {
                    return Err(invalid("its entry names another mesh"));
                }
                member.check_fields().map_err(|e| invalid(&e.to_string()))?;
            }
            Action::Role { org, .. } | Action::Remove { org } => {
                crate::naming::validate_ident("org", org).map_err(|e| invalid(&e.to_string()))?;
            }
        }
        if let Action::Admit { invitation, .. } = &self.body.action {
            if invitation.len() > 128 {
                return Err(invalid("invitation hash too long"));
            }
        }
        if let Action::Rotate { member, proof, .. } = &self.body.action {
            if !proof_ok(mesh, &self.body.author, member, proof) {
                return Err(invalid("the new key's proof does not verify"));
            }
        }
        let ok = match (
            AuthorId::from_hex(&self.body.author),
            hex::decode(&self.signature),
        ) {
            (Some(a), Ok(sig)) => <[u8; 64]>::try_from(sig)
                .map(|s| a.verify(&canonical(&self.body), &s))
                .unwrap_or(false),
            _ => false,
        };
        if !ok {
            return Err(Error::Signature(id));
        }
        Ok(id)
    }

    /// Refuses times past the end of year 9999 ([`crate::record::TIME_MAX_MS`]): when it was
    /// signed, its entry's `updated`, a rotation's `until`. Checked where operations arrive from
    /// peers or are signed here, not on those a store already holds (a node that took one before
    /// this check still opens). The same static bound on every node, so resolution stays alike.
    pub fn check_times(&self) -> Result<(), Error> {
        let max = crate::record::TIME_MAX_MS;
        let (updated, until) = match &self.body.action {
            Action::Found { member } | Action::Admit { member, .. } => (Some(member.updated), None),
            Action::Rotate { member, until, .. } => (
                Some(member.updated),
                Some(crate::hlc::Timestamp(*until).millis()),
            ),
            Action::Role { .. } | Action::Remove { .. } => (None, None),
        };
        let late = [Some(self.body.time), updated, until]
            .into_iter()
            .flatten()
            .any(|t| t > max);
        match late {
            true => Err(Error::Invalid {
                id: self.id(),
                detail: "a time after the end of year 9999".into(),
            }),
            false => Ok(()),
        }
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An organization as governance leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its entry as admitted (keys; addresses are updated by its own certificates).
    pub member: Member,
    /// Its role.
    pub role: Role,
    /// The operation that admitted it (or founded the mesh).
    pub admitted_by: OpId,
    /// The operation that removed it, if it was removed.
    pub removed_by: Option<OpId>,
    /// The last operation that made it a plain member, if any.
    pub demoted_by: Option<OpId>,
    /// Keys it rotated away, oldest first.
    pub retired: Vec<Retired>,
}

/// A key an organization rotated away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retired {
    /// Its entry with the retired keys.
    pub member: Member,
    /// Envelopes signed with it are history up to this HLC time.
    pub until: u64,
    /// The `rotate` operation.
    pub by: OpId,
}

impl Entry {
    /// Whether it is a current member.
    pub fn active(&self) -> bool {
        self.removed_by.is_none()
    }

    /// Every identity key it had: the current one, then the retired ones.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.member.author.as_str())
            .chain(self.retired.iter().map(|r| r.member.author.as_str()))
    }
}

/// The resolved governance state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Every organization ever admitted, removed ones included, by name.
    pub entries: BTreeMap<String, Entry>,
    /// Operations that took effect.
    pub applied: BTreeSet<OpId>,
    /// Operations held but not applied, and why.
    pub dropped: BTreeMap<OpId, String>,
    /// Organization by identity key.
    keys: HashMap<String, String>,
    /// Admissions found in conflict in this pass (dropped in the next ones).
    conflicts: BTreeMap<OpId, String>,
    /// Organizations whose key signed two rotations that did not see each other, with the
    /// lower of the two ids: removed by the rule (found in one pass, applied in the next).
    equivocated: BTreeMap<String, OpId>,
}

impl State {
    fn by_key(&self, author: &str) -> Option<&Entry> {
        self.keys.get(author).and_then(|org| self.entries.get(org))
    }

    fn insert(&mut self, e: Entry) {
        self.keys
            .insert(e.member.author.clone(), e.member.org.clone());
        self.entries.insert(e.member.org.clone(), e);
    }
}

/// The operations of one mesh, checked on entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Every operation held, by id.
    pub ops: BTreeMap<OpId, Op>,
}

impl Log {
    /// Adds an operation already checked with [`Op::check`]; false if it was held.
    pub fn insert(&mut self, id: OpId, op: Op) -> Result<bool, Error> {
        if self.ops.contains_key(&id) {
            return Ok(false);
        }
        if self.ops.len() >= MAX_OPS {
            return Err(Error::Full);
        }
        self.ops.insert(id, op);
        Ok(true)
    }

    /// Operations no other operation names (the deps of the next one: [`super::roster::Roster::heads`]).
    pub fn heads(&self) -> Vec<OpId> {
        let named: HashSet<&str> = self
            .ops
            .values()
            .flat_map(|o| o.body.deps.iter().map(String::as_str))
            .collect();
        self.ops
            .keys()
            .filter(|id| !named.contains(id.as_str()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
#[path = "govern_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "govern_rotation_tests.rs"]
mod rotation_tests;

#[cfg(test)]
use tests as tests_support;
