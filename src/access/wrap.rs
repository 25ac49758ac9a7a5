//! Epoch keys wrapped for one member node with HPKE (RFC 9180, base mode: DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) and signed by the dataset's owner, so any member
//! may relay them and only the recipient can open them. HPKE's base mode does not authenticate
//! the sender; the owner's ed25519 signature does.
//!
//! Encoding, version 1: `"FMK" 0x01 | dataset | epoch u64 | recipient[32] | enc[32] | ct[48] |
//! signature[64]`; the signature covers [`WRAP_DOMAIN`] and every byte before it, and the HPKE
//! `info` binds dataset, epoch and recipient.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use super::owner::Signers;
use crate::codec::{Malformed, Reader, Writer};
use crate::identity::{AuthorId, Identity};
use crate::naming::DatasetId;

use super::seal::EpochKey;

/// Domain-separation tag of wrapped keys (signature and HPKE info).
pub const WRAP_DOMAIN: &[u8] = b"fogmesh/epoch-key/v1\0";
/// Largest encoded wrapped key accepted.
pub const MAX_WRAP_BYTES: usize = 512;
const MAGIC: &[u8; 3] = b"FMK";
const VERSION: u8 = 1;
const CT_BYTES: usize = 48;

type KemT = X25519HkdfSha256;

/// Why a wrapped key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a wrapped key.
    #[error("wrapped key: {0}")]
    Malformed(#[from] Malformed),
    /// Not signed by the dataset's owner.
    #[error("wrapped key for {0}: signature is not the dataset owner's")]
    Signature(String),
    /// HPKE failed (a bad recipient key when wrapping; not ours or tampered when opening).
    #[error("wrapped key for {0}: {1}")]
    Hpke(String, String),
}

/// One epoch key of one dataset, for one member node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Dataset.
    pub dataset: DatasetId,
    /// Epoch.
    pub epoch: u64,
    /// The recipient node's identity key.
    pub recipient: AuthorId,
    enc: [u8; 32],
    ct: [u8; CT_BYTES],
    signature: [u8; 64],
}

fn info(dataset: &DatasetId, epoch: u64, recipient: &AuthorId) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(WRAP_DOMAIN)
        .str(&dataset.to_string())
        .u64(epoch)
        .bytes(recipient.as_bytes());
    w.0
}

impl WrappedKey {
    /// Wraps `key` for the node `recipient` whose X25519 public key is `agreement`, signed by
    /// `owner`.
    pub fn wrap(
        owner: &Identity,
        dataset: &DatasetId,
        epoch: u64,
        key: &EpochKey,
        recipient: AuthorId,
        agreement: &[u8; 32],
    ) -> Result<Self, Error> {
        let err = |e: hpke::HpkeError| Error::Hpke(dataset.to_string(), e.to_string());
        let pk = <KemT as Kem>::PublicKey::from_bytes(agreement).map_err(err)?;
        let info = info(dataset, epoch, &recipient);
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, KemT, _>(
            &OpModeS::Base,
            &pk,
            &info,
            key.bytes(),
            &[],
            &mut rand::rngs::OsRng,
        )
        .map_err(err)?;
        let mut w = Self {
            dataset: dataset.clone(),
            epoch,
            recipient,
            enc: enc.to_bytes().into(),
            ct: ct
                .try_into()
                .map_err(|_| Error::Hpke(dataset.to_string(), "ciphertext length".into()))?,
            signature: [0; 64],
        };
        w.signature = owner.sign(&w.signed_bytes());
        Ok(w)
    }

