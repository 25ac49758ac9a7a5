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
//!
//! # Resolution (the rule every node applies)
//!
//! 1. An operation whose deps are not all held waits; it takes part once they arrive.
//! 2. Operations are applied in one fixed order that respects the DAG: by height (1 + the
//!    greatest height of its deps), then by hash. Each is checked against the state built by the
//!    operations before it: its author must be a member, an admin for `admit`, `role` and
//!    `remove`; `admit` needs an organization name and a key not seen before (removed ones
//!    included); `role` and `remove` need a current member.
//! 3. **Strong remove and demote.** Once an organization is removed by operation R, every
//!    operation its key signed that R did not see (concurrent with R, or after it) is dropped,
//!    except its removal of the admin that signed R: two admins that remove each other
//!    concurrently are both removed. Likewise every operation a key signed that its last demotion
//!    did not see. Dropping an operation can undo what it did, so resolution repeats until the
//!    set of dropped operations is stable; should the passes cycle, the union of the cycle's
//!    dropped sets is dropped.
//! 4. **Conflicting admissions.** Then, two admissions of one organization name or one key, both
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

/// Domain-separation tag of governance operations.
pub const OP_DOMAIN: &[u8] = b"fogmesh/governance/v1\0";
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
}

impl Action {
    /// Short name for logs and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Found { .. } => "found",
            Self::Admit { .. } => "admit",
            Self::Role { .. } => "role",
            Self::Remove { .. } => "remove",
        }
    }
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
            Action::Found { member } | Action::Admit { member, .. } => {
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
}

impl Entry {
    /// Whether it is a current member.
    pub fn active(&self) -> bool {
        self.removed_by.is_none()
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

    /// Resolves the operations to the roster's state by the rule in the module docs.
    pub fn resolve(&self, founder: &str) -> State {
        let order = self.order();
        let anc = Ancestors::new(self);
        // Strong remove and demote first; then admissions in conflict among those that still
        // had their authority are dropped, and the removals settle again around them.
        let (mut state, mut dropped) = self.settle(&order, founder, &anc, BTreeMap::new());
        let conflicts = std::mem::take(&mut state.conflicts);
        if !conflicts.is_empty() {
            (state, dropped) = self.settle(&order, founder, &anc, conflicts);
        }
        for (id, why) in &dropped {
            state.dropped.insert(id.clone(), why.clone());
        }
        for id in self.ops.keys().filter(|id| !order.contains(id)) {
            state
                .dropped
                .insert(id.clone(), "waits for an operation not held".into());
        }
        state
    }

    /// Applies the operations, dropping `base` and what strong remove and demote drop, until
    /// the dropped set is stable; should the passes cycle, the union of the cycle's sets.
    fn settle(
        &self,
        order: &[OpId],
        founder: &str,
        anc: &Ancestors<'_>,
        base: BTreeMap<OpId, String>,
    ) -> (State, BTreeMap<OpId, String>) {
        let mut dropped = base.clone();
        let mut seen: Vec<BTreeMap<OpId, String>> = Vec::new();
        for _ in 0..MAX_PASSES {
            let state = self.apply(order, founder, &dropped, anc);
            let mut next = base.clone();
            next.extend(self.strong_remove(&state, anc));
            if next.keys().eq(dropped.keys()) {
                return (state, dropped);
            }
            if let Some(at) = seen.iter().position(|s| s.keys().eq(next.keys())) {
                let mut union = BTreeMap::new();
                for s in &seen[at..] {
                    union.extend(s.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                union.extend(next);
                return (self.apply(order, founder, &union, anc), union);
            }
            seen.push(std::mem::replace(&mut dropped, next));
        }
        (self.apply(order, founder, &dropped, anc), dropped)
    }

    /// Every operation whose deps are all held (transitively), in the fixed order: height, then
    /// id. Heights are memoized, so this is linear in operations and deps.
    fn order(&self) -> Vec<OpId> {
        // None: waits for an operation not held (or lies on a cycle, which signatures over
        // hashes make impossible in practice).
        let mut height: HashMap<&str, Option<usize>> = HashMap::with_capacity(self.ops.len());
        for id in self.ops.keys() {
            self.height(id, &mut height);
        }
        let mut ids: Vec<(usize, &str)> = height
            .into_iter()
            .filter_map(|(id, h)| Some((h?, id)))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id.to_owned()).collect()
    }

    /// The height of `root`, computed with an explicit stack (no recursion on peer input).
    fn height<'a>(&'a self, root: &'a str, memo: &mut HashMap<&'a str, Option<usize>>) {
        let mut stack: Vec<(&str, bool)> = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(id) {
                continue;
            }
            let Some((key, op)) = self.ops.get_key_value(id) else {
                memo.insert(id, None);
                continue;
            };
            let deps = &op.body.deps;
            if !expanded {
                stack.push((key.as_str(), true));
                stack.extend(deps.iter().map(|d| (d.as_str(), false)));
                continue;
            }
            let h = deps
                .iter()
                .map(|d| memo.get(d.as_str()).copied().flatten())
                .try_fold(0, |m, h| h.map(|h| m.max(h)));
            memo.insert(key.as_str(), h.map(|h| h + 1));
        }
    }

