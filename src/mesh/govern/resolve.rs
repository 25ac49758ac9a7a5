//! The rule that resolves a mesh's governance operations to one roster (see the parent module's
//! docs): a fixed order that respects the DAG, checks against the state before each operation,
//! strong remove and demote, conflicting admissions. Pure: no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Action, Entry, Log, Op, OpId, Retired, Role, State, MAX_PASSES};
use crate::mesh::roster::Member;

impl Log {
    /// Resolves the operations to the roster's state by the rule in the module docs.
    pub fn resolve(&self, founder: &str) -> State {
        let order = self.order();
        let anc = Ancestors::new(self);
        // Strong remove and demote first; then admissions in conflict among those that still
        // had their authority are dropped, and the removals settle again around them.
        let none = BTreeMap::new();
        let (mut state, mut dropped) = self.settle(&order, founder, &anc, BTreeMap::new(), &none);
        let conflicts = std::mem::take(&mut state.conflicts);
        let equivocated = std::mem::take(&mut state.equivocated);
        if !conflicts.is_empty() {
            (state, dropped) = self.settle(&order, founder, &anc, conflicts, &equivocated);
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
        forced: &BTreeMap<String, OpId>,
    ) -> (State, BTreeMap<OpId, String>) {
        let mut dropped = base.clone();
        let mut seen: Vec<BTreeMap<OpId, String>> = Vec::new();
        for _ in 0..MAX_PASSES {
            let state = self.apply(order, founder, &dropped, anc, forced);
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
                return (self.apply(order, founder, &union, anc, forced), union);
            }
            seen.push(std::mem::replace(&mut dropped, next));
        }
        (self.apply(order, founder, &dropped, anc, forced), dropped)
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
        forced: &BTreeMap<String, OpId>,
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
        // Organizations whose key is in two hands are removed by the rule.
        for (org, by) in forced {
            if let Some(e) = st.entries.get_mut(org).filter(|e| e.active()) {
                e.removed_by = Some(by.clone());
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
        if signer.member.author != author {
            let org = signer.member.org.clone();
            let prior = signer
                .retired
                .iter()
                .find(|r| r.member.author == author)
                .map(|r| r.by.clone());
            if let (Action::Rotate { .. }, Some(prior)) = (&op.body.action, prior) {
                let concurrent =
                    !anc.of(id).contains(prior.as_str()) && !anc.of(&prior).contains(id.as_str());
                if concurrent {
                    let why = format!(
                        "{org}'s key signed two rotations that did not see each other: it is in \
                         two hands, and {org} is removed"
                    );
                    st.conflicts.insert(id.clone(), why.clone());
                    st.conflicts.insert(prior.clone(), why.clone());
                    st.equivocated.insert(org, prior.min(id.clone()));
                    return Err(why);
                }
            }
            return Err(format!("signed with a key {org} had retired"));
        }
        if let Action::Rotate {
            member,
            until,
            proof: _,
        } = &op.body.action
        {
            return rotate(st, id, author, member, *until);
        }
        if signer.role != Role::Admin {
            return Err(format!("{} is not an admin", signer.member.org));
        }
        match &op.body.action {
            Action::Found { .. } | Action::Rotate { .. } => Err("unreachable".into()),
            Action::Admit { member, role, .. } => {
                if st.entries.len() >= crate::mesh::roster::MAX_MEMBERS {
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
            let keys: HashSet<&str> = e.keys().collect();
            for r in &e.retired {
                // Rotation is strong too: a retired key signs nothing its rotation did not see.
                // (Its other rotations are left to the check for a key in two hands.)
                let seen = anc.of(&r.by);
                for (id, op) in &self.ops {
                    let rotation = matches!(op.body.action, Action::Rotate { .. });
                    if op.body.author == r.member.author
                        && !rotation
                        && !seen.contains(id.as_str())
                        && *id != r.by
                    {
                        out.insert(
                            id.clone(),
                            format!("signed with a key {} had retired", e.member.org),
                        );
                    }
                }
            }
            if let Some(d) = &e.demoted_by {
                // Demotion is strong too: what the demoted key signed that the demotion did not
                // see needed an admin, and it no longer was one (a rotation needs none).
                let seen = anc.of(d);
                for (id, op) in &self.ops {
                    let rotation = matches!(op.body.action, Action::Rotate { .. });
                    if keys.contains(op.body.author.as_str())
                        && !rotation
                        && !seen.contains(id.as_str())
                        && id != d
                    {
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
                let concurrent = keys.contains(op.body.author.as_str())
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
        remover.and_then(|k| st.keys.get(k)) == Some(org)
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

/// Every key each organization was admitted or rotated with, as far as `ops` show: a
/// rotation counts only when signed by a key its organization already had (so an
/// over-approximation for filters, never a key an outsider chose).
pub fn keys_by_org<'a>(ops: impl Iterator<Item = &'a Op> + Clone) -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for op in ops.clone() {
        if let Action::Found { member } | Action::Admit { member, .. } = &op.body.action {
            keys.entry(member.org.clone())
                .or_default()
                .push(member.author.clone());
        }
    }
    let rotations: Vec<&Op> = ops
        .filter(|o| matches!(o.body.action, Action::Rotate { .. }))
        .collect();
    let mut taken = vec![false; rotations.len()];
    let mut progress = true;
    while progress {
        progress = false;
        for (i, op) in rotations.iter().enumerate() {
            let Action::Rotate { member, .. } = &op.body.action else {
                continue;
            };
            let held = keys.entry(member.org.clone()).or_default();
            if !taken[i] && held.contains(&op.body.author) {
                held.push(member.author.clone());
                taken[i] = true;
                progress = true;
            }
        }
    }
    keys
}

/// Keys that any of `ops` makes an admin (every key of an organization made one), and the
/// founder's. Only these sign operations other than a member's own rotation, so an operation
/// by any other key is not even kept: a member that is no admin cannot fill the log.
pub fn admin_keys<'a>(founder: &str, ops: impl Iterator<Item = &'a Op> + Clone) -> HashSet<String> {
    // Every key an organization name was ever admitted with: an over-approximation is fine for a
    // filter, while the last one alone would let a second admission shadow the real key.
    let keys = keys_by_org(ops.clone());
    let mut out: HashSet<String> = HashSet::from([founder.to_owned()]);
    for op in ops {
        let admin_org = match &op.body.action {
            Action::Found { member }
            | Action::Admit {
                member,
                role: Role::Admin,
                ..
            } => Some(&member.org),
            Action::Role {
                org,
                role: Role::Admin,
            } => Some(org),
            _ => None,
        };
        if let Some(org) = admin_org {
            out.extend(keys.get(org).into_iter().flatten().cloned());
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
        retired: Vec::new(),
    }
}

/// Replaces the keys of the organization whose current key `author` is.
fn rotate(
    st: &mut State,
    id: &OpId,
    author: &str,
    member: &Member,
    until: u64,
) -> Result<(), String> {
    if st.keys.contains_key(&member.author) {
        return Err("its new key was admitted or rotated before".into());
    }
    let org = st.keys.get(author).cloned().unwrap_or_default();
    if member.org != org {
        return Err(format!("{org} may rotate only its own key"));
    }
    let e = current(st, &org)?;
    let old = std::mem::replace(&mut e.member, member.clone());
    e.retired.push(Retired {
        member: old,
        until,
        by: id.clone(),
    });
    st.keys.insert(member.author.clone(), org);
    Ok(())
}

fn current<'a>(st: &'a mut State, org: &str) -> Result<&'a mut Entry, String> {
    match st.entries.get_mut(org) {
        Some(e) if e.active() => Ok(e),
        Some(_) => Err(format!("{org} was removed before")),
        None => Err(format!("{org} is not a member")),
    }
}
