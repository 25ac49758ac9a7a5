//! Envelopes: the unit of replication. One envelope carries one Automerge change of one dataset by
//! one author, with the author's sequence number, the key epoch it is sealed under, the author's HLC
//! time, the digest of the author's previous envelope in the dataset, and an ed25519 signature over
//! all of it.
//!
//! Wire format, version 2 (integers big-endian):
//!
//! ```text
//! "FME" 0x02 | u16 dataset-len | dataset | author[32] | seq u64 | epoch u64 | hlc u64 | prev[32]
//!            | u32 payload-len | payload | signature[64]
//! ```
//!
//! The signature covers the *signed message*: [`SIGNING_DOMAIN_V2`], every header byte up to the
//! payload length, then SHA-256 of the payload. So an envelope cannot be re-labelled (other
//! dataset, sequence or epoch) without breaking it, and its signature can be checked from the
//! message alone, without the payload: that is what evidence of equivocation carries
//! ([`crate::equivocation`]). [`Envelope::digest`] is SHA-256 of the signed message; `prev` is the
//! digest of the author's envelope `seq - 1` ([`GENESIS`] at sequence 1), so an author's envelopes
//! form a chain, and two nodes holding the same sequence with the same digest hold the same history.
//!
//! Version 1 (no `prev`; the signature covers [`SIGNING_DOMAIN`] and every byte before it,
//! payload included) is still read, so stores and peers of the earlier build keep working; this
//! build writes version 2 only.
//!
//! Decoding is strict: exact lengths, no trailing bytes, capped sizes; nothing a peer sends can
//! make it panic.
//!
//! ```
//! use fogmesh::{envelope::{Envelope, GENESIS}, identity::Identity, naming::DatasetId};
//! let id = Identity::from_seed([7; 32]);
//! let ds = DatasetId::parse("hospital/flu-cases").unwrap();
//! let first = Envelope::seal(&id, ds.clone(), 1, 0, 42, GENESIS, b"change 1".to_vec());
//! let second = Envelope::seal(&id, ds, 2, 0, 43, first.digest(), b"change 2".to_vec());
//! let wire = second.encode();
//! assert_eq!(Envelope::decode_verified(&wire).unwrap(), second);
//! assert_eq!(second.prev, Some(first.digest()));
//! ```

use sha2::{Digest, Sha256};

use crate::identity::{AuthorId, Identity};
use crate::naming::DatasetId;

/// Domain-separation tag of version 1's signed bytes (read only).
pub const SIGNING_DOMAIN: &[u8] = b"fogmesh/envelope/v1\0";
/// Domain-separation tag of version 2's signed message.
pub const SIGNING_DOMAIN_V2: &[u8] = b"fogmesh/envelope/v2\0";
/// Codec version written by this build.
pub const VERSION: u8 = 2;
/// The `prev` of an author's first envelope in a dataset.
pub const GENESIS: [u8; 32] = [0; 32];
/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Largest encoded envelope accepted, in bytes.
pub const MAX_ENCODED: usize = MAX_PAYLOAD + 1024;
const MAGIC: &[u8; 3] = b"FME";

/// True when `bytes` are an envelope of the chained codec (version 2): the only one taken from
/// peers. Stored envelopes of version 1 stay readable here but are neither served nor taken.
pub fn is_chained(bytes: &[u8]) -> bool {
    bytes.len() > 3 && bytes[3] == VERSION
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Structurally malformed bytes.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A codec version this build does not speak.
    #[error("envelope codec version {0} is not supported (this build speaks 1 and {VERSION})")]
    Version(u8),
    /// Too large.
    #[error("envelope of {0} bytes exceeds the cap of {MAX_ENCODED}")]
    TooLarge(usize),
    /// The signature does not verify.
    #[error("envelope signature does not verify")]
    BadSignature,
}

/// A signed change of one dataset by one author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The dataset changed.
    pub dataset: DatasetId,
    /// Who wrote it.
    pub author: AuthorId,
    /// The author's sequence number in this dataset, from 1, without gaps.
    pub seq: u64,
    /// The key epoch the payload is sealed under (0: plaintext).
    pub epoch: u64,
    /// The author's HLC timestamp when it wrote the change.
    pub hlc: u64,
    /// Digest of the author's envelope `seq - 1` in this dataset ([`GENESIS`] at sequence 1);
    /// `None` for a version-1 envelope, which names none.
    pub prev: Option<[u8; 32]>,
    /// The (possibly sealed) Automerge change bytes.
    pub payload: Vec<u8>,
    /// ed25519 signature by `author` over the signed bytes.
    pub signature: [u8; 64],
}

/// Where an envelope sits in its author's history: what a signed message names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The dataset.
    pub dataset: DatasetId,
    /// The author.
    pub author: AuthorId,
    /// The author's sequence number.
    pub seq: u64,
    /// The predecessor's digest (version 2).
    pub prev: Option<[u8; 32]>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.take(N)?
            .try_into()
            .map_err(|_| Error::Malformed("truncated"))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