    fn apply(
        &self,
        order: &[OpId],
        founder: &str,
        dropped: &BTreeMap<OpId, String>,
        anc: &Ancestors<'_>,
    ) -> State {
        let mut st = State::default();
        for id in order.iter().filter(|id| !dropped.contains_key(*id)) {
            let op = &self.ops[id];
            match self.effect(&mut st, id, op, founder, anc) {
                Ok(()) => {
                    st.applied.insert(id.clone());
                }
                Err(why) => {
                    st.dropped.insert(id.clone(), why);
                }
            }
        }
        st
    }

    /// Checks `op` against the state before it and applies it.
    fn effect(
        &self,
        st: &mut State,
        id: &OpId,
        op: &Op,
        founder: &str,
        anc: &Ancestors<'_>,
    ) -> Result<(), String> {
        let author = op.body.author.as_str();
        if let Action::Found { member } = &op.body.action {
            if author != founder || member.author != founder || !op.body.deps.is_empty() {
                return Err("only the founder founds, once, with no deps".into());
            }
            if !st.entries.is_empty() {
                return Err("the mesh is already founded".into());
            }
            st.insert(entry(member, Role::Admin, id));
            return Ok(());
        }
        let signer = st.by_key(author).ok_or("its author is not a member")?;
        match &signer.removed_by {
            None => {}
            // The removal of the admin that removed its author, concurrent with that removal,
            // still counts: a mutual removal removes both.
            Some(r) if self.removes_remover(op, r, st) && !anc.of(id).contains(r.as_str()) => {}
            Some(_) => return Err("its author had been removed".into()),
        }
        if signer.role != Role::Admin {
            return Err(format!("{} is not an admin", signer.member.org));
        }
        match &op.body.action {
            Action::Found { .. } => Err("unreachable".into()),
            Action::Admit { member, role, .. } => {
                if st.entries.len() >= super::roster::MAX_MEMBERS {
                    return Err("the roster is full".into());
                }
                let held = st
                    .entries
                    .get(&member.org)
                    .or_else(|| st.by_key(&member.author))
                    .map(|e| e.admitted_by.clone());
                if let Some(earlier) = held {
                    return Err(self.admitted_before(st, id, &earlier, anc));
                }
                st.insert(entry(member, *role, id));
                Ok(())
            }
            Action::Role { org, role } => {
                let e = current(st, org)?;
                e.role = *role;
                if *role == Role::Member {
                    e.demoted_by = Some(id.clone());
                }
                Ok(())
            }
            Action::Remove { org } => {
                let e = current(st, org)?;
                e.removed_by = Some(id.clone());
                Ok(())
            }
        }
    }

    /// The operations strong remove drops: every operation signed by a removed key that its
    /// removal did not see, except the removal of the admin that removed it.
    fn strong_remove(&self, st: &State, anc: &Ancestors<'_>) -> BTreeMap<OpId, String> {
        let mut out = BTreeMap::new();
        for e in st.entries.values() {
            if let Some(d) = &e.demoted_by {
                // Demotion is strong too: what the demoted key signed that the demotion did not
                // see needed an admin, and it no longer was one.
                let seen = anc.of(d);
                for (id, op) in &self.ops {
                    if op.body.author == e.member.author && !seen.contains(id.as_str()) && id != d {
                        out.insert(
                            id.clone(),
                            format!("signed by {} concurrently with its demotion", e.member.org),
                        );
                    }
                }
            }
            let Some(r) = &e.removed_by else { continue };
            let seen = anc.of(r);
            for (id, op) in &self.ops {
                let concurrent = op.body.author == e.member.author
                    && !self.removes_remover(op, r, st)
                    && !seen.contains(id.as_str())
                    && id != r;
                if concurrent {
                    out.insert(
                        id.clone(),
                        format!("signed by {} concurrently with its removal", e.member.org),
                    );
                }
            }
        }
        out
    }

