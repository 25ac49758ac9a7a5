//! The cloneable handle to the event loop: each call is a command with a oneshot for its answer.

use std::collections::HashSet;
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::{Error, Frame, Meter, PeerInfo, Protocol, Reachability, Traffic};

/// What a [`Client`] asks of the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    Request {
        peer: PeerId,
        protocol: Protocol,
        frame: Frame,
        reply: oneshot::Sender<Result<Frame, Error>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<()>,
    },
    SetMembers {
        members: HashSet<PeerId>,
        reply: oneshot::Sender<()>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Ban {
        peers: HashSet<PeerId>,
        reply: oneshot::Sender<()>,
    },
    AcceptStrangers {
        until: Instant,
        reply: oneshot::Sender<()>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Reachability {
        reply: oneshot::Sender<Reachability>,
    },
    ReportBad {
        peer: PeerId,
        detail: String,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A handle to the networking actor. Cheap to clone; the loop stops on [`Client::shutdown`] or
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    local: PeerId,
    commands: mpsc::Sender<Command>,
    meter: Meter,
    connected: super::peers::Connected,
}

impl Client {
    pub(crate) fn new(
        local: PeerId,
        commands: mpsc::Sender<Command>,
        meter: Meter,
        connected: super::peers::Connected,
    ) -> Self {
        Self {
            local,
            commands,
            meter,
            connected,
        }
    }

    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Bytes on this actor's TCP connections, and the fogmesh frames among them, since it was
    /// spawned (or since its [`super::Config::meter`] was created). Read from shared counters: it
    /// answers at once, also after shutdown. Take two readings and use [`Traffic::since`] for the
    /// traffic of an interval.
    pub fn traffic(&self) -> Traffic {
        self.meter.traffic()
    }

    /// Sends `frame` to `peer` on `protocol` and waits for the response, dialing if needed.
    /// Fails with [`Error::TooLarge`] before sending if the frame exceeds the protocol's cap.
    pub async fn request(
        &self,
        peer: PeerId,
        protocol: Protocol,
        frame: Frame,
    ) -> Result<Frame, Error> {
        let max = protocol.max_request_bytes();
        if frame.0.len() > max {
            return Err(Error::TooLarge {
                protocol,
                len: frame.0.len(),
                max,
            });
        }
        self.request_unchecked(peer, protocol, frame).await
    }

    /// [`Client::request`] without the local size check, so tests can play a misbehaving peer.
    pub(crate) async fn request_unchecked(
        &self,
        peer: PeerId,
        protocol: Protocol,
        frame: Frame,
    ) -> Result<Frame, Error> {
        self.call(|reply| Command::Request {
            peer,
            protocol,
            frame,
            reply,
        })
        .await?
    }

    /// Starts a dial; resolves once it is issued, not once connected (watch for
    /// [`super::Event::PeerUp`]). An address ending in `/p2p/<peer id>` is remembered for that peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Remembers `addr` for `peer`, for requests and redials.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), Error> {
        self.call(|reply| Command::AddAddress { peer, addr, reply })
            .await
    }

    /// Replaces the roster. Non-members may only send `Join` requests and are disconnected
    /// [`super::Config::join_window`] after connecting; members that are down are redialed.
    pub async fn set_members(&self, members: HashSet<PeerId>) -> Result<(), Error> {
        self.call(|reply| Command::SetMembers { members, reply })
            .await
    }

    /// Replaces the set of banned peers (removed members): connected ones are disconnected now,
    /// and every later connection of theirs is closed as soon as it is established, invitation
    /// or not, and reported as [`Event::Refused`](super::Event::Refused).
    pub async fn ban(&self, peers: HashSet<PeerId>) -> Result<(), Error> {
        self.call(|reply| Command::Ban { peers, reply }).await
    }

    /// Accepts inbound connections from non-members until `until` (while an invitation is
    /// outstanding); at other times they are closed as soon as they are established, before they
    /// can make this node read anything. Outbound connections (this node joining) are not affected.
    pub async fn accept_strangers(&self, until: Instant) -> Result<(), Error> {
        self.call(|reply| Command::AcceptStrangers { until, reply })
            .await
    }

    /// Closes every connection to `peer` (a member will be redialed after its backoff).
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), Error> {
        self.call(|reply| Command::Disconnect { peer, reply }).await
    }

    /// The bound listen addresses, each ending in `/p2p/<local id>`. Waits until every listener
    /// configured at spawn has reported its address.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Every member and every connected peer.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Error> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// The peers connected now (members or not), read without asking the event loop: for
    /// decisions taken per message, where [`Self::peers`] would cost a round trip each.
    pub fn connected(&self) -> std::sync::Arc<std::collections::HashSet<PeerId>> {
        self.connected.now()
    }

    /// Whether members can dial this node, as AutoNAT last found.
    pub async fn reachability(&self) -> Result<Reachability, Error> {
        self.call(|reply| Command::Reachability { reply }).await
    }

    /// Counts a frame the mesh layer could not use against `peer`, like
    /// [`super::Event::BadInput`]; past [`super::BAD_INPUT_LIMIT`] the peer is disconnected.
    pub async fn report_bad(&self, peer: PeerId, detail: String) -> Result<(), Error> {
        self.call(|reply| Command::ReportBad {
            peer,
            detail,
            reply,
        })
        .await
    }

    /// Stops the event loop and drops the swarm (closing listeners and connections); returns once
    /// that is done, or at once if the loop has already stopped.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}
