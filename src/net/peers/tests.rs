//! Unit tests of the peer table and its backoff.

use super::*;
use libp2p::identity::Keypair;

fn peer(n: u8) -> PeerId {
    Keypair::ed25519_from_bytes([n; 32])
        .unwrap()
        .public()
        .to_peer_id()
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

#[test]
fn backoff_doubles_from_one_second_to_sixty() {
    let t0 = Instant::now();
    let mut b = Backoff::default();
    b.schedule(t0);
    assert!(!b.take_due(t0), "not due before the first delay");
    let mut now = t0 + BACKOFF_MIN;
    let mut delays = Vec::new();
    for _ in 0..8 {
        assert!(b.take_due(now));
        delays.push(b.delay.as_secs());
        now += b.delay;
    }
    assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
    b.reset();
    assert_eq!(b, Backoff::default());
}

#[test]
fn new_member_is_due_at_once_and_redials_back_off() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    let (added, removed) = table.set_members([peer(0), peer(1)].into(), t0);
    assert_eq!(
        (added, removed),
        (vec![peer(1)], vec![]),
        "local peer is never a member"
    );
    assert_eq!(table.due_redials(t0).len(), 1);
    assert!(table
        .due_redials(t0 + Duration::from_millis(1999))
        .is_empty());
    assert_eq!(table.due_redials(t0 + Duration::from_secs(2)).len(), 1);
}

#[test]
fn up_down_bookkeeping_and_redial_after_loss() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    table.connected(peer(1), Some(addr(1)), t0);
    assert!(table.is_up(&peer(1)));
    assert!(
        table.due_redials(t0 + BACKOFF_MAX).is_empty(),
        "up members are not redialed"
    );
    table.record_rtt(&peer(1), Duration::from_millis(3), t0);
    let t1 = t0 + Duration::from_secs(5);
    table.disconnected(peer(1), t1);
    assert!(!table.is_up(&peer(1)));
    assert!(table.due_redials(t1).is_empty());
    let due = table.due_redials(t1 + BACKOFF_MIN);
    assert_eq!(due, vec![(peer(1), vec![addr(1)])]);
    let infos = table.infos(t1, SystemTime::now());
    assert_eq!(infos.len(), 1);
    assert!(infos[0].member && !infos[0].up);
    assert_eq!(infos[0].rtt_ms, Some(3.0));
    assert!(infos[0].last_seen_ms.is_some());
}

#[test]
fn bad_member_is_redialed_only_after_the_longest_delay() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    table.connected(peer(1), None, t0);
    for n in 1..=BAD_INPUT_LIMIT {
        assert_eq!(table.bad_input(peer(1), t0), n);
    }
    table.disconnected(peer(1), t0);
    assert!(table.due_redials(t0 + BACKOFF_MAX / 2).is_empty());
    assert_eq!(table.due_redials(t0 + BACKOFF_MAX).len(), 1);
}

#[test]
fn non_members_expire_after_the_join_window_and_are_not_listed_when_down() {
    let t0 = Instant::now();
    let window = Duration::from_millis(300);
    let mut table = PeerTable::new(peer(0));
    table.connected(peer(2), None, t0);
    assert_eq!(table.infos(t0, SystemTime::now()).len(), 1);
    assert!(table
        .expired_non_members(t0 + window / 2, window)
        .is_empty());
    assert_eq!(
        table.expired_non_members(t0 + window, window),
        vec![peer(2)]
    );
    table.set_members([peer(2)].into(), t0);
    assert!(table.expired_non_members(t0 + window, window).is_empty());
    table.set_members(HashSet::new(), t0);
    table.disconnected(peer(2), t0 + window);
    assert!(table.infos(t0 + window, SystemTime::now()).is_empty());
    assert!(
        table.due_redials(t0 + BACKOFF_MAX).is_empty(),
        "non-members are not redialed"
    );
}

#[test]
fn addresses_are_deduplicated_capped_and_stripped_of_p2p() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    let with_id = addr(1).with(AddrPart::P2p(peer(1)));
    assert_eq!(
        table.add_addrs(peer(1), [with_id, addr(2)], t0),
        vec![addr(1), addr(2)]
    );
    assert!(table.add_addrs(peer(1), [addr(1)], t0).is_empty());
    table.add_addrs(peer(1), (10..30).map(addr), t0);
    assert_eq!(table.addrs(&peer(1)).len(), MAX_ADDRS_PER_PEER);
    assert!(
        table.add_addrs(peer(0), [addr(3)], t0).is_empty(),
        "own addresses ignored"
    );
}

#[test]
fn new_address_of_down_member_makes_redial_due() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    table.due_redials(t0);
    assert!(table.due_redials(t0).is_empty());
    table.add_addrs(peer(1), [addr(5)], t0);
    assert_eq!(table.due_redials(t0), vec![(peer(1), vec![addr(5)])]);
}

#[test]
fn strangers_are_evicted_so_the_table_stays_bounded() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    table.connected(peer(2), None, t0);
    for _ in 0..MAX_PEERS + 10 {
        let stranger = PeerId::random();
        table.connected(stranger, None, t0);
        table.bad_input(stranger, t0);
        table.disconnected(stranger, t0);
    }
    assert_eq!(table.entries.len(), MAX_PEERS);
    assert!(table.entries.contains_key(&peer(1)), "members are kept");
    assert!(table.is_up(&peer(2)), "connected peers are kept");
}

#[test]
fn split_p2p_separates_peer_from_address() {
    let full = addr(7).with(AddrPart::P2p(peer(3)));
    assert_eq!(split_p2p(&full), (Some(peer(3)), addr(7)));
    assert_eq!(split_p2p(&addr(7)), (None, addr(7)));
}

#[test]
fn a_peer_quiet_long_enough_starts_again_from_zero() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    assert_eq!(table.bad_input(peer(1), t0), 1);
    assert_eq!(table.bad_input(peer(1), t0 + BAD_INPUT_FORGET / 2), 2);
    let later = t0 + BAD_INPUT_FORGET / 2 + BAD_INPUT_FORGET;
    assert_eq!(
        table.bad_input(peer(1), later),
        1,
        "forgiven after a quiet spell"
    );
}

#[test]
fn connections_closed_at_once_slow_redials_down_and_a_stable_one_resets_them() {
    let t0 = Instant::now();
    let mut table = PeerTable::new(peer(0));
    table.set_members([peer(1)].into(), t0);
    // A member that accepts and closes at once (it removed us): each redial waits longer.
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        let due = (0..=120_000u64)
            .step_by(250)
            .map(|ms| now + Duration::from_millis(ms))
            .find(|t| !table.due_redials(*t).is_empty())
            .expect("a redial is due");
        waits.push(due.duration_since(now).as_secs());
        table.connected(peer(1), Some(addr(1)), due);
        now = due + Duration::from_millis(50);
        table.disconnected(peer(1), now);
    }
    assert_eq!(waits, [0, 2, 4, 8, 16, 32, 60], "{waits:?}");
    // A connection that lasts resets the backoff: the next outage is redialed after 1 s.
    let due = now + BACKOFF_MAX;
    assert!(!table.due_redials(due).is_empty());
    table.connected(peer(1), Some(addr(1)), due);
    let later = due + STABLE_CONNECTION;
    table.disconnected(peer(1), later);
    assert!(table.due_redials(later + BACKOFF_MIN).len() == 1);
}