    /// Opens it with this node's X25519 secret.
    pub fn unwrap_key(&self, me: &Identity) -> Result<EpochKey, Error> {
        let err = |e: hpke::HpkeError| Error::Hpke(self.dataset.to_string(), e.to_string());
        let secret = me.agreement_secret();
        let sk = <KemT as Kem>::PrivateKey::from_bytes(&secret[..]).map_err(err)?;
        let enc = <KemT as Kem>::EncappedKey::from_bytes(&self.enc).map_err(err)?;
        let info = info(&self.dataset, self.epoch, &self.recipient);
        let pt = zeroize::Zeroizing::new(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, KemT>(
                &OpModeR::Base,
                &sk,
                &enc,
                &info,
                &self.ct,
                &[],
            )
            .map_err(err)?,
        );
        let bytes: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| Error::Hpke(self.dataset.to_string(), "key length".into()))?;
        Ok(EpochKey::from_bytes(bytes))
    }

    fn body(&self) -> Writer {
        let mut w = Writer::default();
        w.bytes(MAGIC).u8(VERSION).str(&self.dataset.to_string());
        w.u64(self.epoch).bytes(self.recipient.as_bytes());
        w.bytes(&self.enc).bytes(&self.ct);
        w
    }

    fn signed_bytes(&self) -> Vec<u8> {
        [WRAP_DOMAIN, &self.body().0].concat()
    }

    /// The same wrapped key signed by `owner` (after the owner rotated its key).
    pub fn resigned(&self, owner: &Identity) -> Self {
        let mut w = self.clone();
        w.signature = owner.sign(&w.signed_bytes());
        w
    }

    /// Whether `key` signed it.
    pub fn signed_by(&self, key: &AuthorId) -> bool {
        key.verify(&self.signed_bytes(), &self.signature)
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.body();
        w.bytes(&self.signature);
        w.0
    }

    /// Parses strictly, without checking the signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_WRAP_BYTES {
            return Err(Malformed("wrapped key too large").into());
        }
        let mut r = Reader(bytes);
        if r.take(3)? != MAGIC || r.u8()? != VERSION {
            return Err(Malformed("wrapped key header").into());
        }
        let dataset = DatasetId::parse(r.str()?).map_err(|_| Malformed("wrapped key dataset"))?;
        let w = Self {
            dataset,
            epoch: r.u64()?,
            recipient: AuthorId::from_bytes(r.array()?),
            enc: r.array()?,
            ct: r.array()?,
            signature: r.array()?,
        };
        r.finish()?;
        Ok(w)
    }

    /// Checks that `owner` signed it.
    pub fn verify(&self, owner: &(impl Signers + ?Sized)) -> Result<(), Error> {
        if owner.signed(&self.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(Error::Signature(self.dataset.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_a_wrapped_key() {
        let owner = Identity::from_seed([1; 32]);
        let reader = Identity::from_seed([2; 32]);
        let outsider = Identity::from_seed([3; 32]);
        let ds = DatasetId::parse("hospital/flu-daily").expect("valid");
        let key = EpochKey::generate();
        let w = WrappedKey::wrap(
            &owner,
            &ds,
            4,
            &key,
            reader.author(),
            &reader.agreement_public(),
        )
        .expect("wrap");
        let back = WrappedKey::decode(&w.encode()).expect("decode");
        back.verify(&owner.author()).expect("owner signed");
        assert!(back.verify(&outsider.author()).is_err());
        assert_eq!(
            back.unwrap_key(&reader).expect("opens").bytes(),
            key.bytes()
        );
        assert!(back.unwrap_key(&outsider).is_err());
        assert!(back.unwrap_key(&owner).is_err());
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let owner = Identity::from_seed([1; 32]);
        let reader = Identity::from_seed([2; 32]);
        let ds = DatasetId::parse("a/b").expect("valid");
        let key = EpochKey::generate();
        let w = WrappedKey::wrap(
            &owner,
            &ds,
            1,
            &key,
            reader.author(),
            &reader.agreement_public(),
        )
        .expect("wrap")
        .encode();
        for i in 0..w.len() {
            let mut bad = w.clone();
            bad[i] ^= 0x01;
            let ok = WrappedKey::decode(&bad).is_ok_and(|k| k.verify(&owner.author()).is_ok());
            assert!(!ok, "flip at byte {i} was accepted");
        }
    }
}
