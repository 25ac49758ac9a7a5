//! Evidence that an author signed two histories of one dataset (equivocation), and the rule
//! every node applies to it. Pure: building, checking and coding evidence.
//!
//! Two signed envelope messages (see [`Envelope::signed_message`]) by one author, of one dataset,
//! are evidence when either
//!
//! - they carry the same sequence number and different digests (two different envelopes `s`), or
//! - the second is number `s + 1` and names as its predecessor (`prev`) a digest other than the
//!   first's (the author signed another envelope `s`, which the second follows).
//!
//! Either way the author forked its history at `s`, the evidence's *fork*. Anyone can check it
//! from the two messages and signatures alone (no payload, no key to open it), so it travels
//! between nodes as it is.
//!
//! **The rule**: of all the evidence a node holds against one author in one dataset, the fork at
//! the lowest sequence counts; the author's envelopes in that dataset from the fork on (both
//! versions of `s`, and everything after) are set aside on every node and refused when they come
//! again; those before it stand. The rule depends only on that lowest sequence, so every node
//! that holds the same evidence holds the same envelopes.
//!
//! ```
//! use fogmesh::{envelope::{Envelope, GENESIS}, equivocation::Evidence, identity::Identity,
//!               naming::DatasetId};
//! let id = Identity::from_seed([3; 32]);
//! let ds = DatasetId::parse("hospital/flu").unwrap();
//! let a = Envelope::seal(&id, ds.clone(), 1, 0, 10, GENESIS, b"one story".to_vec());
//! let b = Envelope::seal(&id, ds.clone(), 1, 0, 10, GENESIS, b"another".to_vec());
//! let ev = Evidence::same_seq(&a, &b).unwrap();
//! let fork = Evidence::decode(&ev.encode()).unwrap().check().unwrap();
//! assert_eq!((fork.author, fork.seq), (id.author(), 1));
//! ```

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::envelope::{self, Envelope};
use crate::identity::AuthorId;
use crate::naming::DatasetId;

/// Largest signed message one piece of evidence may carry, in bytes. A version-2 message is a
/// few hundred bytes; a version-1 message holds its payload, so a fork between two version-1
/// envelopes larger than this is not evidenced.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Why evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// It does not decode, or a part is too large.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// A signature does not verify.
    #[error("evidence signature does not verify")]
    BadSignature,
    /// The two messages are consistent: no fork.
    #[error("not evidence of equivocation: {0}")]
    NotAFork(&'static str),
}

/// One signed envelope message and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The signed message.
    pub message: ByteBuf,
    /// The ed25519 signature over it.
    pub signature: ByteBuf,
}

impl Signed {
    fn of(env: &Envelope) -> Self {
        Self {
            message: ByteBuf::from(env.signed_message()),
            signature: ByteBuf::from(env.signature.to_vec()),
        }
    }

    fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(&self.message).into()
    }

    fn slot(&self) -> Result<envelope::Slot, Error> {
        if self.message.len() > MAX_MESSAGE {
            return Err(Error::Malformed(format!(
                "a signed message of {} bytes (at most {MAX_MESSAGE})",
                self.message.len()
            )));
        }
        Envelope::slot_of(&self.message).map_err(|e| Error::Malformed(e.to_string()))
    }

    fn verify(&self, author: &AuthorId) -> Result<(), Error> {
        let sig: [u8; 64] = self
            .signature
            .as_ref()
            .try_into()
            .map_err(|_| Error::Malformed("a signature is not 64 bytes".into()))?;
        if author.verify(&self.message, &sig) {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }
}

/// Two signed messages that prove a fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The envelope at the fork (or one of the two there).
    pub first: Signed,
    /// The other one at the fork, or a successor naming another predecessor.
    pub second: Signed,
}

/// What evidence proves: `author` forked its history of `dataset` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The dataset.
    pub dataset: DatasetId,
    /// The equivocating author.
    pub author: AuthorId,
    /// The lowest sequence the evidence shows signed twice.
    pub seq: u64,
}

impl Evidence {
    /// Evidence from two envelopes with one slot and different content (`None` otherwise).
    pub fn same_seq(a: &Envelope, b: &Envelope) -> Option<Self> {
        let same_slot = a.dataset == b.dataset && a.author == b.author && a.seq == b.seq;
        (same_slot && a.digest() != b.digest()).then(|| Self {
            first: Signed::of(a),
            second: Signed::of(b),
        })
    }

    /// Evidence from an envelope and a successor that names another predecessor (`None`
    /// otherwise).
    pub fn successor(pred: &Envelope, next: &Envelope) -> Option<Self> {
        let follows =
            pred.dataset == next.dataset && pred.author == next.author && next.seq == pred.seq + 1;
        let other = next.prev.is_some_and(|p| p != pred.digest());
        (follows && other).then(|| Self {
            first: Signed::of(pred),
            second: Signed::of(next),
        })
    }

