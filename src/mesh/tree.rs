//! The tree one envelope travels along: who passes it to whom.
//!
//! The envelope's writer is the root; every other member entitled to its dataset follows in an
//! order drawn from the envelope's digest, so each envelope takes a different tree and the work
//! of passing envelopes on is spread over the members. With fan-out `k` ([`FANOUT`]), the member at position
//! `i` passes the envelope to the members at positions `k·i + 1 ..= k·i + k`: the writer sends `k`
//! copies whatever the mesh size, each member receives one, and the depth grows as `log_k` of the
//! mesh size. A fan-out of 0 makes the tree flat: the writer sends to every member and no one
//! passes anything on (the push of earlier versions).
//!
//! Every member computes the same tree from the envelope, the roster and the dataset's
//! description, so nothing about it travels but whether it is a tree at all. Two members whose rosters differ for a
//! moment may compute different trees: some members then receive the envelope twice and some
//! not at all, until catch-up brings it.

use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// The fan-out of every tree: a protocol constant, not a setting, so that no member can make
/// another compute a different tree (in which it would be a leaf) for an envelope. Three keeps a
/// writer's bytes under four times the envelope with the framing.
pub const FANOUT: u8 = 3;

/// The members of one envelope's tree, in tree order (the writer first).
#[derive(Debug, Clone)]
pub struct Tree {
    order: Vec<PeerId>,
    k: usize,
}

impl Tree {
    /// The tree of an envelope written by `writer` with digest `seed`, through `members` (the
    /// writer among them or not; each once), with fan-out `k` ([`FANOUT`]; 0: flat).
    pub fn new(
        writer: PeerId,
        members: impl IntoIterator<Item = PeerId>,
        seed: &[u8],
        k: u8,
    ) -> Self {
        let mut others: Vec<([u8; 32], PeerId)> = members
            .into_iter()
            .filter(|p| *p != writer)
            .map(|p| (rank(seed, &p), p))
            .collect();
        others.sort_unstable();
        others.dedup_by(|a, b| a.1 == b.1);
        let mut order = Vec::with_capacity(others.len() + 1);
        order.push(writer);
        order.extend(others.into_iter().map(|(_, p)| p));
        let k = match k {
            0 => order.len().max(1),
            k => usize::from(k),
        };
        Self { order, k }
    }

    /// The members `peer` passes the envelope to (none when `peer` is not in the tree).
    pub fn children(&self, peer: &PeerId) -> &[PeerId] {
        let Some(i) = self.order.iter().position(|p| p == peer) else {
            return &[];
        };
        let first = (self.k * i + 1).min(self.order.len());
        let last = (self.k * i + self.k + 1).min(self.order.len());
        &self.order[first..last]
    }

    /// How many members the tree holds, the writer among them.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// A member's place in an envelope's order: SHA-256 of the envelope's digest and its peer id.
fn rank(seed: &[u8], peer: &PeerId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(peer.to_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// Walks the tree from the root: how many times each member receives, and the depth.
    fn walk(tree: &Tree, root: PeerId) -> (HashMap<PeerId, usize>, usize) {
        let (mut got, mut level, mut depth) = (HashMap::new(), vec![root], 0);
        while !level.is_empty() {
            let next: Vec<PeerId> = level
                .iter()
                .flat_map(|p| tree.children(p).to_vec())
                .collect();
            for p in &next {
                *got.entry(*p).or_insert(0) += 1;
            }
            depth += usize::from(!next.is_empty());
            level = next;
        }
        (got, depth)
    }

    #[test]
    fn every_member_receives_once_and_the_writer_sends_k() {
        for (n, k, depth) in [(5, 3, 2), (20, 3, 3), (50, 3, 4), (100, 3, 4), (50, 1, 49)] {
            let all = peers(n);
            let tree = Tree::new(all[0], all.clone(), b"envelope", k);
            assert_eq!(tree.len(), n);
            let (got, d) = walk(&tree, all[0]);
            assert_eq!(
                got.len(),
                n - 1,
                "{n} members, fan-out {k}: not all reached"
            );
            assert!(got.values().all(|c| *c == 1), "someone received twice");
            assert!(!got.contains_key(&all[0]), "the writer received its own");
            assert_eq!(tree.children(&all[0]).len(), usize::from(k).min(n - 1));
            assert_eq!(d, depth, "{n} members, fan-out {k}");
        }
    }

    #[test]
    fn fan_out_zero_is_flat() {
        let all = peers(30);
        let tree = Tree::new(all[3], all.clone(), b"x", 0);
        assert_eq!(tree.children(&all[3]).len(), 29);
        assert!(all
            .iter()
            .all(|p| p == &all[3] || tree.children(p).is_empty()));
    }

    #[test]
    fn trees_differ_by_envelope_and_agree_across_members() {
        let all = peers(40);
        let mut reversed = all.clone();
        reversed.reverse();
        let a = Tree::new(all[0], all.clone(), b"one", 3);
        let same = Tree::new(all[0], reversed, b"one", 3);
        let b = Tree::new(all[0], all.clone(), b"two", 3);
        assert_eq!(a.order, same.order, "the order depends on the listing");
        assert_ne!(a.order, b.order, "two envelopes take the same tree");
        // Over many envelopes every member passes some on: the work is spread.
        let mut forwards: HashMap<PeerId, usize> = HashMap::new();
        for i in 0u32..400 {
            let t = Tree::new(all[0], all.clone(), &i.to_be_bytes(), 3);
            for p in all.iter().skip(1) {
                *forwards.entry(*p).or_insert(0) += t.children(p).len();
            }
        }
        assert_eq!(forwards.len(), 39);
        assert!(forwards.values().all(|f| *f > 50), "{forwards:?}");
    }

    #[test]
    fn a_writer_outside_the_members_is_still_the_root_and_strangers_pass_nothing() {
        let all = peers(10);
        let writer = PeerId::random();
        let tree = Tree::new(writer, all.clone(), b"e", 3);
        assert_eq!(tree.len(), 11);
        assert_eq!(tree.children(&writer).len(), 3);
        assert!(tree.children(&PeerId::random()).is_empty());
    }
}
