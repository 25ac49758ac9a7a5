//! The composed libp2p behaviour and the swarm built around it.

use libp2p::core::upgrade;
use libp2p::core::Transport;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, identify, identity::Keypair, kad, mdns, noise, ping, request_response, tcp,
    yamux, StreamProtocol, Swarm,
};

use super::codec::{Budget, FrameCodec};
use super::traffic::Meter;
use super::{Config, Error, Protocol, REQUEST_TIMEOUT};

/// Identify's protocol version: peers of other applications are told apart by it.
pub(crate) const IDENTIFY_VERSION: &str = "/fogmesh/id/1";
/// A private DHT, so fogmesh nodes never join (or pollute) the public IPFS one.
pub(crate) const KAD_PROTOCOL: &str = "/fogmesh/kad/1";

/// One request-response behaviour per [`Protocol`], each with its own caps.
pub(crate) type FrameBehaviour = request_response::Behaviour<FrameCodec>;

/// Everything the swarm runs. Connection limits come first so that a denied connection is refused
/// before any other behaviour spends anything on it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) join: FrameBehaviour,
    pub(crate) sync: FrameBehaviour,
    pub(crate) push: FrameBehaviour,
    pub(crate) query: FrameBehaviour,
}

impl Behaviour {
    fn new(key: &Keypair, config: &Config, meter: &Meter) -> Result<Self, Error> {
        let local = key.public().to_peer_id();
        let mdns = match config.mdns {
            true => Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), local)
                    .map_err(|e| Error::Build(format!("mdns: {e}")))?,
            ),
            false => None,
        };
        Ok(Self {
            limits: limits(config),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                    .with_agent_version(format!("fogmesh/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            mdns: mdns.into(),
            kad: kademlia(local),
            join: frames(Protocol::Join, meter),
            sync: frames(Protocol::Sync, meter),
            push: frames(Protocol::Push, meter),
            query: frames(Protocol::Query, meter),
        })
    }

    /// The request-response behaviour of `protocol`.
    pub(crate) fn frames_mut(&mut self, protocol: Protocol) -> &mut FrameBehaviour {
        match protocol {
            Protocol::Join => &mut self.join,
            Protocol::Sync => &mut self.sync,
            Protocol::Push => &mut self.push,
            Protocol::Query => &mut self.query,
        }
    }
}

fn limits(config: &Config) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(config.max_connections))
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_per_peer)),
    )
}

fn kademlia(local: libp2p::PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    // Only members go into the routing table (see `swarm_events::on_kad`): a stranger that
    // connects must not become a route other members are handed.
    config.set_kbucket_inserts(kad::BucketInserts::Manual);
    let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

fn frames(protocol: Protocol, meter: &Meter) -> FrameBehaviour {
    let mut codec = FrameCodec::new(
        protocol.max_request_bytes(),
        protocol.max_response_bytes(),
        meter.frames(protocol),
    );
    if protocol == Protocol::Push {
        // Room for two of the largest pushes at once, node-wide.
        let room = u32::try_from(2 * protocol.max_request_bytes()).unwrap_or(u32::MAX);
        codec = codec.with_budget(Budget::new(room));
    }
    request_response::Behaviour::with_codec(
        codec,
        [(
            protocol.stream_protocol(),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
    )
}

/// Builds the swarm: TCP and QUIC, Noise, yamux, DNS, and [`Behaviour`]. Every TCP socket is
/// wrapped so that its bytes count into `meter` (what `SwarmBuilder::with_tcp` builds, plus that
/// wrapper); QUIC comes first so that it is tried for QUIC addresses, TCP for the others.
pub(crate) fn build_swarm(
    keypair: Keypair,
    config: &Config,
    meter: &Meter,
) -> Result<Swarm<Behaviour>, Error> {
    let idle_timeout = config.idle_timeout;
    let behaviour = Behaviour::new(&keypair, config, meter)?;
    let noise = noise::Config::new(&keypair).map_err(|e| Error::Build(format!("noise: {e}")))?;
    let meter = meter.clone();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |socket, endpoint| meter.wrap(socket, endpoint.is_dialer()))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_other_transport(|_| tcp)
        .map_err(|never| match never {})?
        .with_dns()
        .map_err(|e| Error::Build(format!("dns: {e}")))?
        .with_behaviour(|_| behaviour)
        .map_err(|never| match never {})?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build();
    Ok(swarm)
}
