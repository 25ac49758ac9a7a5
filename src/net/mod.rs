//! The networking actor: moves byte frames between mesh members over libp2p.
//!
//! It knows nothing of datasets, envelopes or rosters' signatures: the mesh layer above tells it
//! who the members are ([`Client::set_members`]) and hands it opaque [`Frame`]s.
//!
//! # Design
//!
//! One task, the event loop, owns the [`libp2p::Swarm`]. Everything else talks to it
//! through a cloneable [`Client`] that sends commands over a bounded channel, each with a oneshot for
//! its answer, and reads [`Event`]s from the receiver [`spawn`] returns. The loop is a `biased`
//! `select!` over commands, replies to inbound requests, swarm events and a housekeeping tick; each
//! arm calls a small `on_*` handler and none of them awaits a remote peer:
//!
//! - an outbound request is handed to libp2p and its oneshot parked under the request id until the
//!   response or failure event arrives;
//! - an inbound request is delivered as [`Event::Request`] with a oneshot `reply`; the loop keeps the
//!   libp2p response channel under a local id and polls the reply oneshots in a `FuturesUnordered`.
//!   Dropping `reply` closes the stream without an answer.
//! - the event channel is bounded ([`EVENTS_CAP`]) and written with `try_send`: a slow consumer
//!   loses events (counted and logged) rather than stalling the swarm.
//!
//! # Protocols
//!
//! Three request-response protocols carry CBOR-encoded [`Frame`]s, each with its own caps:
//! [`Protocol::Join`] (`/fogmesh/join/2`), [`Protocol::Sync`] (`/fogmesh/sync/4`) and
//! [`Protocol::Push`] (`/fogmesh/push/3`). Identify (`/fogmesh/id/1`), ping and mDNS provide
//! address hints and liveness; connection limits cap connections overall and per peer.
//! Transports: TCP and QUIC, Noise, yamux, DNS, and circuits through relays.
//!
//! # Reach
//!
//! A node behind a NAT reserves a relayed address on the members named in [`Config::relays`]
//! (circuit relay v2); members reach it there, and DCUtR then tries to punch a direct connection
//! through both NATs. A node with [`Config::serve_relay`] relays for members only, within its
//! [`RelayLimits`]. AutoNAT tells a node whether members can dial it ([`Reachability`]).
//! [`PeerInfo::connection`] says how each peer is connected.
//!
//! # Traffic
//!
//! Every TCP socket's bytes, and the frame bytes and messages of each fogmesh protocol, are counted
//! into a [`Meter`]; [`Client::traffic`] reads the totals (see [`Traffic`]).
//!
//! # Trust
//!
//! Discovery only yields address hints; a peer is trusted because its PeerId, proven by Noise, is
//! on the roster. A non-member may only send `Join` requests, and only for
//! [`Config::join_window`] after connecting; then it is disconnected. Its `Sync` and `Push`
//! requests are refused and reported as [`Event::BadInput`]. Oversize or undecodable frames are
//! refused the same way. A peer that accumulates [`BAD_INPUT_LIMIT`] bad inputs is disconnected.
//! Members that are down are redialed with exponential backoff (1 s doubling to 60 s); only a
//! connection that lasted 10 s resets it, so a member that closes every connection at once (one
//! that removed this node) is redialed once a minute, not every second.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), fogmesh::net::Error> {
//! use fogmesh::net::{self, Event, Frame};
//! let (client, mut events) = net::spawn(libp2p::identity::Keypair::generate_ed25519(), net::Config::default())?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Request { frame, reply, .. } = event {
//!         let _ = reply.send(Frame(frame.0)); // echo
//!     }
//! }
//! client.shutdown().await;
//! # Ok(()) }
//! ```

mod behaviour;
mod candidates;
mod client;
mod codec;
pub use codec::Held;
mod error;
mod event_loop;
mod not_self;
mod peers;
mod reach;
mod reservations;
mod swarm_events;
#[cfg(test)]
mod tests;
mod traffic;

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use client::Client;
pub use error::Error;
pub use peers::{PeerInfo, BAD_INPUT_FORGET, BAD_INPUT_LIMIT};
pub use reach::{Connection, Reachability, RelayLimits};
pub use traffic::{FrameTraffic, Meter, Traffic};

