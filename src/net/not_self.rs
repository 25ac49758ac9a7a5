//! A transport wrapper that never dials this node's own listen addresses.
//!
//! Members learn each other's listen addresses from identify and the roster, private ones
//! included: `127.0.0.1/tcp/7071`, or `192.168.1.10/tcp/7071` on two sites that number their
//! LANs alike. Where this node listens at the same address, a dial there reaches this node
//! itself. The swarm races a dial's addresses and takes the first connection that opens, and only
//! then checks whose it is: the dial to itself wins, the peer id is wrong, and the whole dial is
//! given up, the member's good addresses (its relayed one included) with it. Refused here, such
//! an address fails alone and the others go on.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::Multiaddr;

/// Most listen addresses remembered (one per interface and listener); past it the newest are
/// not, and a dial to them goes ahead as it would without this wrapper.
const OWN_CAP: usize = 256;

/// `inner`, refusing dials to the addresses its own listeners report.
pub(crate) struct NotSelf<T> {
    inner: T,
    own: HashSet<Multiaddr>,
}

impl<T> NotSelf<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            own: HashSet::new(),
        }
    }

    /// Whether `addr` (with or without a trailing `/p2p/<peer>`) is one of this node's own.
    fn is_own(&self, addr: &Multiaddr) -> bool {
        self.own.contains(&normal(addr))
    }

    fn note<U, E>(&mut self, event: &TransportEvent<U, E>) {
        match event {
            TransportEvent::NewAddress { listen_addr, .. } if self.own.len() < OWN_CAP => {
                self.own.insert(normal(listen_addr));
            }
            TransportEvent::AddressExpired { listen_addr, .. } => {
                self.own.remove(&normal(listen_addr));
            }
            _ => {}
        }
    }
}

/// `addr` without a trailing `/p2p/<peer>`, an IPv4-mapped IPv6 address as IPv4, and any
/// loopback address as `127.0.0.1` (or `::1`): a listener on every interface answers at
/// `127.0.0.2`, `::ffff:127.0.0.1` or `::ffff:192.168.1.10` too.
fn normal(addr: &Multiaddr) -> Multiaddr {
    let loopback_v4 = |ip: std::net::Ipv4Addr| ip.is_loopback().then_some(Ipv4Addr::LOCALHOST);
    addr.iter()
        .filter(|p| !matches!(p, AddrPart::P2p(_)))
        .map(|p| match p {
            AddrPart::Ip4(ip) => AddrPart::Ip4(loopback_v4(ip).unwrap_or(ip)),
            AddrPart::Ip6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => AddrPart::Ip4(loopback_v4(v4).unwrap_or(v4)),
                None if ip.is_loopback() => AddrPart::Ip6(Ipv6Addr::LOCALHOST),
                None => AddrPart::Ip6(ip),
            },
            other => other,
        })
        .collect()
}

impl<T: Transport + Unpin> Transport for NotSelf<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        if self.is_own(&addr) {
            tracing::debug!(%addr, "not dialing one of this node's own listen addresses");
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let event = ready!(Pin::new(&mut this.inner).poll(cx));
        this.note(&event);
        Poll::Ready(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::memory::MemoryTransport;
    use libp2p::core::transport::PortUse;
    use libp2p::core::Endpoint;

    fn opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    #[tokio::test]
    async fn own_listen_addresses_are_refused_and_others_dialed() {
        let mut t = NotSelf::new(MemoryTransport::default());
        let own: Multiaddr = "/memory/48213".parse().unwrap();
        t.listen_on(ListenerId::next(), own.clone()).unwrap();
        let event = futures::future::poll_fn(|cx| Pin::new(&mut t).poll(cx)).await;
        assert!(matches!(event, TransportEvent::NewAddress { .. }));
        let peer = "12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4";
        for refused in [own.clone(), format!("{own}/p2p/{peer}").parse().unwrap()] {
            assert!(matches!(
                t.dial(refused, opts()),
                Err(TransportError::MultiaddrNotSupported(_))
            ));
        }
        // The same address is dialable (the refusal is the wrapper's), and another node's
        // address is dialed.
        let mut plain = MemoryTransport::default();
        assert!(plain.dial(own, opts()).is_ok());
        let other: Multiaddr = "/memory/48214".parse().unwrap();
        plain.listen_on(ListenerId::next(), other.clone()).unwrap();
        assert!(t.dial(other, opts()).is_ok());
    }

    #[test]
    fn every_loopback_spelling_is_one_address() {
        let peer = "12D3KooWEzi8M8oWoAB5nMBfCNTcwd3HhY8BLU3E6igutByv9tq4";
        let at = |a: &str| normal(&a.parse().unwrap());
        let own = at("/ip4/127.0.0.1/tcp/7071");
        for same in [
            "/ip4/127.0.0.2/tcp/7071".to_owned(),
            format!("/ip4/127.9.9.9/tcp/7071/p2p/{peer}"),
            "/ip6/::ffff:127.0.0.1/tcp/7071".to_owned(),
        ] {
            assert_eq!(at(&same), own, "{same}");
        }
        assert_eq!(
            at("/ip6/::ffff:192.168.1.10/tcp/7071"),
            at("/ip4/192.168.1.10/tcp/7071")
        );
        let v6: Multiaddr = "/ip6/::1/udp/7071/quic-v1".parse().unwrap();
        assert_eq!(at("/ip6/::1/udp/7071/quic-v1"), v6);
        for other in [
            "/ip4/127.0.0.1/tcp/7072",
            "/ip4/10.0.0.1/tcp/7071",
            "/ip4/127.0.0.1/udp/7071/quic-v1",
        ] {
            assert_ne!(at(other), own, "{other}");
        }
    }
}
