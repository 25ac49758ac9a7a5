//! What the networking actor can fail with.

use libp2p::{Multiaddr, PeerId};

use super::Protocol;

/// A failure of [`super::spawn`] or of a [`super::Client`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`super::spawn`] was called outside a tokio runtime; the swarm needs one.
    #[error("net::spawn must be called from within a tokio runtime")]
    NoRuntime,
    /// The transport or a behaviour could not be built.
    #[error("building the swarm: {0}")]
    Build(String),
    /// A listen address could not be bound.
    #[error("listening on {addr}: {reason}")]
    Listen {
        /// The address from the configuration.
        addr: Multiaddr,
        /// The transport's message.
        reason: String,
    },
    /// A bootstrap or relay address does not name its peer.
    #[error("member address {addr} (bootstrap or relay) does not end in /p2p/<peer id>")]
    Bootstrap {
        /// The offending address.
        addr: Multiaddr,
    },
    /// A dial could not even be started.
    #[error("dialing {addr}: {reason}")]
    Dial {
        /// The address asked for.
        addr: Multiaddr,
        /// The swarm's message.
        reason: String,
    },
    /// No connection to the peer could be made or kept for the request.
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable {
        /// The remote peer.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// The peer did not answer within the request timeout.
    #[error("request to {peer} timed out")]
    Timeout {
        /// The remote peer.
        peer: PeerId,
    },
    /// The peer closed the stream without an answer or does not speak the protocol.
    #[error("peer {peer} refused the request: {reason}")]
    Refused {
        /// The remote peer.
        peer: PeerId,
        /// What the stream showed.
        reason: String,
    },
    /// The peer answered with an oversize or undecodable frame (counted against it).
    #[error("peer {peer} sent a bad response: {reason}")]
    BadResponse {
        /// The remote peer.
        peer: PeerId,
        /// Why the bytes were refused.
        reason: String,
    },
    /// The frame is larger than the protocol allows; nothing was sent.
    #[error("{protocol} frame of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// The protocol the frame was meant for.
        protocol: Protocol,
        /// The frame's length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Too many outbound requests are waiting for answers.
    #[error("too many requests in flight")]
    Busy,
    /// The network task has stopped (after `shutdown`, or because it failed).
    #[error("the network task has stopped")]
    Closed,
}
