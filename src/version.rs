//! Version vectors: per dataset, author -> highest contiguous envelope sequence held.
//!
//! They say what a node has without listing history, so catch-up costs what is missing, and a
//! snapshot is labelled with the vector it covers so that restart replays only what came after.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::identity::AuthorId;

/// Largest number of authors a decoded vector may name.
pub const MAX_AUTHORS: usize = 4096;

/// Author -> highest contiguous sequence (sequences start at 1; absent means 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector(BTreeMap<AuthorId, u64>);

/// A vector that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed version vector: {0}")]
pub struct DecodeError(&'static str);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest contiguous sequence held from `author` (0 if none).
    pub fn get(&self, author: &AuthorId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Records that `seq` from `author` is held. Returns false, changing nothing, unless `seq` is the
    /// next one: a gap must be filled before the vector moves past it.
    pub fn advance(&mut self, author: AuthorId, seq: u64) -> bool {
        let cur = self.get(&author);
        if seq == cur + 1 {
            self.0.insert(author, seq);
            true
        } else {
            false
        }
    }

    /// Sets `author`'s entry outright (used when restoring from the store).
    pub fn set(&mut self, author: AuthorId, seq: u64) {
        if seq == 0 {
            self.0.remove(&author);
        } else {
            self.0.insert(author, seq);
        }
    }

    /// The entries, ordered by author.
    pub fn iter(&self) -> impl Iterator<Item = (&AuthorId, &u64)> {
        self.0.iter()
    }

    /// Number of authors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of all sequences: how many envelopes the vector covers.
    pub fn total(&self) -> u64 {
        // A peer's vector may name sequences near u64::MAX: the total saturates.
        self.0.values().fold(0u64, |t, s| t.saturating_add(*s))
    }

    /// True when `self` holds everything `other` holds.
    pub fn dominates(&self, other: &Self) -> bool {
        other.0.iter().all(|(a, s)| self.get(a) >= *s)
    }

    /// Per author, the sequence range `(after, upto]` that `other` holds and `self` lacks.
    pub fn missing_from(&self, other: &Self) -> Vec<(AuthorId, u64, u64)> {
        other
            .0
            .iter()
            .filter(|(a, s)| self.get(a) < **s)
            .map(|(a, s)| (*a, self.get(a), *s))
            .collect()
    }

    /// The entry-wise maximum.
    pub fn merge(&mut self, other: &Self) {
        for (a, s) in &other.0 {
            let e = self.0.entry(*a).or_insert(0);
            *e = (*e).max(*s);
        }
    }

    /// Canonical bytes: count (u32 BE), then per author its 32 bytes and sequence (u64 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.0.len() * 40);
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (a, s) in &self.0 {
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out
    }

    /// Decodes [`Self::encode`]'s output, strictly: exact length, sorted unique authors, no zeros.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (count, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or(DecodeError("too short"))?;
        let count = u32::from_be_bytes(*count) as usize;
        if count > MAX_AUTHORS {
            return Err(DecodeError("too many authors"));
        }
        if rest.len() != count * 40 {
            return Err(DecodeError("length does not match count"));
        }
        let mut map = BTreeMap::new();
        let mut prev: Option<AuthorId> = None;
        for chunk in rest.chunks_exact(40) {
            let (a, s) = chunk.split_at(32);
            let author = AuthorId::from_slice(a).ok_or(DecodeError("bad author"))?;
            let seq = u64::from_be_bytes(s.try_into().map_err(|_| DecodeError("bad seq"))?);
            if seq == 0 || prev.is_some_and(|p| p >= author) {
                return Err(DecodeError("not canonical"));
            }
            prev = Some(author);
            map.insert(author, seq);
        }
        Ok(Self(map))
    }

    /// A short digest of the canonical bytes, for cheap "are we equal?" exchanges.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// A vector with, per author, the digest of the envelope it ends at (its chain's tip, see
/// [`crate::envelope::Envelope::digest`]): two nodes whose frontiers are equal hold the same
/// histories, not only the same counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// How far each author's history goes.
    pub vv: VersionVector,
    /// Per author of `vv` (when known), the digest of its envelope at that sequence.
    pub tips: BTreeMap<AuthorId, [u8; 32]>,
}

