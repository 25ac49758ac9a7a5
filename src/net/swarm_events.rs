//! The event loop's handlers for swarm and behaviour events.

use std::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, InboundFailure, OutboundFailure, OutboundRequestId};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::{ConnectionError, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId};

use super::behaviour::BehaviourEvent;
use super::codec::Wire;
use super::event_loop::EventLoop;
use super::peers::{split_p2p, MAX_ADDRS_PER_PEER};
use super::{Error, Event, Protocol};

type FrameEvent = request_response::Event<Wire, Wire>;

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.note_connection(connection_id, peer_id, &endpoint);
                self.on_connection_established(peer_id, &endpoint, num_established.get())
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established, cause),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => self.on_new_listen_addr(listener_id, address),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if self.reach.is_relay_listener(listener_id) {
                    let why = match &reason {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    self.on_relay_listener_closed(listener_id, &why);
                    return;
                }
                tracing::warn!(?listener_id, ?reason, "listener closed");
                self.listener_reported(listener_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!(?listener_id, %error, "listener error");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_connection_established(&mut self, peer: PeerId, endpoint: &ConnectedPoint, count: u32) {
        if self.banned.contains(&peer) {
            tracing::warn!(%peer, "refused a removed member");
            let _ = self.swarm.disconnect_peer_id(peer);
            self.emit(Event::Refused {
                peer,
                reason: "removed from the mesh",
            });
            return;
        }
        if count > 1 {
            self.table.seen(&peer, Instant::now());
            return;
        }
        let open = self.strangers_until.is_some_and(|t| Instant::now() < t);
        if !self.table.is_member(&peer) && endpoint.is_listener() && !open {
            tracing::warn!(%peer, "refused a non-member: no invitation is outstanding");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        let remote = endpoint.get_remote_address().clone();
        // Only an address we dialed is known to be dialable; a listener sees an ephemeral port.
        let dialed = endpoint.is_dialer().then(|| split_p2p(&remote).1);
        self.table.connected(peer, dialed, Instant::now());
        if !self.table.is_member(&peer) {
            tracing::info!(%peer, "non-member connected; only Join is accepted from it");
        }
        self.emit(Event::PeerUp { peer, addr: remote });
    }

    fn on_connection_closed(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        left: u32,
        cause: Option<ConnectionError>,
    ) {
        self.forget_connection(id);
        if left > 0 || !self.table.is_up(&peer) {
            return;
        }
        tracing::debug!(%peer, cause = ?cause, "peer down");
        self.table.disconnected(peer, Instant::now());
        self.emit(Event::PeerDown { peer });
    }

    fn on_new_listen_addr(&mut self, listener: ListenerId, addr: Multiaddr) {
        let local = *self.swarm.local_peer_id();
        if !self.relay_address_ok(listener, &addr) {
            return;
        }
        self.announce_if_relay(&addr);
        let addr = addr.with_p2p(local).unwrap_or_else(|a| a);
        tracing::info!(%addr, "listening");
        self.emit(Event::Listening { addr });
        self.listener_reported(listener);
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Identify(event) => self.on_identify(event),
            BehaviourEvent::Ping(event) => self.on_ping(event),
            BehaviourEvent::Mdns(event) => self.on_mdns(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            BehaviourEvent::Relay(event) => self.on_relay_server(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr(event),
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::Candidates(never) => match never {},
            BehaviourEvent::Join(event) => self.on_frames(Protocol::Join, event),
            BehaviourEvent::Sync(event) => self.on_frames(Protocol::Sync, event),
            BehaviourEvent::Push(event) => self.on_frames(Protocol::Push, event),
            BehaviourEvent::Query(event) => self.on_frames(Protocol::Query, event),
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        self.table.seen(&peer_id, Instant::now());
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        self.hints(peer_id, addrs);
    }

    fn on_ping(&mut self, event: ping::Event) {
        match event.result {
            Ok(rtt) => self.table.record_rtt(&event.peer, rtt, Instant::now()),
            Err(e) => tracing::debug!(peer = %event.peer, error = %e, "ping failed"),
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        let mdns::Event::Discovered(found) = event else {
            return;
        };
        let mut by_peer: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, addr) in found {
            match by_peer.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, addrs)) => addrs.push(addr),
                None => by_peer.push((peer, vec![addr])),
            }
        }
        for (peer, addrs) in by_peer {
            self.hints(peer, addrs);
        }
    }

    /// Remembers address hints and reports the new ones as [`Event::Discovered`].
    fn hints(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let fresh = self.table.add_addrs(peer, addrs, Instant::now());
        if !fresh.is_empty() {
            self.emit(Event::Discovered { peer, addrs: fresh });
        }
    }

    fn on_frames(&mut self, protocol: Protocol, event: FrameEvent) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                self.table.seen(&peer, Instant::now());
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_inbound_request(peer, protocol, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => self.on_response(peer, protocol, request_id, response),
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.on_outbound_failure(peer, protocol, request_id, error),
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, protocol, error)
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        request: Wire,
        channel: request_response::ResponseChannel<Wire>,
    ) {
        // Dropping `channel` on any early return closes the stream unanswered.
        if protocol != Protocol::Join && !self.table.is_member(&peer) {
            let detail = format!("{protocol} request from a non-member");
            return self.bad_input(peer, Some(protocol), detail);
        }
        match request {
            Wire::Frame(frame) => self.deliver(peer, protocol, (frame, None), channel),
            Wire::Held(frame, held) => self.deliver(peer, protocol, (frame, Some(held)), channel),
            Wire::Invalid(reason) => self.bad_input(peer, Some(protocol), reason),
        }
    }

    fn on_response(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        id: OutboundRequestId,
        response: Wire,
    ) {
        let result = match response {
            Wire::Frame(frame) | Wire::Held(frame, _) => Ok(frame),
            Wire::Invalid(reason) => {
                self.bad_input(peer, Some(protocol), format!("response: {reason}"));
                Err(Error::BadResponse { peer, reason })
            }
        };
        if let Some(reply) = self.outbound.remove(&(protocol, id)) {
            let _ = reply.send(result);
        }
    }

    fn on_outbound_failure(
        &mut self,
        peer: PeerId,
        protocol: Protocol,
        id: OutboundRequestId,
        error: OutboundFailure,
    ) {
        tracing::debug!(%peer, %protocol, %error, "outbound request failed");
        if let Some(reply) = self.outbound.remove(&(protocol, id)) {
            let _ = reply.send(Err(outbound_error(peer, error)));
        }
    }

    fn on_inbound_failure(&mut self, peer: PeerId, protocol: Protocol, error: InboundFailure) {
        // Oversize and undecodable requests arrive as `Wire::Invalid`; what remains (timeouts,
        // resets, closed connections, our own omissions) may be the network's fault, not the peer's.
        tracing::debug!(%peer, %protocol, %error, "inbound request failed");
    }
}

fn outbound_error(peer: PeerId, error: OutboundFailure) -> Error {
    match error {
        OutboundFailure::DialFailure => Error::Unreachable {
            peer,
            reason: "dial failed".into(),
        },
        OutboundFailure::ConnectionClosed => Error::Unreachable {
            peer,
            reason: "connection closed before the response".into(),
        },
        OutboundFailure::Timeout => Error::Timeout { peer },
        OutboundFailure::UnsupportedProtocols => Error::Refused {
            peer,
            reason: "protocol not supported".into(),
        },
        OutboundFailure::Io(e) => Error::Refused {
            peer,
            reason: e.to_string(),
        },
    }
}
