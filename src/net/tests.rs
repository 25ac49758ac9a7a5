//! In-process multi-node tests on 127.0.0.1, with seeded keys and mDNS off.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol as AddrPart;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::*;

/// Longest wait for any one expected event.
const WAIT: Duration = Duration::from_secs(10);

struct TestNode {
    client: Client,
    events: mpsc::Receiver<Event>,
}

impl TestNode {
    fn id(&self) -> PeerId {
        self.client.local_peer_id()
    }

    /// Waits for the first event `pick` accepts, skipping the others.
    async fn next<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let wait = async {
            while let Some(event) = self.events.recv().await {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            panic!("event channel closed");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("timed out waiting for an event")
    }

    async fn tcp_addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.iter().last() == Some(AddrPart::P2p(self.id()))));
        addrs
            .into_iter()
            .find(|a| a.iter().any(|p| matches!(p, AddrPart::Tcp(_))))
            .expect("a tcp listen address")
    }

    async fn set_members(&self, members: &[PeerId]) {
        let members: HashSet<PeerId> = members.iter().copied().collect();
        self.client.set_members(members).await.unwrap();
    }

    async fn up(&mut self, peer: PeerId) -> Instant {
        self.next(|e| matches!(e, Event::PeerUp { peer: p, .. } if p == peer).then(Instant::now))
            .await
    }

    async fn down(&mut self, peer: PeerId) -> Instant {
        self.next(|e| matches!(e, Event::PeerDown { peer: p } if p == peer).then(Instant::now))
            .await
    }

    /// Answers the next request from `peer` on `protocol` with `answer`; returns its frame.
    async fn answer(&mut self, peer: PeerId, protocol: Protocol, answer: &[u8]) -> Frame {
        let (frame, reply) = self
            .next(|e| match e {
                Event::Request {
                    peer: p,
                    protocol: q,
                    frame,
                    reply,
                    ..
                } if p == peer && q == protocol => Some((frame, reply)),
                _ => None,
            })
            .await;
        reply.send(Frame(answer.to_vec())).unwrap();
        frame
    }

    async fn bad_input(&mut self, peer: PeerId, protocol: Protocol) -> String {
        self.next(|e| match e {
            Event::BadInput {
                peer: p,
                protocol: q,
                detail,
            } if p == peer && q == protocol => Some(detail),
            _ => None,
        })
        .await
    }

    async fn info(&self, peer: PeerId) -> Option<PeerInfo> {
        let peers = self.client.peers().await.unwrap();
        peers.into_iter().find(|i| i.peer == peer.to_base58())
    }
}

fn test_config() -> Config {
    Config {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ],
        mdns: false,
        ..Config::default()
    }
}

fn start(n: u8, config: Config) -> TestNode {
    let key = Keypair::ed25519_from_bytes([n; 32]).unwrap();
    let (client, events) = spawn(key, config).unwrap();
    TestNode { client, events }
}

/// `a` dials `b`; waits until both see the other up.
async fn connect(a: &mut TestNode, b: &mut TestNode) {
    a.client.dial(b.tcp_addr().await).await.unwrap();
    a.up(b.id()).await;
    b.up(a.id()).await;
}

/// Two nodes on each other's roster, connected.
async fn member_pair(na: u8, nb: u8) -> (TestNode, TestNode) {
    let (mut a, mut b) = (start(na, test_config()), start(nb, test_config()));
    a.set_members(&[b.id()]).await;
    b.set_members(&[a.id()]).await;
    connect(&mut a, &mut b).await;
    (a, b)
}