/// Capacity of the channel of [`Event`]s from the loop to the mesh layer.
pub const EVENTS_CAP: usize = 1024;
/// Capacity of the channel of commands from [`Client`]s to the loop.
pub const COMMANDS_CAP: usize = 256;
/// Cap on a `Join` request and on its response, in payload bytes.
pub const MAX_JOIN_BYTES: usize = 64 * 1024;
/// Cap on a `Sync` request, in payload bytes.
pub const MAX_SYNC_REQUEST_BYTES: usize = 256 * 1024;
/// Cap on a `Sync` response, in payload bytes.
pub const MAX_SYNC_RESPONSE_BYTES: usize = crate::envelope::MAX_ENCODED + 8 * 1024 * 1024;
/// Cap on a `Push` request, in payload bytes.
pub const MAX_PUSH_BYTES: usize = crate::envelope::MAX_ENCODED + 64 * 1024;
/// Cap on a `Push` response (an acknowledgement), in payload bytes.
pub const MAX_PUSH_RESPONSE_BYTES: usize = 4 * 1024;
/// Cap on a `Query` request (a federated aggregate or a search), in payload bytes.
pub const MAX_QUERY_REQUEST_BYTES: usize = 64 * 1024;
/// Cap on a `Query` response (signed groups or matches), in payload bytes.
pub const MAX_QUERY_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long an outbound request may wait for its response, and an inbound one for its reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How the networking actor is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Known members across networks; each ends in `/p2p/<peer id>` and is dialed.
    pub bootstrap: Vec<Multiaddr>,
    /// Members serving as relays to reserve a relayed address on (each ends in `/p2p/<peer id>`),
    /// for a node that members cannot dial.
    pub relays: Vec<Multiaddr>,
    /// Serve as a relay for members, within these limits (`None`: do not).
    pub serve_relay: Option<RelayLimits>,
    /// Try to turn relayed connections into direct ones by hole punching (DCUtR). Off, this
    /// node's relayed connections stay relayed (the other end cannot punch alone).
    pub hole_punch: bool,
    /// Announce and discover on the LAN with mDNS.
    pub mdns: bool,
    /// A connection with no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// Most established connections overall.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_per_peer: u32,
    /// How long a non-member may stay connected, time enough to send a `Join` request.
    pub join_window: Duration,
    /// Where the actor counts its traffic (see [`Traffic`]). `None`: a meter of its own, read with
    /// [`Client::traffic`]. Give one and keep a clone to read the traffic of an actor that
    /// someone else spawns, such as the mesh's.
    pub meter: Option<Meter>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            bootstrap: Vec::new(),
            relays: Vec::new(),
            serve_relay: None,
            hole_punch: true,
            mdns: true,
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_per_peer: 3,
            join_window: Duration::from_secs(30),
            meter: None,
        }
    }
}

fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The three request-response protocols between members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `/fogmesh/join/2`: the one protocol a non-member may use.
    Join,
    /// `/fogmesh/sync/4`: catch-up between members.
    Sync,
    /// `/fogmesh/push/3`: eager delivery of new envelopes.
    Push,
    /// `/fogmesh/query/1`: federated aggregates and pushed-down searches, answered by owners.
    Query,
}

impl Protocol {
    /// Every protocol, in a fixed order.
    pub const ALL: [Protocol; 4] = [
        Protocol::Join,
        Protocol::Sync,
        Protocol::Push,
        Protocol::Query,
    ];

