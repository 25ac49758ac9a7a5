//! The composed libp2p behaviour and the swarm built around it.

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade;
use libp2p::core::Transport;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, identify, identity::Keypair, mdns, noise, ping, quic, relay,
    request_response, tcp, yamux, Swarm,
};

use super::candidates::Candidates;
use super::codec::{Budget, FrameCodec};
use super::not_self::NotSelf;
use super::reach::{self, Members};
use super::traffic::Meter;
use super::{Config, Error, Protocol, REQUEST_TIMEOUT};

/// Identify's protocol version: peers of other applications are told apart by it.
pub(crate) const IDENTIFY_VERSION: &str = "/fogmesh/id/1";

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
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
    pub(crate) autonat: Toggle<autonat::Behaviour>,
    pub(crate) candidates: Candidates,
    pub(crate) join: FrameBehaviour,
    pub(crate) sync: FrameBehaviour,
    pub(crate) push: FrameBehaviour,
    pub(crate) query: FrameBehaviour,
}

impl Behaviour {
    fn new(
        key: &Keypair,
        config: &Config,
        meter: &Meter,
        relay_client: relay::client::Behaviour,
        members: &Members,
    ) -> Result<Self, Error> {
        let local = key.public().to_peer_id();
        let relay = config
            .serve_relay
            .as_ref()
            .map(|limits| reach::relay_server(local, limits, members));
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
            relay_client,
            relay: relay.into(),
            dcutr: config
                .hole_punch
                .then(|| dcutr::Behaviour::new(local))
                .into(),
            autonat: reach::autonat(local, config.serve_relay.is_some()).into(),
            candidates: Candidates::default(),
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
            .with_max_established_per_peer(Some(config.max_per_peer))
            .with_max_pending_outgoing(Some(config.max_connections)),
    )
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

/// Builds the swarm: QUIC and TCP (each socket of which counts its bytes into `meter`), Noise,
/// yamux, DNS, circuits through relays, and [`Behaviour`]. QUIC comes first so that it is tried
/// for QUIC addresses, TCP for the others; neither dials this node's own listen addresses
/// ([`NotSelf`]). `members` is what the relay server (if any) admits.
pub(crate) fn build_swarm(
    keypair: Keypair,
    config: &Config,
    meter: &Meter,
    members: &Members,
) -> Result<Swarm<Behaviour>, Error> {
    let idle_timeout = config.idle_timeout;
    let noise = noise::Config::new(&keypair).map_err(|e| Error::Build(format!("noise: {e}")))?;
    let quic = quic::tokio::Transport::new(quic::Config::new(&keypair));
    let meter_for_frames = meter.clone();
    let meter = meter.clone();
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(move |socket, endpoint| meter.wrap(socket, endpoint.is_dialer()))
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(REQUEST_TIMEOUT);
    let direct = NotSelf::new(
        quic.map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
            .or_transport(tcp.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
            .map(|either, _| either.into_inner()),
    );
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| direct)
        .map_err(|never| match never {})?
        .with_dns()
        .map_err(|e| Error::Build(format!("dns: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Build(format!("relay client: {e}")))?
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, config, &meter_for_frames, relay_client, members)
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        })
        .map_err(|e| Error::Build(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build();
    Ok(swarm)
}