    /// Checks the evidence: both messages well formed, by one author, of one dataset, each
    /// signed by that author, and in conflict. Returns the fork it proves.
    pub fn check(&self) -> Result<Fork, Error> {
        let (a, b) = (self.first.slot()?, self.second.slot()?);
        if a.dataset != b.dataset || a.author != b.author {
            return Err(Error::NotAFork("two authors or two datasets"));
        }
        let fork = if a.seq == b.seq {
            if self.first.digest() == self.second.digest() {
                return Err(Error::NotAFork("the same envelope twice"));
            }
            a.seq
        } else if a.seq.checked_add(1) == Some(b.seq) {
            match b.prev {
                Some(p) if p != self.first.digest() => a.seq,
                Some(_) => return Err(Error::NotAFork("the second follows the first")),
                None => return Err(Error::NotAFork("the second names no predecessor")),
            }
        } else {
            return Err(Error::NotAFork("sequences neither equal nor consecutive"));
        };
        self.first.verify(&a.author)?;
        self.second.verify(&a.author)?;
        Ok(Fork {
            dataset: a.dataset,
            author: a.author,
            seq: fork,
        })
    }

    /// CBOR bytes.
    pub fn encode(&self) -> Vec<u8> {
        cbor4ii::serde::to_vec(Vec::new(), self).unwrap_or_default()
    }

    /// Decodes [`Self::encode`]'s output (unchecked: call [`Self::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > 2 * MAX_MESSAGE + 1024 {
            return Err(Error::Malformed(format!("{} bytes", bytes.len())));
        }
        cbor4ii::serde::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::GENESIS;
    use crate::identity::Identity;

    fn env(id: &Identity, seq: u64, prev: [u8; 32], body: &[u8]) -> Envelope {
        let ds = DatasetId::parse("hospital/flu").expect("valid");
        Envelope::seal(id, ds, seq, 0, seq, prev, body.to_vec())
    }

    #[test]
    fn two_versions_of_one_sequence_prove_a_fork_there() {
        let id = Identity::from_seed([1; 32]);
        let one = env(&id, 1, GENESIS, b"a");
        let (x, y) = (
            env(&id, 2, one.digest(), b"x"),
            env(&id, 2, one.digest(), b"y"),
        );
        let fork = Evidence::same_seq(&x, &y).expect("evidence").check();
        assert_eq!(fork.expect("checks").seq, 2);
        assert!(Evidence::same_seq(&x, &x).is_none(), "one envelope twice");
        let mut resigned = x.clone();
        resigned.signature = [1; 64];
        assert!(Evidence::same_seq(&x, &resigned).is_none(), "same content");
    }

    #[test]
    fn a_successor_naming_another_predecessor_proves_a_fork_before_it() {
        let id = Identity::from_seed([1; 32]);
        let (x, y) = (env(&id, 1, GENESIS, b"x"), env(&id, 1, GENESIS, b"y"));
        let after_y = env(&id, 2, y.digest(), b"z");
        assert!(
            Evidence::successor(&y, &after_y).is_none(),
            "a consistent pair"
        );
        let ev = Evidence::successor(&x, &after_y).expect("evidence");
        assert_eq!(ev.check().expect("checks").seq, 1);
    }

    #[test]
    fn forged_or_mismatched_evidence_is_refused() {
        let (id, other) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let (x, y) = (env(&id, 1, GENESIS, b"x"), env(&id, 1, GENESIS, b"y"));
        let good = Evidence::same_seq(&x, &y).expect("evidence");
        let mut forged = good.clone();
        forged.second.signature = ByteBuf::from(vec![0; 64]);
        assert_eq!(forged.check(), Err(Error::BadSignature));
        let theirs = env(&other, 1, GENESIS, b"y");
        let mixed = Evidence {
            first: Signed::of(&x),
            second: Signed::of(&theirs),
        };
        assert!(matches!(mixed.check(), Err(Error::NotAFork(_))));
        let far = Evidence {
            first: Signed::of(&x),
            second: Signed::of(&env(&id, 3, [9; 32], b"w")),
        };
        assert!(matches!(far.check(), Err(Error::NotAFork(_))));
        let mut big = good.clone();
        big.first.message = ByteBuf::from(vec![0; MAX_MESSAGE + 1]);
        assert!(matches!(big.check(), Err(Error::Malformed(_))));
        // From the fuzzer (fuzz/regressions/evidence/seq_max_overflow): a first message at the
        // last sequence there is; `a.seq + 1` overflowed.
        let last = Evidence {
            first: Signed::of(&env(&id, u64::MAX, [9; 32], b"x")),
            second: Signed::of(&env(&id, 1, GENESIS, b"y")),
        };
        assert!(matches!(last.check(), Err(Error::NotAFork(_))));
        let found = Evidence::decode(include_bytes!(
            "../fuzz/regressions/evidence/seq_max_overflow"
        ));
        assert!(found.is_ok_and(|e| e.check().is_err()));
        for garbage in [&b""[..], b"\xa0", b"\x82\x01\x02"] {
            assert!(Evidence::decode(garbage).is_err());
        }
        assert_eq!(Evidence::decode(&good.encode()), Ok(good));
    }
}