impl Envelope {
    /// Builds and signs a version-2 envelope; `prev` is the digest of the author's envelope
    /// `seq - 1` of the dataset ([`GENESIS`] at sequence 1).
    pub fn seal(
        id: &Identity,
        dataset: DatasetId,
        seq: u64,
        epoch: u64,
        hlc: u64,
        prev: [u8; 32],
        payload: Vec<u8>,
    ) -> Self {
        let mut env = Self {
            dataset,
            author: id.author(),
            seq,
            epoch,
            hlc,
            prev: Some(prev),
            payload,
            signature: [0; 64],
        };
        env.signature = id.sign(&env.signed_message());
        env
    }

    /// Header bytes up to and including the payload length.
    fn header(&self) -> Vec<u8> {
        let ds = self.dataset.to_string();
        let mut out = Vec::with_capacity(ds.len() + 120);
        out.extend_from_slice(MAGIC);
        out.push(if self.prev.is_some() { VERSION } else { 1 });
        out.extend_from_slice(&(ds.len() as u16).to_be_bytes());
        out.extend_from_slice(ds.as_bytes());
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.hlc.to_be_bytes());
        if let Some(prev) = &self.prev {
            out.extend_from_slice(prev);
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out
    }

    /// What the signature covers: for version 2, the domain tag, the header and the payload's
    /// SHA-256 (small, whatever the payload); for version 1, the domain tag, the header and the
    /// payload itself.
    pub fn signed_message(&self) -> Vec<u8> {
        let (domain, tail): (&[u8], Vec<u8>) = match self.prev {
            Some(_) => (SIGNING_DOMAIN_V2, Sha256::digest(&self.payload).to_vec()),
            None => (SIGNING_DOMAIN, self.payload.clone()),
        };
        let mut msg = domain.to_vec();
        msg.extend_from_slice(&self.header());
        msg.extend_from_slice(&tail);
        msg
    }

