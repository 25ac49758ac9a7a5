//! What mesh work with a peer can fail with, and whose fault it is: input a peer sent that is
//! malformed, forged or not allowed is held against it (counted, and after three, it is
//! disconnected); a failure of this node (its store, a task) or of the network is not.

use crate::{envelope, equivocation, naming, net, version};

use super::proto;

/// A failure of mesh work with one peer (answering it, or catching up with it).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A message that does not decode or breaks a cap.
    #[error(transparent)]
    Message(#[from] proto::Error),
    /// An envelope that does not decode or whose signature fails.
    #[error(transparent)]
    Envelope(#[from] envelope::Error),
    /// Evidence of equivocation that does not check.
    #[error(transparent)]
    Evidence(#[from] equivocation::Error),
    /// A frontier (version vector and tips) that does not decode.
    #[error(transparent)]
    Frontier(#[from] version::DecodeError),
    /// A dataset or organization name that is not valid.
    #[error(transparent)]
    Name(#[from] naming::Error),
    /// Anything else the peer sent that is malformed, forged or not allowed.
    #[error("{0}")]
    Refused(String),
    /// The peer answered, but not with what was asked, or refused the request.
    #[error("{0}")]
    Answer(String),
    /// The network failed (the peer unreachable, the stream cut).
    #[error(transparent)]
    Net(#[from] net::Error),
    /// This node failed, or refused the input (see [`MeshError::is_peers_fault`]).
    #[error(transparent)]
    Node(#[from] crate::Error),
}

impl MeshError {
    /// Input the peer is to blame for: everything but the network's failures and this node's
    /// own (storage, documents, keys, configuration, a task, something not available now).
    pub fn is_peers_fault(&self) -> bool {
        use crate::Error as E;
        match self {
            Self::Net(_) => false,
            Self::Node(e) => !matches!(
                e,
                E::Store(_)
                    | E::Audit(_)
                    | E::Doc(_)
                    | E::Identity(_)
                    | E::Config(_)
                    | E::Unavailable(_)
                    | E::Network(_)
                    | E::Internal(_)
            ),
            _ => true,
        }
    }

    /// A refusal of the peer's input, saying why.
    pub fn refused(why: impl Into<String>) -> Self {
        Self::Refused(why.into())
    }
}

impl From<MeshError> for crate::Error {
    fn from(e: MeshError) -> Self {
        match e {
            MeshError::Node(e) => e,
            MeshError::Net(e) => crate::Error::Network(e.to_string()),
            other => crate::Error::Network(other.to_string()),
        }
    }
}

/// Shorthand for results of [`MeshError`].
pub type MeshResult<T> = std::result::Result<T, MeshError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_peers_input_is_held_against_it() {
        assert!(MeshError::refused("forged").is_peers_fault());
        let bad = crate::Error::Invalid("a change that is not its author's".into());
        assert!(MeshError::from(bad).is_peers_fault());
        let disk = crate::Error::Internal("no space left on device".into());
        assert!(!MeshError::from(disk).is_peers_fault());
        let net = net::Error::Unreachable {
            peer: libp2p::PeerId::random(),
            reason: "timeout".into(),
        };
        assert!(!MeshError::from(net).is_peers_fault());
    }
}