#[tokio::test]
async fn members_exchange_a_sync_request_and_its_answer() {
    let (a, mut b) = member_pair(1, 2).await;
    let a_id = a.id();
    let hinted = b
        .next(|e| match e {
            Event::Discovered { peer, addrs } if peer == a_id => Some(addrs),
            _ => None,
        })
        .await;
    assert!(!hinted.is_empty(), "identify yields A's listen addresses");
    let (client, b_id) = (a.client.clone(), b.id());
    let asking = tokio::spawn(async move {
        client
            .request(b_id, Protocol::Sync, Frame(b"digest".to_vec()))
            .await
    });
    let got = b.answer(a.id(), Protocol::Sync, b"vectors").await;
    assert_eq!(got, Frame(b"digest".to_vec()));
    let answer = tokio::time::timeout(WAIT, asking).await.unwrap().unwrap();
    assert_eq!(answer.unwrap(), Frame(b"vectors".to_vec()));
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn non_member_may_only_join_and_is_dropped_after_the_join_window() {
    let window = Duration::from_millis(500);
    let a = start(3, test_config());
    let mut b = start(
        4,
        Config {
            join_window: window,
            ..test_config()
        },
    );
    // An invitation is outstanding at b: strangers may connect to redeem it.
    let open = std::time::Instant::now() + Duration::from_secs(60);
    b.client.accept_strangers(open).await.unwrap();
    // The window is measured from the dial: the connection cannot be older than that, while the
    // test may see the "up" event late on a loaded machine.
    let dialed = std::time::Instant::now();
    a.client.dial(b.tcp_addr().await).await.unwrap();
    b.up(a.id()).await;

    let (client, b_id) = (a.client.clone(), b.id());
    let joining = tokio::spawn(async move {
        client
            .request(b_id, Protocol::Join, Frame(b"hi".to_vec()))
            .await
    });
    assert_eq!(
        b.answer(a.id(), Protocol::Join, b"welcome").await,
        Frame(b"hi".to_vec())
    );
    let joined = tokio::time::timeout(WAIT, joining).await.unwrap().unwrap();
    assert_eq!(joined.unwrap(), Frame(b"welcome".to_vec()));

    let (client, b_id) = (a.client.clone(), b.id());
    let syncing = tokio::spawn(async move {
        client
            .request(b_id, Protocol::Sync, Frame(b"x".to_vec()))
            .await
    });
    let detail = b.bad_input(a.id(), Protocol::Sync).await;
    assert!(detail.contains("non-member"), "{detail}");
    let refused = tokio::time::timeout(WAIT, syncing).await.unwrap().unwrap();
    assert!(refused.is_err(), "a non-member's sync must not be answered");

    let dropped = b.down(a.id()).await;
    assert!(
        dropped.duration_since(dialed) >= window,
        "dropped before the window"
    );
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn oversize_push_is_bad_input_and_repeat_offender_is_dropped() {
    let (a, mut b) = member_pair(5, 6).await;
    let oversize = Frame(vec![0; MAX_PUSH_BYTES + 1]);
    let refused = a
        .client
        .request(b.id(), Protocol::Push, oversize.clone())
        .await;
    assert!(
        matches!(refused, Err(Error::TooLarge { .. })),
        "{refused:?}"
    );

    let push_oversize = |client: Client, to: PeerId, frame: Frame| {
        tokio::spawn(async move { client.request_unchecked(to, Protocol::Push, frame).await })
    };
    let first = push_oversize(a.client.clone(), b.id(), oversize.clone());
    let detail = b.bad_input(a.id(), Protocol::Push).await;
    assert!(detail.contains("cap"), "{detail}");
    let sent = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert!(sent.is_err(), "an oversize push must not be answered");

    // Still up and answering after one bad frame.
    let (client, b_id) = (a.client.clone(), b.id());
    let asking = tokio::spawn(async move {
        client
            .request(b_id, Protocol::Sync, Frame(b"ok?".to_vec()))
            .await
    });
    b.answer(a.id(), Protocol::Sync, b"ok").await;
    let answer = tokio::time::timeout(WAIT, asking).await.unwrap().unwrap();
    assert_eq!(answer.unwrap(), Frame(b"ok".to_vec()));

    for _ in 1..BAD_INPUT_LIMIT {
        push_oversize(a.client.clone(), b.id(), oversize.clone());
        b.bad_input(a.id(), Protocol::Push).await;
    }
    b.down(a.id()).await;
    let info = b.info(a.id()).await.expect("a member is listed");
    assert_eq!(info.bad_inputs, BAD_INPUT_LIMIT);
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn peers_shows_up_with_rtt_then_down_after_shutdown() {
    let (mut a, b) = member_pair(7, 8).await;
    let b_id = b.id();
    let wait = async {
        loop {
            match a.info(b_id).await {
                Some(info) if info.up && info.rtt_ms.is_some() => return info,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let info = tokio::time::timeout(WAIT, wait).await.expect("no ping rtt");
    assert!(info.member);
    assert!(!info.addrs.is_empty(), "the dialed address is remembered");
    assert!(info.last_seen_ms.is_some());

    b.client.shutdown().await;
    assert!(
        b.client.peers().await.is_err(),
        "the loop is gone after shutdown"
    );
    a.down(b_id).await;
    let info = a.info(b_id).await.expect("a member stays listed");
    assert!(info.member && !info.up);
    a.client.shutdown().await;
}

#[tokio::test]
async fn member_is_reconnected_after_each_disconnect() {
    let (mut a, mut b) = member_pair(9, 10).await;
    // Each reconnect is the redial backoff's.
    for _ in 0..2 {
        b.client.disconnect(a.id()).await.unwrap();
        let down = a.down(b.id()).await;
        let up = a.up(b.id()).await;
        assert!(up > down);
        b.up(a.id()).await;
    }
    let info = a.info(b.id()).await.expect("a member is listed");
    assert!(info.up);
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn member_is_redialed_when_it_comes_back() {
    let (mut a, b) = member_pair(11, 12).await;
    let b_id = b.id();
    let tcp = b.tcp_addr().await;
    b.client.shutdown().await;
    a.down(b_id).await;
    // Same key, same port, no roster: only A's redial can bring the connection back.
    let bare = peers::split_p2p(&tcp).1;
    let b = start(
        12,
        Config {
            listen: vec![bare],
            ..test_config()
        },
    );
    a.up(b_id).await;
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn traffic_counts_transport_bytes_and_frames_per_protocol() {
    let meter = Meter::new();
    let mut a = start(
        13,
        Config {
            meter: Some(meter.clone()),
            ..test_config()
        },
    );
    let mut b = start(14, test_config());
    a.set_members(&[b.id()]).await;
    b.set_members(&[a.id()]).await;
    connect(&mut a, &mut b).await;
    let before = a.client.traffic();
    assert!(before.dialed == 1 && before.inbound > 0 && before.outbound > 0);
    let (client, b_id) = (a.client.clone(), b.id());
    let asking = tokio::spawn(async move {
        client
            .request(b_id, Protocol::Sync, Frame(vec![7; 1000]))
            .await
    });
    b.answer(a.id(), Protocol::Sync, &[9; 3000]).await;
    tokio::time::timeout(WAIT, asking)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let t = a.client.traffic().since(&before);
    // The meter given in the config is the one the client reads.
    assert_eq!(meter.traffic().sync, a.client.traffic().sync);
    assert_eq!((t.sync.requests_out, t.sync.responses_in), (1, 1));
    assert_eq!((t.sync.requests_in, t.sync.responses_out), (0, 0));
    // CBOR adds a few header bytes to each frame.
    assert!((1000..1010).contains(&t.sync.bytes_out), "{t:?}");
    assert!((3000..3010).contains(&t.sync.bytes_in), "{t:?}");
    assert_eq!(t.push, FrameTraffic::default());
    // The transport carries the frames plus Noise, yamux and multistream-select.
    assert!(
        t.outbound > t.sync.bytes_out && t.inbound > t.sync.bytes_in,
        "{t:?}"
    );
    let tb = b.client.traffic();
    assert_eq!((tb.sync.requests_in, tb.sync.responses_out), (1, 1));
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn a_member_is_dialed_over_one_connection_not_one_per_address_form() {
    // Identify and request-response hand the swarm addresses ending in /p2p; the peer table's addresses
    // must be given in the same form, or the swarm dials the same socket twice at once.
    let mut a = start(15, test_config());
    let meter = Meter::new();
    let mut b = start(
        16,
        Config {
            meter: Some(meter.clone()),
            ..test_config()
        },
    );
    a.set_members(&[b.id()]).await;
    let tcp = a.tcp_addr().await;
    b.client.add_address(a.id(), tcp).await.unwrap();
    b.set_members(&[a.id()]).await;
    b.up(a.id()).await;
    a.up(b.id()).await;
    // Time for a second, concurrent dial to complete its TCP connect if one was started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = meter.traffic();
    assert_eq!((t.dialed, t.accepted), (1, 0), "{t:?}");
    assert_eq!(a.client.traffic().accepted, 1);
    a.client.shutdown().await;
    b.client.shutdown().await;
}

#[tokio::test]
async fn a_stranger_is_refused_at_once_when_no_invitation_is_outstanding() {
    let a = start(5, test_config());
    let mut b = start(6, test_config());
    a.client.dial(b.tcp_addr().await).await.unwrap();
    let answer = a
        .client
        .request(b.id(), Protocol::Join, Frame(b"hi".to_vec()))
        .await;
    assert!(answer.is_err(), "{answer:?}");
    let peers = b.client.peers().await.unwrap();
    assert!(
        !peers.iter().any(|p| p.peer == a.id().to_string() && p.up),
        "{peers:?}"
    );
    let delivered = tokio::time::timeout(Duration::from_millis(300), async {
        while let Some(e) = b.events.recv().await {
            if matches!(e, Event::Request { .. }) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        !matches!(delivered, Ok(true)),
        "a stranger's request was delivered"
    );
}

/// Polls `cond` every 100 ms for up to `limit`; whether it held.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The relayed (`/p2p-circuit`) listen address of `node`, once it has one.
async fn circuit_addr(node: &TestNode, limit: Duration) -> Option<Multiaddr> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let addrs = node.client.listen_addrs().await.unwrap();
        if let Some(a) = addrs
            .into_iter()
            .find(|a| a.iter().any(|p| p == AddrPart::P2pCircuit))
        {
            return Some(a);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn a_member_reached_through_a_relay_is_then_hole_punched_and_strangers_get_no_reservation() {
    let relay = start(
        20,
        Config {
            serve_relay: Some(RelayLimits::default()),
            ..test_config()
        },
    );
    let relay_addr = relay.tcp_addr().await;
    let with_relay = || Config {
        relays: vec![relay_addr.clone()],
        ..test_config()
    };
    let (a, mut b) = (start(21, with_relay()), start(22, test_config()));
    let stranger = start(23, with_relay());
    for (node, others) in [
        (&relay, [a.id(), b.id()]),
        (&a, [relay.id(), b.id()]),
        (&b, [relay.id(), a.id()]),
    ] {
        node.set_members(&others).await;
    }
    let circuit = circuit_addr(&a, WAIT)
        .await
        .expect("A's reservation at the relay");
    // B knows A only at its relayed address.
    b.client.dial(circuit.clone()).await.unwrap();
    let first = b
        .next(|e| match e {
            Event::PeerUp { peer, addr } if peer == a.id() => Some(addr),
            _ => None,
        })
        .await;
    assert!(
        first.iter().any(|p| p == AddrPart::P2pCircuit),
        "B first reached A through the relay, at {first}"
    );
    // A punch round on a loaded machine (a whole test suite beside it) has taken over 10 s.
    let punched = eventually(3 * WAIT, || async {
        b.info(a.id()).await.and_then(|i| i.connection) == Some(Connection::HolePunched)
    })
    .await;
    assert!(
        punched,
        "DCUtR turned the relayed connection into a direct one"
    );
    assert_eq!(
        a.info(b.id()).await.and_then(|i| i.connection),
        Some(Connection::HolePunched)
    );
    // The relay serves members only: the stranger's reservation is refused.
    assert_eq!(circuit_addr(&stranger, Duration::from_secs(3)).await, None);
    for node in [relay, a, b, stranger] {
        node.client.shutdown().await;
    }
}

/// The TCP port of `addr`.
fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        AddrPart::Tcp(port) => Some(port),
        _ => None,
    })
}

#[tokio::test]
async fn the_first_dial_leaves_from_the_listen_port() {
    // A NAT in front of a node most likely keeps the port a connection leaves from: from the
    // listen port, members learn an address that takes them back to the node (and a hole
    // punch offers it); from an ephemeral port, they learn nothing of use. Listening on every
    // interface, as members do, the listener reports its addresses only once it has polled
    // the interfaces, and a dial that leaves before that leaves from an ephemeral port.
    let tcp_only = || Config {
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
        ..test_config()
    };
    let mut a = start(30, tcp_only());
    let b_id = Keypair::ed25519_from_bytes([31; 32])
        .unwrap()
        .public()
        .to_peer_id();
    a.set_members(&[b_id]).await;
    let b = start(
        31,
        Config {
            bootstrap: vec![a.tcp_addr().await],
            ..tcp_only()
        },
    );
    let from = a
        .next(|e| match e {
            Event::PeerUp { peer, addr } if peer == b_id => Some(addr),
            _ => None,
        })
        .await;
    let listening = b.tcp_addr().await;
    assert_eq!(
        tcp_port(&from),
        tcp_port(&listening),
        "{from} vs {listening}"
    );
    a.client.shutdown().await;
    b.client.shutdown().await;
}