impl Frontier {
    /// Canonical bytes: the vector's, then the tip count (u32 BE) and per author its 32 bytes
    /// and its tip's 32.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.vv.encode();
        out.extend_from_slice(&(self.tips.len() as u32).to_be_bytes());
        for (a, t) in &self.tips {
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(t);
        }
        out
    }

    /// Decodes [`Self::encode`]'s output strictly: tips sorted, unique, of authors in the vector.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let count = bytes
            .first_chunk::<4>()
            .map(|c| u32::from_be_bytes(*c) as usize)
            .ok_or(DecodeError("too short"))?;
        if count > MAX_AUTHORS {
            return Err(DecodeError("too many authors"));
        }
        let (vv, rest) = bytes
            .split_at_checked(4 + count * 40)
            .ok_or(DecodeError("too short"))?;
        let vv = VersionVector::decode(vv)?;
        let (n, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(DecodeError("too short"))?;
        let n = u32::from_be_bytes(*n) as usize;
        if n > vv.len() || rest.len() != n * 64 {
            return Err(DecodeError("tips do not match the vector"));
        }
        let mut tips = BTreeMap::new();
        for chunk in rest.chunks_exact(64) {
            let (a, t) = chunk.split_at(32);
            let author = AuthorId::from_slice(a).ok_or(DecodeError("bad author"))?;
            let fresh = tips.last_key_value().is_none_or(|(p, _)| *p < author);
            if vv.get(&author) == 0 || !fresh {
                return Err(DecodeError("tips not canonical"));
            }
            tips.insert(author, t.try_into().map_err(|_| DecodeError("bad tip"))?);
        }
        Ok(Self { vv, tips })
    }

    /// A short digest of the canonical bytes.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Per author, the shorter of the two histories, with its tip where either side knows it.
    pub fn meet(&self, other: &Self) -> Self {
        let mut out = Self::default();
        for (a, mine) in self.vv.iter() {
            let seq = (*mine).min(other.vv.get(a));
            if seq == 0 {
                continue;
            }
            out.vv.set(*a, seq);
            let tip = [self, other]
                .into_iter()
                .find(|f| f.vv.get(a) == seq)
                .and_then(|f| f.tips.get(a));
            if let Some(t) = tip {
                out.tips.insert(*a, *t);
            }
        }
        out
    }

    /// Moves each author on to `other`'s history where that goes further, with its tip.
    pub fn join(&mut self, other: &Self) {
        for (a, theirs) in other.vv.iter() {
            if *theirs <= self.vv.get(a) {
                continue;
            }
            self.vv.set(*a, *theirs);
            match other.tips.get(a) {
                Some(t) => self.tips.insert(*a, *t),
                None => self.tips.remove(a),
            };
        }
    }

    /// Authors held to the same sequence on both sides whose tips differ: one of the two
    /// holds another history (see [`crate::equivocation`]).
    pub fn diverging(&self, other: &Self) -> Vec<(AuthorId, u64)> {
        other
            .tips
            .iter()
            .filter(|(a, t)| {
                let seq = other.vv.get(a);
                self.vv.get(a) == seq && self.tips.get(a).is_some_and(|mine| mine != *t)
            })
            .map(|(a, _)| (*a, other.vv.get(a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(n: u8) -> AuthorId {
        AuthorId::from_bytes([n; 32])
    }

    fn frontier(ends: &[(u8, u64, u8)]) -> Frontier {
        let mut f = Frontier::default();
        for (n, seq, tip) in ends {
            f.vv.set(a(*n), *seq);
            f.tips.insert(a(*n), [*tip; 32]);
        }
        f
    }

    #[test]
    fn frontiers_meet_at_the_shorter_history_and_join_at_the_longer() {
        let durable = frontier(&[(1, 3, 13), (2, 5, 25)]);
        let held = frontier(&[(1, 4, 14), (2, 2, 22), (3, 1, 31)]);
        assert_eq!(held.meet(&durable), frontier(&[(1, 3, 13), (2, 2, 22)]));
        assert_eq!(durable.meet(&held), held.meet(&durable));
        let mut d = durable.clone();
        d.join(&held);
        assert_eq!(d, frontier(&[(1, 4, 14), (2, 5, 25), (3, 1, 31)]));
    }

    #[test]
    fn advance_only_moves_by_one() {
        let mut v = VersionVector::new();
        assert!(v.advance(a(1), 1));
        assert!(!v.advance(a(1), 3), "a gap must not be skipped");
        assert!(!v.advance(a(1), 1), "a duplicate changes nothing");
        assert!(v.advance(a(1), 2));
        assert_eq!(v.get(&a(1)), 2);
        assert_eq!(v.get(&a(9)), 0);
    }

    #[test]
    fn missing_lists_exactly_the_lacking_ranges() {
        let mut mine = VersionVector::new();
        mine.set(a(1), 5);
        mine.set(a(2), 9);
        let mut theirs = VersionVector::new();
        theirs.set(a(1), 7);
        theirs.set(a(2), 3);
        theirs.set(a(3), 2);
        assert_eq!(mine.missing_from(&theirs), vec![(a(1), 5, 7), (a(3), 0, 2)]);
        assert!(!mine.dominates(&theirs));
        mine.merge(&theirs);
        assert!(mine.dominates(&theirs));
        assert_eq!(mine.total(), 7 + 9 + 2);
    }

    #[test]
    fn decode_refuses_non_canonical_input() {
        let mut v = VersionVector::new();
        v.set(a(2), 1);
        v.set(a(1), 1);
        let bytes = v.encode();
        assert!(VersionVector::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut swapped = bytes[..4].to_vec();
        swapped.extend_from_slice(&bytes[44..84]);
        swapped.extend_from_slice(&bytes[4..44]);
        assert!(VersionVector::decode(&swapped).is_err(), "unsorted authors");
        assert!(VersionVector::decode(&[0xff; 4]).is_err());
    }

    #[test]
    fn frontiers_round_trip_and_name_diverging_authors() {
        let mut mine = Frontier::default();
        mine.vv.set(a(1), 4);
        mine.vv.set(a(2), 2);
        mine.tips.insert(a(1), [1; 32]);
        mine.tips.insert(a(2), [2; 32]);
        let back = Frontier::decode(&mine.encode()).expect("decodes");
        assert_eq!(back, mine);
        let mut theirs = mine.clone();
        theirs.tips.insert(a(1), [9; 32]);
        theirs.vv.set(a(2), 3);
        theirs.tips.insert(a(2), [3; 32]);
        assert_eq!(mine.diverging(&theirs), vec![(a(1), 4)]);
        assert_ne!(mine.digest(), theirs.digest());
        let bytes = mine.encode();
        assert!(Frontier::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut stray = mine.clone();
        stray.tips.insert(a(7), [7; 32]);
        assert!(
            Frontier::decode(&stray.encode()).is_err(),
            "a tip outside the vector"
        );
    }

    proptest! {
        #[test]
        fn codec_round_trips(entries in proptest::collection::btree_map(any::<u8>(), 1u64.., 0..20)) {
            let mut v = VersionVector::new();
            for (k, s) in entries { v.set(a(k), s); }
            let back = VersionVector::decode(&v.encode()).expect("decodes");
            prop_assert_eq!(back.digest(), v.digest());
            prop_assert_eq!(back, v);
        }

        #[test]
        fn merge_is_commutative_and_dominates_both(
            x in proptest::collection::btree_map(0u8..8, 1u64..50, 0..8),
            y in proptest::collection::btree_map(0u8..8, 1u64..50, 0..8),
        ) {
            let (mut vx, mut vy) = (VersionVector::new(), VersionVector::new());
            for (k, s) in x { vx.set(a(k), s); }
            for (k, s) in y { vy.set(a(k), s); }
            let mut xy = vx.clone(); xy.merge(&vy);
            let mut yx = vy.clone(); yx.merge(&vx);
            prop_assert_eq!(&xy, &yx);
            prop_assert!(xy.dominates(&vx) && xy.dominates(&vy));
            prop_assert!(xy.missing_from(&vx).is_empty());
        }
    }
}