    /// The versioned protocol name negotiated on the stream.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Join => "/fogmesh/join/2",
            Protocol::Sync => "/fogmesh/sync/4",
            Protocol::Push => "/fogmesh/push/3",
            Protocol::Query => "/fogmesh/query/1",
        }
    }

    /// Largest request payload accepted, in bytes.
    pub fn max_request_bytes(self) -> usize {
        match self {
            Protocol::Join => MAX_JOIN_BYTES,
            Protocol::Sync => MAX_SYNC_REQUEST_BYTES,
            Protocol::Push => MAX_PUSH_BYTES,
            Protocol::Query => MAX_QUERY_REQUEST_BYTES,
        }
    }

    /// Largest response payload accepted, in bytes.
    pub fn max_response_bytes(self) -> usize {
        match self {
            Protocol::Join => MAX_JOIN_BYTES,
            Protocol::Sync => MAX_SYNC_RESPONSE_BYTES,
            Protocol::Push => MAX_PUSH_RESPONSE_BYTES,
            Protocol::Query => MAX_QUERY_RESPONSE_BYTES,
        }
    }

    fn stream_protocol(self) -> StreamProtocol {
        StreamProtocol::new(self.name())
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The payload of every request and response: opaque bytes, encoded as one CBOR byte string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Frame(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What the networking actor tells the mesh layer.
#[derive(Debug)]
pub enum Event {
    /// A listener is bound; `addr` ends in `/p2p/<local id>`.
    Listening {
        /// The bound address.
        addr: Multiaddr,
    },
    /// The first connection to `peer` was established.
    PeerUp {
        /// The remote peer.
        peer: PeerId,
        /// The remote address of that connection.
        addr: Multiaddr,
    },
    /// The last connection to `peer` closed.
    PeerDown {
        /// The remote peer.
        peer: PeerId,
    },
    /// New address hints for a peer, from mDNS or identify. Hints, not trust.
    Discovered {
        /// The peer the addresses are claimed for.
        peer: PeerId,
        /// Addresses not known before.
        addrs: Vec<Multiaddr>,
    },
    /// An inbound request. Send the answer on `reply`; dropping it closes the stream unanswered.
    Request {
        /// The member (or, for `Join`, possibly non-member) asking.
        peer: PeerId,
        /// The protocol it arrived on.
        protocol: Protocol,
        /// The request payload, within the protocol's cap.
        frame: Frame,
        /// Where the response goes; it must fit [`Protocol::max_response_bytes`].
        reply: oneshot::Sender<Frame>,
        /// The room the frame holds in its protocol's inbound budget (push): keep it until the
        /// request is answered.
        held: Option<Held>,
    },
    /// A connection of a banned peer (see [`Client::ban`]) was closed as it was established.
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: &'static str,
    },
    /// A peer sent something unusable; counted against it (see [`BAD_INPUT_LIMIT`]).
    BadInput {
        /// The offending peer.
        peer: PeerId,
        /// The protocol it used.
        protocol: Protocol,
        /// What was wrong.
        detail: String,
    },
}

/// Builds the swarm, binds every `config.listen` address, dials the bootstrap members and starts the
/// event loop on the current tokio runtime.
///
/// Fails if called outside a tokio runtime, if a listen address cannot be bound or if a bootstrap
/// address lacks its `/p2p/<peer id>`.
pub fn spawn(keypair: Keypair, config: Config) -> Result<(Client, mpsc::Receiver<Event>), Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let bootstrap = bootstrap_peers(&config.bootstrap)?;
    let relays = bootstrap_peers(&config.relays)?;
    let meter = config.meter.clone().unwrap_or_default();
    let reach = reach::Reach::new(&config.relays, config.serve_relay.is_some());
    let mut swarm = behaviour::build_swarm(keypair, &config, &meter, &reach.members)?;
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        listeners.push(id);
    }
    let (command_tx, command_rx) = mpsc::channel(COMMANDS_CAP);
    let (event_tx, event_rx) = mpsc::channel(EVENTS_CAP);
    let local = *swarm.local_peer_id();
    let mut event_loop = event_loop::EventLoop::new(swarm, command_rx, event_tx, &config, reach);
    let connected = event_loop.table.connected_set();
    event_loop.start(listeners, bootstrap.into_iter().chain(relays).collect());
    runtime.spawn(event_loop.run());
    Ok((Client::new(local, command_tx, meter, connected), event_rx))
}

/// Splits each bootstrap address into its peer and the address without `/p2p`.
fn bootstrap_peers(addrs: &[Multiaddr]) -> Result<Vec<(PeerId, Multiaddr)>, Error> {
    addrs
        .iter()
        .map(|addr| match peers::split_p2p(addr) {
            (Some(peer), bare) => Ok((peer, bare)),
            (None, _) => Err(Error::Bootstrap { addr: addr.clone() }),
        })
        .collect()
}