    /// SHA-256 of the signed message: what a successor's `prev` names. Two envelopes with one
    /// digest say the same thing (their signatures may still differ).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.signed_message()).into()
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.reserve(self.payload.len() + 64);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses wire bytes without checking the signature (use [`Self::verify`] before trusting it).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_ENCODED {
            return Err(Error::TooLarge(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC {
            return Err(Error::Malformed("bad magic"));
        }
        let [version] = r.array::<1>()?;
        if version != VERSION && version != 1 {
            return Err(Error::Version(version));
        }
        let ds_len = u16::from_be_bytes(r.array()?) as usize;
        let ds = std::str::from_utf8(r.take(ds_len)?).map_err(|_| Error::Malformed("dataset"))?;
        let dataset = DatasetId::parse(ds).map_err(|_| Error::Malformed("dataset"))?;
        let author = AuthorId::from_bytes(r.array()?);
        let (seq, epoch, hlc) = (r.u64()?, r.u64()?, r.u64()?);
        let prev = if version == VERSION {
            Some(r.array::<32>()?)
        } else {
            None
        };
        let len = u32::from_be_bytes(r.array()?) as usize;
        if len > MAX_PAYLOAD {
            return Err(Error::Malformed("payload too large"));
        }
        let payload = r.take(len)?.to_vec();
        let signature = r.array::<64>()?;
        if !r.0.is_empty() {
            return Err(Error::Malformed("trailing bytes"));
        }
        if seq == 0 {
            return Err(Error::Malformed("sequence 0"));
        }
        if seq == 1 && prev.is_some_and(|p| p != GENESIS) {
            return Err(Error::Malformed("a first envelope names a predecessor"));
        }
        Ok(Self {
            dataset,
            author,
            seq,
            epoch,
            hlc,
            prev,
            payload,
            signature,
        })
    }

    /// Checks the author's signature.
    pub fn verify(&self) -> Result<(), Error> {
        if self.author.verify(&self.signed_message(), &self.signature) {
            Ok(())
        } else {
            Err(Error::BadSignature)
        }
    }

    /// The dataset, author, sequence and `prev` a signed message (see [`Self::signed_message`])
    /// speaks of, read strictly.
    pub fn slot_of(message: &[u8]) -> Result<Slot, Error> {
        let (version, rest) = if let Some(rest) = message.strip_prefix(SIGNING_DOMAIN_V2) {
            (VERSION, rest)
        } else if let Some(rest) = message.strip_prefix(SIGNING_DOMAIN) {
            (1, rest)
        } else {
            return Err(Error::Malformed("not a signed envelope message"));
        };
        let mut r = Reader(rest);
        if r.take(3)? != MAGIC || r.array::<1>()? != [version] {
            return Err(Error::Malformed("bad magic"));
        }
        let ds_len = u16::from_be_bytes(r.array()?) as usize;
        let ds = std::str::from_utf8(r.take(ds_len)?).map_err(|_| Error::Malformed("dataset"))?;
        let dataset = DatasetId::parse(ds).map_err(|_| Error::Malformed("dataset"))?;
        let author = AuthorId::from_bytes(r.array()?);
        let (seq, _epoch, _hlc) = (r.u64()?, r.u64()?, r.u64()?);
        let prev = (version == VERSION).then(|| r.array::<32>()).transpose()?;
        let len = u32::from_be_bytes(r.array()?) as usize;
        r.take(if prev.is_some() { 32 } else { len })?;
        if !r.0.is_empty() || seq == 0 {
            return Err(Error::Malformed("signed message"));
        }
        Ok(Slot {
            dataset,
            author,
            seq,
            prev,
        })
    }

    /// Parses and verifies: the only way bytes from outside should become an envelope.
    pub fn decode_verified(bytes: &[u8]) -> Result<Self, Error> {
        let env = Self::decode(bytes)?;
        env.verify()?;
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload: Vec<u8>) -> Envelope {
        let id = Identity::from_seed([9; 32]);
        let ds = DatasetId::parse("hospital/flu-cases").expect("valid");
        Envelope::seal(&id, ds, 3, 1, 123_456, [5; 32], payload)
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let wire = sample(b"automerge change".to_vec()).encode();
        for i in 0..wire.len() {
            for bit in [0x01u8, 0x80, 0xff] {
                let mut bad = wire.clone();
                bad[i] ^= bit;
                assert!(
                    Envelope::decode_verified(&bad).is_err(),
                    "flip {bit:#x} at byte {i} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_rejected() {
        let wire = sample(vec![1, 2, 3]).encode();
        for n in 0..wire.len() {
            assert!(Envelope::decode(&wire[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut long = wire.clone();
        long.push(0);
        assert_eq!(
            Envelope::decode(&long),
            Err(Error::Malformed("trailing bytes"))
        );
    }

    #[test]
    fn unknown_versions_are_named() {
        let mut wire = sample(vec![]).encode();
        wire[3] = 9;
        assert_eq!(Envelope::decode(&wire), Err(Error::Version(9)));
    }

    #[test]
    fn a_relabelled_envelope_fails_verification() {
        let mut env = sample(vec![5; 10]);
        env.seq += 1;
        assert_eq!(env.verify(), Err(Error::BadSignature));
        let mut env = sample(vec![5; 10]);
        env.prev = Some([6; 32]);
        assert_eq!(env.verify(), Err(Error::BadSignature), "prev is signed");
        let mut env = sample(vec![5; 10]);
        env.payload[0] = 4;
        assert_eq!(
            env.verify(),
            Err(Error::BadSignature),
            "the payload is signed"
        );
    }

    /// A version-1 envelope as the earlier build wrote it.
    fn sample_v1(payload: Vec<u8>) -> Envelope {
        let id = Identity::from_seed([9; 32]);
        let mut env = sample(payload);
        env.prev = None;
        env.signature = id.sign(&env.signed_message());
        env
    }

    #[test]
    fn version_1_is_still_read_and_checked() {
        let v1 = sample_v1(b"old change".to_vec());
        let wire = v1.encode();
        assert_eq!(wire[3], 1);
        let back = Envelope::decode_verified(&wire).expect("a version-1 envelope reads");
        assert_eq!(back.prev, None);
        assert_eq!(back, v1);
        let mut bad = wire.clone();
        bad[wire.len() - 70] ^= 1;
        assert!(Envelope::decode_verified(&bad).is_err());
    }

    #[test]
    fn a_signed_message_names_its_slot() {
        for env in [sample(vec![1; 40]), sample_v1(vec![2; 40])] {
            let slot = Envelope::slot_of(&env.signed_message()).expect("parses");
            assert_eq!((slot.seq, slot.prev), (env.seq, env.prev));
            assert_eq!(
                (slot.dataset, slot.author),
                (env.dataset.clone(), env.author)
            );
            let msg = env.signed_message();
            assert!(Envelope::slot_of(&msg[..msg.len() - 1]).is_err());
            assert!(
                Envelope::slot_of(&env.encode()).is_err(),
                "wire bytes are not a message"
            );
        }
    }

    #[test]
    fn the_signed_message_of_version_2_is_small_and_its_digest_names_the_content() {
        let big = sample(vec![7; 100_000]);
        assert!(big.signed_message().len() < 200);
        let mut resigned = big.clone();
        resigned.signature = [0; 64];
        assert_eq!(
            resigned.digest(),
            big.digest(),
            "the digest leaves the signature out"
        );
        let other = sample(vec![8; 100_000]);
        assert_ne!(other.digest(), big.digest());
    }

    proptest! {
        #[test]
        fn codec_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048),
                             seq in 1u64.., epoch in any::<u64>(), hlc in any::<u64>()) {
            let id = Identity::from_seed([4; 32]);
            let ds = DatasetId::parse("a/b").expect("valid");
            let env = Envelope::seal(&id, ds, seq, epoch, hlc, [1; 32], payload);
            prop_assert_eq!(Envelope::decode_verified(&env.encode()).expect("round trip"), env);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode_verified(&bytes);
        }
    }
}