    /// Whether `op` removes the organization whose admin signed `removal` (the removal of
    /// `op`'s author).
    fn removes_remover(&self, op: &Op, removal: &str, st: &State) -> bool {
        let Action::Remove { org } = &op.body.action else {
            return false;
        };
        let remover = self.ops.get(removal).map(|r| r.body.author.as_str());
        st.entries
            .get(org)
            .is_some_and(|e| Some(e.member.author.as_str()) == remover)
    }

    /// Why admission `id` of a name or key already admitted by `earlier` does not count. When
    /// it did not see `earlier` (an admin signed it concurrently, or backdated it), both are in
    /// conflict and are dropped from the next pass on, so no admin can take over a member's name
    /// and the keys wrapped for it. The founding is never in conflict: such an admission is
    /// simply invalid.
    fn admitted_before(
        &self,
        st: &mut State,
        id: &OpId,
        earlier: &OpId,
        anc: &Ancestors<'_>,
    ) -> String {
        let founding = self
            .ops
            .get(earlier)
            .is_some_and(|o| matches!(o.body.action, Action::Found { .. }));
        if founding || anc.of(id).contains(earlier.as_str()) {
            return "its name or key was admitted before".into();
        }
        let why = "conflicting admissions of one name or key (neither saw the other)".to_owned();
        st.conflicts.insert(id.clone(), why.clone());
        st.conflicts.insert(earlier.clone(), why.clone());
        why
    }
}

/// Keys that any of `ops` makes an admin, and the founder's. Only these sign operations, so an
/// operation by any other key is not even kept: a member that is no admin cannot fill the log.
pub fn admin_keys<'a>(founder: &str, ops: impl Iterator<Item = &'a Op> + Clone) -> HashSet<String> {
    // Every key an organization name was ever admitted with: an over-approximation is fine for a
    // filter, while the last one alone would let a second admission shadow the real key.
    let mut keys: HashMap<&str, Vec<&str>> = HashMap::new();
    for op in ops.clone() {
        if let Action::Found { member } | Action::Admit { member, .. } = &op.body.action {
            keys.entry(member.org.as_str())
                .or_default()
                .push(member.author.as_str());
        }
    }
    let mut out: HashSet<String> = HashSet::from([founder.to_owned()]);
    for op in ops {
        match &op.body.action {
            Action::Admit {
                member,
                role: Role::Admin,
                ..
            } => {
                out.insert(member.author.clone());
            }
            Action::Role {
                org,
                role: Role::Admin,
            } => out.extend(
                keys.get(org.as_str())
                    .into_iter()
                    .flatten()
                    .map(|k| (*k).to_owned()),
            ),
            _ => {}
        }
    }
    out
}

/// Ancestor sets of operations, computed once each per resolution.
struct Ancestors<'a> {
    log: &'a Log,
    memo: std::cell::RefCell<HashMap<&'a str, std::rc::Rc<HashSet<&'a str>>>>,
}

impl<'a> Ancestors<'a> {
    fn new(log: &'a Log) -> Self {
        Self {
            log,
            memo: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// Every operation `id` saw, directly or not.
    fn of(&self, id: &str) -> std::rc::Rc<HashSet<&'a str>> {
        if let Some(set) = self.memo.borrow().get(id) {
            return set.clone();
        }
        let Some((key, op)) = self.log.ops.get_key_value(id) else {
            return std::rc::Rc::default();
        };
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = op.body.deps.iter().map(String::as_str).collect();
        while let Some(d) = stack.pop() {
            if let Some((k, o)) = self.log.ops.get_key_value(d) {
                if seen.insert(k.as_str()) {
                    stack.extend(o.body.deps.iter().map(String::as_str));
                }
            }
        }
        let set = std::rc::Rc::new(seen);
        self.memo.borrow_mut().insert(key.as_str(), set.clone());
        set
    }
}

fn entry(member: &Member, role: Role, id: &OpId) -> Entry {
    Entry {
        member: member.clone(),
        role,
        admitted_by: id.clone(),
        removed_by: None,
        demoted_by: None,
    }
}

fn current<'a>(st: &'a mut State, org: &str) -> Result<&'a mut Entry, String> {
    match st.entries.get_mut(org) {
        Some(e) if e.active() => Ok(e),
        Some(_) => Err(format!("{org} was removed before")),
        None => Err(format!("{org} is not a member")),
    }
}

#[cfg(test)]
#[path = "govern_tests.rs"]
mod tests;
