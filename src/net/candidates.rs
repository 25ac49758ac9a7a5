//! External address candidates for the other transport. A peer that tells this node where it
//! sees it (identify's observed address, which identify hands the swarm as a candidate) speaks of
//! one connection's transport: a node whose only connection out of its NAT is QUIC learns only
//! its QUIC address, DCUtR then offers the other member QUIC alone while the other offers TCP
//! alone, and the hole punch fails. A candidate at a listener's port (the NAT kept it) makes the
//! other listener's port at the same address a candidate too: a NAT that keeps one port most
//! likely keeps the other (a candidate is only tried, never trusted).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Most candidates waiting to be handed to the swarm; more are dropped (they come again).
const QUEUE_CAP: usize = 64;
/// Most listen addresses kept (a relay may hand out many; direct listeners come first).
const LISTENING_CAP: usize = 64;
/// Most candidates remembered as handed out (each is handed out once); past it the memory
/// starts over.
const SEEN_CAP: usize = 256;

/// The transport and port of an address: (`true` for QUIC, port).
fn transport(addr: &Multiaddr) -> Option<(bool, u16)> {
    let mut parts = addr.iter().skip(1);
    match (parts.next()?, parts.next()) {
        (AddrPart::Tcp(port), _) => Some((false, port)),
        (AddrPart::Udp(port), Some(AddrPart::QuicV1)) => Some((true, port)),
        _ => None,
    }
}

/// The addresses at `observed`'s IP of the listeners of the other transport, if the NAT kept
/// the port of `observed`'s own listener.
pub(crate) fn siblings(observed: &Multiaddr, listening: &[Multiaddr]) -> Vec<Multiaddr> {
    // Seen through a relay, the address is the relay's, whose ports say nothing of this node's
    // NAT (and where every node listens on one port, they would make the relay's own address
    // a candidate of this node's: a punch dial there reaches the relay and is given up).
    if observed.iter().any(|p| p == AddrPart::P2pCircuit) {
        return Vec::new();
    }
    let ip = match observed.iter().next() {
        Some(ip @ (AddrPart::Ip4(_) | AddrPart::Ip6(_))) => ip,
        _ => return Vec::new(),
    };
    let Some((quic, port)) = transport(observed) else {
        return Vec::new();
    };
    let listeners: HashSet<(bool, u16)> = listening
        .iter()
        .filter(|a| !a.iter().any(|p| p == AddrPart::P2pCircuit))
        .filter_map(transport)
        .collect();
    if !listeners.contains(&(quic, port)) {
        return Vec::new();
    }
    let mut out: Vec<Multiaddr> = listeners
        .into_iter()
        .filter(|(q, _)| *q != quic)
        .map(|(q, p)| {
            let addr = Multiaddr::empty().with(ip.clone());
            match q {
                true => addr.with(AddrPart::Udp(p)).with(AddrPart::QuicV1),
                false => addr.with(AddrPart::Tcp(p)),
            }
        })
        .collect();
    out.sort();
    out
}

/// Hands the swarm the candidates [`siblings`] finds for each candidate it hears of.
#[derive(Default)]
pub(crate) struct Candidates {
    listening: Vec<Multiaddr>,
    queue: VecDeque<Multiaddr>,
    seen: HashSet<Multiaddr>,
}

impl Candidates {
    fn heard(&mut self, candidate: &Multiaddr) {
        for addr in siblings(candidate, &self.listening) {
            if self.seen.len() >= SEEN_CAP {
                self.seen.clear();
            }
            if self.queue.len() < QUEUE_CAP && self.seen.insert(addr.clone()) {
                self.queue.push_back(addr);
            }
        }
    }
}

impl NetworkBehaviour for Candidates {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::NewListenAddr(new)
                if self.listening.len() < LISTENING_CAP && !self.listening.contains(new.addr) =>
            {
                self.listening.push(new.addr.clone());
            }
            FromSwarm::ExpiredListenAddr(gone) => self.listening.retain(|a| a != gone.addr),
            FromSwarm::NewExternalAddrCandidate(c) => self.heard(c.addr),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        never: THandlerOutEvent<Self>,
    ) {
        match never {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.queue.pop_front() {
            Some(addr) => Poll::Ready(ToSwarm::NewExternalAddrCandidate(addr)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{siblings, Candidates};
    use libp2p::Multiaddr;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_kept_port_yields_the_other_transport_at_the_same_address() {
        let listening = addrs(&[
            "/ip4/192.168.10.2/tcp/7071",
            "/ip4/192.168.10.2/udp/7072/quic-v1",
            "/ip4/10.0.0.1/tcp/7071/p2p/12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4/p2p-circuit",
        ]);
        let quic: Multiaddr = "/ip4/203.0.113.7/udp/7072/quic-v1".parse().unwrap();
        assert_eq!(
            siblings(&quic, &listening),
            addrs(&["/ip4/203.0.113.7/tcp/7071"])
        );
        let tcp: Multiaddr = "/ip4/203.0.113.7/tcp/7071".parse().unwrap();
        assert_eq!(
            siblings(&tcp, &listening),
            addrs(&["/ip4/203.0.113.7/udp/7072/quic-v1"])
        );
    }

    #[test]
    fn a_changed_port_or_an_odd_address_yields_nothing() {
        let listening = addrs(&["/ip4/0.0.0.0/tcp/7071", "/ip4/0.0.0.0/udp/7071/quic-v1"]);
        for observed in [
            "/ip4/203.0.113.7/tcp/40001",
            "/dns4/example.org/tcp/7071",
            "/ip4/203.0.113.7/udp/7071",
            "/ip4/203.0.113.5/tcp/7071/p2p/12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4/p2p-circuit",
        ] {
            assert!(
                siblings(&observed.parse().unwrap(), &listening).is_empty(),
                "{observed}"
            );
        }
    }

    #[test]
    fn each_sibling_is_handed_out_once() {
        let mut c = Candidates {
            listening: addrs(&["/ip4/0.0.0.0/tcp/7071", "/ip4/0.0.0.0/udp/7071/quic-v1"]),
            ..Candidates::default()
        };
        let tcp: Multiaddr = "/ip4/203.0.113.7/tcp/7071".parse().unwrap();
        c.heard(&tcp);
        c.heard(&tcp);
        assert_eq!(
            Vec::from(c.queue.clone()),
            addrs(&["/ip4/203.0.113.7/udp/7071/quic-v1"])
        );
        // The sibling coming back as a candidate yields the first one, handed out once too.
        c.heard(&"/ip4/203.0.113.7/udp/7071/quic-v1".parse().unwrap());
        c.heard(&"/ip4/203.0.113.7/udp/7071/quic-v1".parse().unwrap());
        assert_eq!(c.queue.len(), 2);
    }
}
