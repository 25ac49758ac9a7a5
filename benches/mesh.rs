//! Mesh benchmark: prints figures, asserts nothing about time.
//!
//! ```text
//! cargo bench --bench mesh                              # full run: ~1.5 min on 2 cores + build
//! FOGMESH_BENCH_QUICK=1 cargo bench --bench mesh        # every size shrunk 10x
//! FOGMESH_BENCH_ONLY=latency cargo bench --bench mesh   # one part: latency, reconnect, catchup, fanout or priority
//! FOGMESH_BENCH_FANOUT=5,20,50 cargo bench --bench mesh  # the mesh sizes of part 4 (default 5,20)
//! ```
//!
//! Every node runs in this process, on 127.0.0.1 over TCP, mDNS off, each in a temporary home.
//! Transport bytes are counted at the TCP sockets of each node's networking actor
//! (`net::Config::meter`, `net::Traffic`): Noise, yamux, multistream-select, identify, ping,
//! AutoNAT and the fogmesh protocols; the fogmesh frames among them are counted by the codec.
//!
//! 1. Write-to-visible latency in a 5-node mesh: node 0 publishes single-record batches
//!    (`Node::publish`, durable) one after the other; each of the other 4 timestamps the record's
//!    `upsert` event on its `Node::subscribe` receiver. Baseline: a raw libp2p request-response
//!    round trip (tiny frame, echoed) between two `net` actors. For diagnosis: the same with 2
//!    nodes, and the receiver's share alone (`Node::apply_envelopes` of the same envelopes on a
//!    node without a mesh that has a receiver's identity, so it unwraps the epoch key and opens
//!    the sealed payloads as that receiver does). Then (1e) encryption on and off: the 5-node
//!    figure again on a dataset kept in clear (`encrypted: Some(false)`) and on a sealed one,
//!    order alternating, compared with the sealed run above.
//! 2. Catch-up: node B's mesh is stopped while node A writes records of 100 B..1 KiB data in
//!    batches of 100; then B's mesh starts and the time until B holds them all is measured, with
//!    the transport bytes between A and B over the envelope payload (Automerge change) bytes.
//!    Baseline: Automerge's own sync protocol bringing an empty document up to A's state. For
//!    diagnosis: the same envelopes applied in Fetch-sized pages with no network, and one
//!    single-record change applied to the full document alone and through fogmesh's `view::doc::apply` (which also finds the touched records).
//!    Then (1c) single-record write-to-visible latency on that pair, at the long history.
//! 3. Reconnect when in sync: B's mesh is restarted (same port, node kept open); transport bytes
//!    from connect until the first catch-up round (both sides' Hello) is complete, at a short
//!    history (3a) and at the catch-up's long one (3b).
//!
//! 4. Fan-out by mesh size (today's direct push: the writer sends each envelope itself to every
//!    member it is connected to): node 0 of a mesh of N nodes publishes single-record batches;
//!    write-to-visible at a receiver and at all, the writer's push bytes per record against the
//!    envelope's size, and a receiver's transport bytes per record, at each N of
//!    `FOGMESH_BENCH_FANOUT`.
//!
//! 5. Priorities under load: B catches up a low-priority dataset while A writes to a high- and
//!    a low-priority one; write-to-visible at B of each, beside the same writes when idle
//!    (`benches/mesh/priority.rs`).
//!
//! Unless said otherwise the dataset is shared with the other nodes and sealed (the default for a
//! shared dataset: XChaCha20-Poly1305 under an epoch key wrapped for each reader's node).

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses part of it
mod common;
#[path = "mesh/plot.rs"]
mod plot;
#[path = "mesh/priority.rs"]
mod priority;
use common::stats::{ms, thousands, Dist};
use common::wait::wait_for;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use automerge::sync::{self as am_sync, SyncDoc};
use automerge::{Automerge, Change};
use common::{pad_with_notes, Rng};
use libp2p::PeerId;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use fogmesh::access::seal;
use fogmesh::apps::App;
use fogmesh::config::{Config, PushMode};
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::envelope::Envelope;
use fogmesh::identity::Identity;
use fogmesh::mesh::{self, Mesh};
use fogmesh::naming::DatasetId;
use fogmesh::net::{self, Frame, Meter, Protocol, Traffic};
use fogmesh::node::{home, Batch, Event};
use fogmesh::record::Input;
use fogmesh::view::doc;
use fogmesh::Node;

/// Latency targets.
const TARGET_P50: Duration = Duration::from_millis(2);
const TARGET_P99: Duration = Duration::from_millis(10);
/// Most that sealing may add to the write-to-visible p50.
const TARGET_SEAL_P50: Duration = Duration::from_micros(500);
/// Catch-up targets.
const TARGET_CATCHUP: Duration = Duration::from_secs(2);
/// Part 4: the writer's push bytes per record over the envelope, with trees, at every size.
const TARGET_WRITER_X: f64 = 4.0;
/// Part 4: write-to-visible p99 at every receiver of a 50-node mesh, with trees.
const TARGET_FANOUT_P99: Duration = Duration::from_millis(50);
const TARGET_WIRE_RATIO: f64 = 1.10;
/// Reconnect target, bytes both ways.
const TARGET_RECONNECT: u64 = 4 * 1024;

const ORGS: [&str; 5] = ["hospital", "pharmacy", "drugmaker", "agency", "insurer"];
/// Longest wait for setup steps (roster, connections, datasets).
const SETUP: Duration = Duration::from_secs(60);
/// Longest wait for one record to become visible everywhere.
const VISIBLE: Duration = Duration::from_secs(10);
/// A catch-up that makes no progress for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(60);

/// How many of everything.
#[derive(Debug, Clone)]
struct Sizes {
    quick: bool,
    warmup: usize,
    latency: usize,
    rtt: usize,
    catchup: usize,
    short_history: usize,
    /// Single-record publishes timed on the pair that holds the catch-up's records.
    late_latency: usize,
    /// `FOGMESH_BENCH_ONLY`: run one figure (`latency`, `reconnect`, `catchup`, `fanout` or
    /// `priority`).
    only: Option<String>,
    /// `FOGMESH_BENCH_FANOUT`: the mesh sizes of the fan-out part.
    fanout: Vec<usize>,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("FOGMESH_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        let div = if quick { 10 } else { 1 };
        Self {
            quick,
            warmup: 50,
            latency: 1_000 / div,
            rtt: 2_000 / div,
            catchup: 100_000 / div,
            short_history: 1_000 / div,
            late_latency: 50,
            only: std::env::var("FOGMESH_BENCH_ONLY").ok(),
            fanout: std::env::var("FOGMESH_BENCH_FANOUT")
                .ok()
                .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![5, 20]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// Record `i`'s data: a few fields plus free text, `size` bytes of JSON (100 ..= 1024).
fn record_data(i: u64, size: usize, rng: &mut Rng) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(i));
    m.insert("age".into(), json!(i * 7 % 90));
    m.insert(
        "triage".into(),
        json!(["urgent", "standard", "low"][(i % 3) as usize]),
    );
    pad_with_notes(&mut m, size, rng);
    m
}

/// Record `i`, with a data size drawn uniformly from 100 ..= 1024 bytes.
fn record(i: u64, id: Option<String>, rng: &mut Rng) -> Input {
    let size = 100 + (rng.next() % 925) as usize;
    Input {
        id,
        name: format!("district-{}/ward-{}/admission", i % 64, (i / 64) % 16),
        data: Value::Object(record_data(i, size, rng)),
        time: None,
    }
}

fn batch(records: Vec<Input>) -> Batch {
    Batch {
        records,
        delete: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn node_config(org: &str, port: u16, push: PushMode) -> Config {
    Config {
        org: org.into(),
        mesh: "bench-mesh".into(),
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}")],
        mdns: false,
        push,
        ..Config::default()
    }
}

/// How every node pushes but the direct writer of part 4.
fn default_push() -> PushMode {
    Config::default().push
}

/// A port that was free a moment ago, so that a restarted mesh listens where its peers knew it.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One node in a temporary home, with its mesh (when running) and the mesh's traffic meter.
struct Member {
    org: &'static str,
    /// Identity seed (`Identity::from_seed([seed; 32])`).
    seed: u8,
    port: u16,
    /// `Config::push`: along trees, or to every member.
    push: PushMode,
    node: Node,
    admin: App,
    mesh: Option<Mesh>,
    meter: Meter,
    peer: PeerId,
    _dir: tempfile::TempDir,
}

impl Member {
    async fn new(org: &'static str, seed: u8) -> Result<Self> {
        Self::with_push(org, seed, default_push()).await
    }

    async fn with_push(org: &'static str, seed: u8, push: PushMode) -> Result<Self> {
        let dir = tempfile::tempdir().context("tempdir")?;
        let port = free_port()?;
        let id = Identity::from_seed([seed; 32]);
        let peer = id.peer_id()?;
        home::init_with(dir.path(), node_config(org, port, push), id)
            .await
            .context("init")?;
        let node = Node::open_home(dir.path(), node_config(org, port, push)).context("open")?;
        let admin = node.authenticate(&home::admin_token(dir.path())?)?;
        let mut m = Self {
            org,
            seed,
            port,
            push,
            node,
            admin,
            mesh: None,
            meter: Meter::new(),
            peer,
            _dir: dir,
        };
        m.start().await?;
        Ok(m)
    }

    fn mesh(&self) -> &Mesh {
        self.mesh.as_ref().expect("mesh running")
    }

    /// Starts the mesh with a fresh traffic meter; returns once it listens.
    async fn start(&mut self) -> Result<()> {
        let meter = Meter::new();
        let cfg = net::Config {
            meter: Some(meter.clone()),
            ..mesh::net_config(&node_config(self.org, self.port, self.push))?
        };
        let mesh = Mesh::start(self.node.clone(), cfg).await?;
        let listen = mesh.status().await?.listen;
        ensure!(!listen.is_empty(), "{} does not listen", self.org);
        self.mesh = Some(mesh);
        self.meter = meter;
        Ok(())
    }

    /// Stops the mesh; the node stays open.
    async fn stop(&mut self) {
        if let Some(mesh) = self.mesh.take() {
            mesh.shutdown().await;
        }
    }

    fn records(&self, ds: &DatasetId) -> usize {
        self.node
            .datasets(&self.admin)
            .iter()
            .find(|d| d.meta.id == *ds)
            .map_or(0, |d| d.records)
    }

    fn holds(&self, ds: &DatasetId) -> bool {
        self.node
            .datasets(&self.admin)
            .iter()
            .any(|d| d.meta.id == *ds)
    }

    /// Whether `other` is connected, as this node's network layer sees it.
    async fn sees_up(&self, other: &PeerId) -> bool {
        let other = other.to_string();
        match &self.mesh {
            Some(m) => m
                .peers()
                .await
                .is_ok_and(|ps| ps.iter().any(|p| p.net.peer == other && p.net.up)),
            None => false,
        }
    }

    async fn shutdown(mut self) {
        self.stop().await;
    }
}

/// A dataset shared with `readers`; `encrypted: None` is the default (sealed for a shared one).
fn shared_spec(name: &str, readers: &[&str], encrypted: Option<bool>) -> Spec {
    Spec {
        name: name.into(),
        visibility: Visibility::Shared,
        priority: Priority::Normal,
        retention: Retention::default(),
        schema: None,
        readers: readers.iter().map(|r| (*r).to_owned()).collect(),
        encrypted,
    }
}

/// `orgs.len()` members of one mesh. The first founds it and creates a dataset shared with all the
/// others (before they join, so each receives it in the catch-up that follows its join); each
/// other one joins by invitation. Returns once every member holds the dataset (and, when it is
/// sealed, its epoch key) and is connected to every other.
async fn spawn_mesh(
    orgs: &[&'static str],
    seed: u8,
    dataset: &str,
    encrypted: Option<bool>,
) -> Result<(Vec<Member>, DatasetId)> {
    spawn_mesh_with(orgs, seed, dataset, encrypted, default_push()).await
}

/// [`spawn_mesh`] with the first member's `Config::push` set.
async fn spawn_mesh_with(
    orgs: &[&'static str],
    seed: u8,
    dataset: &str,
    encrypted: Option<bool>,
    first_push: PushMode,
) -> Result<(Vec<Member>, DatasetId)> {
    let first = Member::with_push(orgs[0], seed, first_push).await?;
    let meta = first
        .node
        .create_dataset(&first.admin, shared_spec(dataset, &orgs[1..], encrypted))
        .await?;
    ensure!(
        meta.encrypted == encrypted.unwrap_or(true),
        "{dataset}: created with encrypted = {}",
        meta.encrypted
    );
    let (ds, sealed) = (meta.id, meta.encrypted);
    let mut all = vec![first];
    for (i, org) in orgs.iter().enumerate().skip(1) {
        let m = Member::new(org, seed + i as u8).await?;
        let (token, _) = all[0].mesh().invite(Duration::from_secs(600)).await?;
        m.mesh().join(&token).await?;
        all.push(m);
    }
    let n = all.len();
    for m in &all {
        wait_for("the full roster", SETUP, || async move {
            m.mesh().status().await.is_ok_and(|s| s.members.len() == n)
        })
        .await?;
        let ds = &ds;
        wait_for("the dataset at every member", SETUP, || async move {
            m.holds(ds)
        })
        .await?;
        if sealed {
            wait_for("the epoch key at every member", SETUP, || async move {
                m.node.stored_keys(ds).is_ok_and(|k| !k.is_empty())
            })
            .await?;
        }
    }
    for m in &all {
        for other in all.iter().filter(|o| o.peer != m.peer) {
            let peer = &other.peer;
            wait_for("a full mesh of connections", SETUP, || async move {
                m.sees_up(peer).await
            })
            .await?;
        }
    }
    Ok((all, ds))
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "MISSES target"
    }
}

fn traffic_line(t: &Traffic) -> String {
    let f = t.frames();
    format!(
        "transport {} B (in {} / out {}; TCP connections dialed {}, accepted {}); fogmesh frames {} B \
         (sync {} B: {} req out/{} resp in, {} req in/{} resp out; push {} B; join {} B); \
         other (Noise, yamux, multistream, identify, ping, autonat) {} B",
        thousands(t.total()),
        thousands(t.inbound),
        thousands(t.outbound),
        t.dialed,
        t.accepted,
        thousands(f.bytes()),
        thousands(t.sync.bytes()),
        t.sync.requests_out,
        t.sync.responses_in,
        t.sync.requests_in,
        t.sync.responses_out,
        thousands(t.push.bytes()),
        thousands(t.join.bytes()),
        thousands(t.total().saturating_sub(f.bytes())),
    )
}

// ---------------------------------------------------------------------------------------------
// 1a. Raw libp2p round trip

async fn raw_rtt(samples: usize, warmup: usize) -> Result<(Dist, Traffic)> {
    let cfg = || net::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        mdns: false,
        ..net::Config::default()
    };
    let ka = libp2p::identity::Keypair::ed25519_from_bytes([101; 32])?;
    let kb = libp2p::identity::Keypair::ed25519_from_bytes([102; 32])?;
    let (a, mut a_events) = net::spawn(ka, cfg())?;
    let (b, mut b_events) = net::spawn(kb, cfg())?;
    a.set_members(HashSet::from([b.local_peer_id()])).await?;
    b.set_members(HashSet::from([a.local_peer_id()])).await?;
    // A drains its events; B echoes every request.
    tokio::spawn(async move { while a_events.recv().await.is_some() {} });
    let (up_tx, mut up_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = b_events.recv().await {
            match ev {
                net::Event::Request { frame, reply, .. } => {
                    let _ = reply.send(Frame(frame.0));
                }
                net::Event::PeerUp { peer, .. } => {
                    let _ = up_tx.send(peer);
                }
                _ => {}
            }
        }
    });
    let addr = b
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .context("b listens")?;
    a.dial(addr).await?;
    tokio::time::timeout(SETUP, up_rx.recv())
        .await
        .context("no connection")?;
    let peer = b.local_peer_id();
    let frame = Frame(b"hello, fogmesh!".to_vec());
    for _ in 0..warmup {
        a.request(peer, Protocol::Sync, frame.clone()).await?;
    }
    let before = a.traffic();
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let echo = a.request(peer, Protocol::Sync, frame.clone()).await?;
        lat.push(t.elapsed());
        ensure!(echo == frame, "echo differs");
    }
    let traffic = a.traffic().since(&before);
    a.shutdown().await;
    b.shutdown().await;
    Ok((Dist::new(lat), traffic))
}

// ---------------------------------------------------------------------------------------------
// 1b. Write-to-visible latency

struct Latency {
    /// Visible at every receiver, p50 over the first and the last tenth of the records.
    drift: (Duration, Duration),
    per_receiver: Dist,
    everywhere: Dist,
    publish: Dist,
    after_publish: Dist,
    lost: usize,
    push_bytes_per_record: f64,
    /// The writer's traffic over the timed records (after the warm-up).
    writer: Traffic,
    /// Each receiver's traffic over the timed records.
    received: Vec<Traffic>,
    /// Receiver-side cost alone: `Node::apply_envelopes` (durable) of each single-record envelope
    /// on a node without a mesh, p50 over the first and the last tenth, and overall.
    apply: Option<((Duration, Duration), Dist)>,
}

/// p50 of the first and of the last tenth of `v`, in order of measurement.
fn drift(v: &[Duration]) -> (Duration, Duration) {
    let tenth = (v.len() / 10).max(1);
    let first = Dist::new(v.iter().take(tenth).copied().collect()).p50();
    let last = Dist::new(v.iter().rev().take(tenth).copied().collect()).p50();
    (first, last)
}

/// Publishes `count` single-record batches on `src` one after the other (the first `warmup`
/// untimed), each once the previous one is visible at every receiver, and timestamps each record's
/// `upsert` event on every receiver's subscription.
async fn publish_and_watch(
    src: &Member,
    receivers: &[&Member],
    ds: &DatasetId,
    warmup: usize,
    count: usize,
    tag: &str,
) -> Result<Latency> {
    let n = receivers.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String, Instant)>();
    let mut subs = Vec::new();
    for (i, m) in receivers.iter().enumerate() {
        let mut sub = m.node.subscribe(&m.admin, ds)?;
        let tx = tx.clone();
        subs.push(tokio::spawn(async move {
            loop {
                match sub.recv().await {
                    Ok(ev) => {
                        let at = Instant::now();
                        if let Event::Upsert { record } = &*ev {
                            let _ = tx.send((i, record.id.clone(), at));
                        }
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
        }));
    }
    drop(tx);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut per_receiver, mut everywhere, mut publish, mut after_publish) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0;
    let mut push_before = None;
    let mut receivers_before = Vec::new();
    for k in 0..warmup + count {
        if k == warmup {
            push_before = Some(src.meter.traffic());
            receivers_before = receivers.iter().map(|m| m.meter.traffic()).collect();
        }
        let id = format!("{tag}-{k}");
        let rec = record(k as u64, Some(id.clone()), &mut rng);
        let t0 = Instant::now();
        src.node.publish(&src.admin, ds, batch(vec![rec])).await?;
        let published = t0.elapsed();
        let mut seen: Vec<Option<Duration>> = vec![None; n];
        let deadline = tokio::time::Instant::now() + VISIBLE;
        while seen.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, rid, at))) if rid == id => seen[i] = Some(at - t0),
                Ok(Some(_)) => {} // a late event of an earlier record
                Ok(None) => bail!("subscriptions ended"),
                Err(_) => break,
            }
        }
        if k < warmup {
            continue;
        }
        let got: Vec<Duration> = seen.iter().flatten().copied().collect();
        lost += n - got.len();
        publish.push(published);
        if got.len() == n {
            let all = got.iter().max().copied().unwrap_or_default();
            everywhere.push(all);
            after_publish.push(all.saturating_sub(published));
        }
        per_receiver.extend(got);
    }
    let writer = push_before
        .map(|b| src.meter.traffic().since(&b))
        .unwrap_or_default();
    let pushed = writer.push.bytes();
    let received = receivers
        .iter()
        .zip(&receivers_before)
        .map(|(m, b)| m.meter.traffic().since(b))
        .collect();
    for t in subs {
        t.abort();
    }
    Ok(Latency {
        drift: drift(&everywhere),
        per_receiver: Dist::new(per_receiver),
        everywhere: Dist::new(everywhere),
        publish: Dist::new(publish),
        after_publish: Dist::new(after_publish),
        lost,
        push_bytes_per_record: pushed as f64 / count.max(1) as f64,
        writer,
        received,
        apply: None,
    })
}

/// Node 0 of a mesh of `orgs.len()` nodes publishes on a dataset shared with the others
/// (`encrypted`: `None` for the default, sealed); every other node watches its events. Then, if
/// `probe`, the same envelopes are applied one by one on a node without a mesh that has node 1's
/// identity.
async fn latency(
    s: &Sizes,
    orgs: &[&'static str],
    seed: u8,
    probe: bool,
    encrypted: Option<bool>,
) -> Result<Latency> {
    let (nodes, ds) = spawn_mesh(orgs, seed, "flu-latency", encrypted).await?;
    let receivers: Vec<&Member> = nodes.iter().skip(1).collect();
    let mut l = publish_and_watch(&nodes[0], &receivers, &ds, s.warmup, s.latency, "lat").await?;
    if probe {
        l.apply = Some(apply_probe(&nodes[0], &nodes[1], &ds).await?);
    }
    for m in nodes {
        m.shutdown().await;
    }
    Ok(l)
}

/// Applies `src`'s envelopes of `ds`, one per call, on a fresh node without a mesh that holds the
/// dataset as `receiver` does: the receiver's share of the write-to-visible latency (opening the
/// sealed payloads included), without network or peers.
async fn apply_probe(
    src: &Member,
    receiver: &Member,
    ds: &DatasetId,
) -> Result<((Duration, Duration), Dist)> {
    let envs = own_envelopes(src, ds)?;
    let pages = envs.into_iter().map(|e| vec![e]).collect();
    let (lat, _) = apply_pages(src, receiver, ds, pages).await?;
    Ok((drift(&lat), Dist::new(lat)))
}

/// Applies `pages` of `src`'s envelopes of `ds`, one `Node::apply_envelopes` call (durable) per
/// page, on a fresh node without a mesh that holds the dataset. Returns each call's time and the
/// total.
///
/// The probe node takes `receiver`'s organization and identity (in a home of its own, never on
/// the network): a sealed dataset's epoch key is wrapped only for the members its owner granted
/// read, so a node with an identity of its own would store the envelopes without being able to
/// open or apply them. It checks that it holds the key and, at the end, every record.
async fn apply_pages(
    src: &Member,
    receiver: &Member,
    ds: &DatasetId,
    pages: Vec<Vec<Envelope>>,
) -> Result<(Vec<Duration>, Duration)> {
    let meta = src
        .node
        .replicas()
        .into_iter()
        .find(|(m, _)| m.id == *ds)
        .map(|(m, _)| m)
        .context("dataset")?;
    let sealed = meta.encrypted;
    let want = src.records(ds);
    let dir = tempfile::tempdir()?;
    let cfg = node_config(receiver.org, 0, default_push());
    let id = Identity::from_seed([receiver.seed; 32]);
    ensure!(
        id.author() == receiver.node.identity().author(),
        "probe: seed {} is not {}'s identity",
        receiver.seed,
        receiver.org
    );
    home::init_with(dir.path(), cfg.clone(), id).await?;
    let node = Node::open_home(dir.path(), cfg)?;
    let admin = node.authenticate(&home::admin_token(dir.path())?)?;
    let src_id = src.node.identity();
    node.set_members(vec![fogmesh::node::MemberKeys {
        org: src.node.config().org.clone(),
        author: src_id.author(),
        agreement: src_id.agreement_public(),
        removed: false,
        retired: Vec::new(),
    }])
    .await?;
    node.adopt_dataset((*meta).clone(), src_id.author()).await?;
    if let Some(bundle) = src.node.access_bundle(ds) {
        node.merge_access(ds, &bundle).await?;
    }
    if sealed {
        let keys = node.stored_keys(ds)?;
        ensure!(
            !keys.is_empty(),
            "probe: no epoch key of {ds} unwraps for {}",
            receiver.org
        );
    }
    let mut lat = Vec::with_capacity(pages.len());
    let start = Instant::now();
    for page in pages {
        let n = page.len();
        let t = Instant::now();
        let new = node.apply_envelopes(ds, page).await?;
        lat.push(t.elapsed());
        ensure!(new == n, "probe: {new} of {n} envelopes applied");
    }
    let total = start.elapsed();
    let held = node
        .datasets(&admin)
        .iter()
        .find(|d| d.meta.id == *ds)
        .map_or(0, |d| d.records);
    ensure!(
        held == want,
        "probe: {held} of {want} records visible after applying (payloads not opened?)"
    );
    drop((node, admin));
    settle().await;
    Ok((lat, total))
}

/// Lets background work (snapshots, flusher threads) of a dropped node finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// 1e. The 5-node figure on a clear dataset and again on a sealed one (order alternating with
/// `sealed`, the run printed above), pooled per setting and compared.
async fn encryption_on_off(s: &Sizes, sealed: Latency) -> Result<()> {
    println!(
        "1e. encryption on and off: the same 5-node write-to-visible figure, dataset sealed (default) \
         and in clear (encrypted: false), 2 runs each, alternating"
    );
    let clear_1 = latency(s, &ORGS, 40, false, Some(false)).await?;
    let clear_2 = latency(s, &ORGS, 45, false, Some(false)).await?;
    let sealed_2 = latency(s, &ORGS, 10, false, None).await?;
    let runs = [
        ("sealed, run 1 (the figure above)", &sealed),
        ("clear,  run 1", &clear_1),
        ("clear,  run 2", &clear_2),
        ("sealed, run 2", &sealed_2),
    ];
    for (label, l) in runs {
        println!(
            "  {label:<34} at a receiver {}   publish p50 {}   lost {}   push {:.0} B/record",
            l.per_receiver.line(),
            ms(l.publish.p50()),
            l.lost,
            l.push_bytes_per_record,
        );
    }
    let pool = |a: &Dist, b: &Dist| Dist::new(a.0.iter().chain(&b.0).copied().collect());
    let on = pool(&sealed.per_receiver, &sealed_2.per_receiver);
    let off = pool(&clear_1.per_receiver, &clear_2.per_receiver);
    let pub_on = pool(&sealed.publish, &sealed_2.publish);
    let pub_off = pool(&clear_1.publish, &clear_2.publish);
    println!("  visible at a receiver, both runs pooled:");
    println!("    sealed: {}", on.line());
    println!("    clear:  {}", off.line());
    let signed = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
    let added = signed(on.p50(), off.p50());
    println!(
        "  sealing adds at p50 {added:+.3} ms (target <= {:.1} ms: {}), at p99 {:+.3} ms; \
         Node::publish p50 {:+.3} ms (sealed {} vs clear {})",
        TARGET_SEAL_P50.as_secs_f64() * 1e3,
        verdict(added <= TARGET_SEAL_P50.as_secs_f64() * 1e3),
        signed(on.p99(), off.p99()),
        signed(pub_on.p50(), pub_off.p50()),
        ms(pub_on.p50()),
        ms(pub_off.p50()),
    );
    let run1 = signed(sealed.per_receiver.p50(), clear_1.per_receiver.p50());
    let run2 = signed(sealed_2.per_receiver.p50(), clear_2.per_receiver.p50());
    println!("  per run, sealed p50 - clear p50: run 1 {run1:+.3} ms, run 2 {run2:+.3} ms");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2-3. Catch-up and reconnect

/// Writes `count` records on `m` in batches of 100; returns the time it took.
async fn write_records(m: &Member, ds: &DatasetId, first: u64, count: usize) -> Result<Duration> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ first.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let t = Instant::now();
    let mut i = first;
    let end = first + count as u64;
    while i < end {
        let n = (end - i).min(100);
        let recs = (i..i + n).map(|j| record(j, None, &mut rng)).collect();
        m.node.publish(&m.admin, ds, batch(recs)).await?;
        i += n;
    }
    Ok(t.elapsed())
}

/// The Automerge change bytes of `envs` (of `ds`): sealed payloads opened with the epoch keys `m`
/// holds.
fn plain_payloads(m: &Member, ds: &DatasetId, envs: &[Envelope]) -> Result<Vec<Vec<u8>>> {
    let keys = m.node.stored_keys(ds)?;
    envs.iter()
        .map(|e| {
            if e.epoch == 0 {
                return Ok(e.payload.clone());
            }
            let key = keys
                .get(&e.epoch)
                .with_context(|| format!("no key for epoch {} of {ds}", e.epoch))?;
            let slot = seal::Slot {
                dataset: ds,
                author: &e.author,
                seq: e.seq,
                epoch: e.epoch,
            };
            Ok(seal::open(key, slot, &e.payload)?)
        })
        .collect()
}

/// Every envelope `m` holds of `ds`, written by `m`, in sequence order.
fn own_envelopes(m: &Member, ds: &DatasetId) -> Result<Vec<Envelope>> {
    let author = m.node.identity().author();
    let upto = m
        .node
        .replicas()
        .into_iter()
        .find(|(meta, _)| meta.id == *ds)
        .map(|(_, vv)| vv.get(&author))
        .context("dataset not held")?;
    let mut out = Vec::new();
    let mut after = 0;
    while after < upto {
        let (page, _) =
            m.node
                .envelopes_between(ds, &author, (after, upto), (16 << 20, usize::MAX))?;
        ensure!(!page.is_empty(), "no envelopes after #{after}");
        for bytes in page {
            let env = Envelope::decode(&bytes)?;
            after = env.seq;
            out.push(env);
        }
    }
    Ok(out)
}

struct CatchUp {
    /// The same envelopes applied in Fetch-sized pages by `Node::apply_envelopes` on a node
    /// without a mesh: total time and pages.
    offline: Option<(Duration, usize, Vec<Duration>)>,
    records: usize,
    envelopes: usize,
    write: Duration,
    elapsed: Option<Duration>,
    held: usize,
    connected: Option<Duration>,
    first_hello: Option<Duration>,
    marks: Vec<(usize, Duration)>,
    /// Automerge change bytes (opened when sealed).
    payload: u64,
    /// The envelopes' payload bytes as they travel (sealed: + nonce and tag).
    sealed_payload: u64,
    encoded: u64,
    b: Traffic,
    a: Traffic,
    stall: Option<String>,
}

/// Starts `b`'s mesh and waits until it holds `want` records of `ds` (watching its events, with a
/// slower poll of the record count as a cross-check).
async fn time_catch_up(
    a: &Member,
    b: &mut Member,
    ds: &DatasetId,
    want: usize,
) -> Result<CatchUpRun> {
    let mut events = b.node.subscribe(&b.admin, ds)?;
    let a_before = a.meter.traffic();
    let t0 = Instant::now();
    b.start().await?;
    let watch = tokio::spawn(watch_connect(b.meter.clone(), t0));
    let (mut seen, mut polled) = (0usize, b.records(ds));
    let mut marks = Vec::new();
    let mut next_mark = 1;
    let (mut last_progress, mut last_count) = (Instant::now(), polled);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut stall = None;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(e) => seen += usize::from(matches!(&*e, Event::Upsert { .. })),
                Err(RecvError::Lagged(n)) => seen += n as usize,
                Err(RecvError::Closed) => bail!("B's events ended"),
            },
            _ = poll.tick() => polled = b.records(ds),
        }
        let have = seen.max(polled);
        while next_mark < 4 && have >= want * next_mark / 4 {
            marks.push((want * next_mark / 4, t0.elapsed()));
            next_mark += 1;
        }
        if have > last_count {
            (last_progress, last_count) = (Instant::now(), have);
        }
        if have >= want && b.records(ds) >= want {
            break;
        }
        if last_progress.elapsed() > STALL {
            let status = b.mesh().status().await?;
            stall = Some(format!(
                "no progress for {} s at {} of {} records; B's catch-ups under way: {:?}",
                STALL.as_secs(),
                b.records(ds),
                want,
                status.catching_up
            ));
            break;
        }
    }
    let elapsed = stall.is_none().then(|| t0.elapsed());
    let b_traffic = b.meter.traffic();
    let (connected, first_hello) = watch.await?;
    Ok(CatchUpRun {
        elapsed,
        connected,
        first_hello,
        marks,
        b: b_traffic,
        a: a.meter.traffic().since(&a_before),
        stall,
    })
}

/// Polls `meter` every millisecond for the first TCP connection and the first Hello sent after
/// `t0`; gives up after `SETUP`.
async fn watch_connect(meter: Meter, t0: Instant) -> (Option<Duration>, Option<Duration>) {
    let mut connected = None;
    while t0.elapsed() < SETUP {
        let t = meter.traffic();
        if connected.is_none() && t.connections() > 0 {
            connected = Some(t0.elapsed());
        }
        if t.sync.requests_out > 0 {
            return (connected, Some(t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (connected, None)
}

struct CatchUpRun {
    elapsed: Option<Duration>,
    connected: Option<Duration>,
    first_hello: Option<Duration>,
    marks: Vec<(usize, Duration)>,
    b: Traffic,
    a: Traffic,
    stall: Option<String>,
}

struct Reconnect {
    history: usize,
    envelopes: u64,
    round: Duration,
    connected: Option<Duration>,
    at_round: Traffic,
    settled: Traffic,
    a_at_round: Traffic,
}

/// Restarts `b`'s mesh (same port, node kept open) and counts B's transport bytes from connect
/// until the first catch-up round is complete: B's Hello answered and A's Hello answered, with no
/// further sync frame for 300 ms. Also reads the meter 3 s after the start (identify, ping, ...).
async fn reconnect(a: &Member, b: &mut Member, ds: &DatasetId) -> Result<Reconnect> {
    b.stop().await;
    let b_peer = b.peer;
    wait_for("A to see B down", SETUP, || async move {
        !a.sees_up(&b_peer).await
    })
    .await?;
    // Let A's first redial (1 s after the loss) fail, so B's own dial is the one that connects.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let history = b.records(ds);
    let envelopes = b
        .node
        .datasets(&b.admin)
        .iter()
        .find(|d| d.meta.id == *ds)
        .map_or(0, |d| d.envelopes);
    let a_before = a.meter.traffic();
    let t0 = Instant::now();
    b.start().await?;
    let deadline = t0 + SETUP;
    let watch = tokio::spawn(watch_connect(b.meter.clone(), t0));
    let mut last = b.meter.traffic();
    let mut last_change = (Instant::now(), last, a.meter.traffic().since(&a_before));
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = b.meter.traffic();
        if now.sync != last.sync {
            last_change = (Instant::now(), now, a.meter.traffic().since(&a_before));
        }
        last = now;
        let s = last_change.1.sync;
        let balanced = s.requests_out == s.responses_in && s.requests_in == s.responses_out;
        if s.responses_in >= 1
            && s.responses_out >= 1
            && balanced
            && last_change.0.elapsed() >= Duration::from_millis(300)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no complete catch-up round after reconnect: {}",
                traffic_line(&now)
            );
        }
    }
    tokio::time::sleep_until((t0 + Duration::from_secs(3)).into()).await;
    let (connected, _) = watch.await?;
    Ok(Reconnect {
        history,
        envelopes,
        round: last_change.0 - t0,
        connected,
        at_round: last_change.1,
        settled: b.meter.traffic(),
        a_at_round: last_change.2,
    })
}

fn print_reconnect(r: &Reconnect) {
    let mesh_part = r.at_round.frames().bytes();
    println!(
        "  history {} records ({} envelopes): TCP connection {} after start, first round complete at {}",
        thousands(r.history as u64),
        r.envelopes,
        r.connected.map_or_else(|| "-".into(), ms),
        ms(r.round),
    );
    println!("    at round end, B: {}", traffic_line(&r.at_round));
    println!(
        "    at round end, A (cross-check, same link): transport {} B",
        thousands(r.a_at_round.total())
    );
    println!("    3 s after start, B: {}", traffic_line(&r.settled));
    println!(
        "    reconnect bytes {} B vs target <= {} B: {}   (fogmesh frames alone: {} B)",
        thousands(r.at_round.total()),
        thousands(TARGET_RECONNECT),
        verdict(r.at_round.total() <= TARGET_RECONNECT),
        thousands(mesh_part),
    );
}

/// Encoded size of a Hello with no dataset, and the bytes each listed dataset adds (mean of 10).
fn hello_sizes() -> (usize, f64) {
    use fogmesh::mesh::proto::{self, SyncRequest};
    let mut rng = Rng(7);
    let mut digest = || -> [u8; 32] { std::array::from_fn(|_| rng.next() as u8) };
    let hello = |datasets: Vec<(String, [u8; 32])>, roster: [u8; 32]| {
        let access = Vec::new();
        proto::encode(&SyncRequest::Hello {
            roster,
            datasets,
            access,
            after: None,
            more: false,
        })
        .len()
    };
    let roster = digest();
    let base = hello(Vec::new(), roster);
    let ten = (0..10)
        .map(|i| (format!("hospital/flu-catchup-{i}"), digest()))
        .collect();
    let with = hello(ten, roster);
    (base, (with - base) as f64 / 10.0)
}

/// Two members of a fresh mesh, A owning a dataset shared with B (sealed, the default).
async fn pair(seed: u8, dataset: &str) -> Result<(Member, Member, DatasetId)> {
    let (mut v, ds) = spawn_mesh(&ORGS[..2], seed, dataset, None).await?;
    let b = v.pop().context("b")?;
    let a = v.pop().context("a")?;
    Ok((a, b, ds))
}

/// Figure 3 at a short history: B receives the records live, then reconnects.
async fn reconnect_short(s: &Sizes) -> Result<Reconnect> {
    let (a, mut b, ds) = pair(20, "flu-short").await?;
    write_records(&a, &ds, 0, s.short_history).await?;
    let (bb, dsr, want) = (&b, &ds, s.short_history);
    wait_for("B to receive the short history", SETUP, || async move {
        bb.records(dsr) == want
    })
    .await?;
    let r = reconnect(&a, &mut b, &ds).await?;
    a.shutdown().await;
    b.shutdown().await;
    Ok(r)
}

/// Figure 2, then figure 3 at the long history, on the same pair.
async fn catch_up(s: &Sizes) -> Result<(CatchUp, Vec<Change>, Option<(Latency, Reconnect)>)> {
    let (a, mut b, ds) = pair(30, "flu-catchup").await?;
    b.stop().await;
    let write = write_records(&a, &ds, 0, s.catchup).await?;
    ensure!(
        a.records(&ds) == s.catchup,
        "A holds {} records",
        a.records(&ds)
    );
    let envs = own_envelopes(&a, &ds)?;
    let plain = plain_payloads(&a, &ds, &envs)?;
    let payload: u64 = plain.iter().map(|p| p.len() as u64).sum();
    let sealed_payload: u64 = envs.iter().map(|e| e.payload.len() as u64).sum();
    let encoded: u64 = envs.iter().map(|e| e.encode().len() as u64).sum();
    let changes = plain
        .into_iter()
        .map(Change::from_bytes)
        .collect::<Result<Vec<_>, _>>()?;
    let n_envs = envs.len();
    // A's redial backoff toward B is whatever it is by now: B dials A on start anyway.
    let run = time_catch_up(&a, &mut b, &ds, s.catchup).await?;
    let held = b.records(&ds);
    let mut c = CatchUp {
        offline: None,
        records: s.catchup,
        envelopes: n_envs,
        write,
        elapsed: run.elapsed,
        held,
        connected: run.connected,
        first_hello: run.first_hello,
        marks: run.marks,
        payload,
        sealed_payload,
        encoded,
        b: run.b,
        a: run.a,
        stall: run.stall,
    };
    let mut offline = None;
    let r = if c.stall.is_none() {
        // Let B's snapshot and both sides' rounds finish before reconnecting.
        let bb = &b;
        wait_for("B's catch-up to end", SETUP, || async move {
            bb.mesh()
                .status()
                .await
                .is_ok_and(|st| st.catching_up.is_empty())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pages = pages_of(envs, fogmesh::mesh::proto::PAGE_BYTES);
        let n_pages = pages.len();
        let (per_page, total) = apply_pages(&a, &b, &ds, pages).await?;
        offline = Some((total, n_pages, per_page));
        let late = publish_and_watch(&a, &[&b], &ds, 5, s.late_latency, "late").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((late, reconnect(&a, &mut b, &ds).await?))
    } else {
        None
    };
    a.shutdown().await;
    b.shutdown().await;
    c.offline = offline;
    Ok((c, changes, r))
}

/// `envs` cut into pages of at most `max` encoded bytes (at least one envelope each), as a Fetch
/// answer cuts them.
fn pages_of(envs: Vec<Envelope>, max: usize) -> Vec<Vec<Envelope>> {
    let mut pages: Vec<Vec<Envelope>> = Vec::new();
    let mut bytes = 0;
    for env in envs {
        let len = env.encode().len();
        match pages.last_mut() {
            Some(page) if bytes + len <= max => page.push(env),
            _ => {
                pages.push(vec![env]);
                bytes = 0;
            }
        }
        bytes += len;
    }
    pages
}

// ---------------------------------------------------------------------------------------------
// 2b. Automerge's sync protocol

struct AmSync {
    /// One single-record change applied to A's full document: `apply_changes` alone, and
    /// `view::doc::apply` (`apply_changes` plus finding the touched records), p50 of 5.
    one_change: (Duration, Duration),
    build: Duration,
    elapsed: Duration,
    messages: usize,
    bytes_to_joiner: u64,
    bytes_from_joiner: u64,
    records: usize,
}

/// Builds A's document from its change bytes (untimed), then times Automerge's sync protocol
/// bringing an empty document up to it: messages are encoded and decoded as on a wire.
fn automerge_sync(changes: Vec<Change>) -> Result<AmSync> {
    let actor = changes.first().context("no changes")?.actor_id().clone();
    let t = Instant::now();
    let mut full = Automerge::new();
    full.apply_changes(changes)?;
    let build = t.elapsed();
    let mut joiner = Automerge::new();
    let (mut s_full, mut s_join) = (am_sync::State::new(), am_sync::State::new());
    let (mut to_joiner, mut from_joiner, mut messages) = (0u64, 0u64, 0usize);
    let t = Instant::now();
    loop {
        let mut quiet = true;
        if let Some(m) = joiner.generate_sync_message(&mut s_join) {
            let bytes = m.encode();
            from_joiner += bytes.len() as u64;
            messages += 1;
            quiet = false;
            full.receive_sync_message(&mut s_full, am_sync::Message::decode(&bytes)?)?;
        }
        if let Some(m) = full.generate_sync_message(&mut s_full) {
            let bytes = m.encode();
            to_joiner += bytes.len() as u64;
            messages += 1;
            quiet = false;
            joiner.receive_sync_message(&mut s_join, am_sync::Message::decode(&bytes)?)?;
        }
        if quiet {
            break;
        }
        ensure!(messages < 10_000, "automerge sync does not converge");
    }
    let elapsed = t.elapsed();
    ensure!(
        joiner.get_heads() == full.get_heads(),
        "automerge sync ended with different heads"
    );
    let records = doc::Doc::from_automerge(joiner).ids().len();
    let one_change = one_change(&full, actor)?;
    Ok(AmSync {
        one_change,
        build,
        elapsed,
        messages,
        bytes_to_joiner: to_joiner,
        bytes_from_joiner: from_joiner,
        records,
    })
}

/// Applies one single-record change (written by `actor`, A, on a fork of `full`) to copies of `full`, timing
/// Automerge's `apply_changes` alone and fogmesh's `view::doc::apply` (which also finds the
/// records the change touched, from its operations). p50 of 5.
fn one_change(full: &Automerge, actor: automerge::ActorId) -> Result<(Duration, Duration)> {
    let mut other = doc::Doc::from_automerge(full.fork().with_actor(actor));
    let mut rng = Rng(42);
    let data = match record(7, None, &mut rng).data {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let up = doc::Upsert {
        id: "one-change-probe".into(),
        name: "district-1/ward-1/admission".into(),
        time: 1,
        data,
    };
    let bytes = other.write(&[up], &[])?.context("no change")?;
    let (mut alone, mut with_touched) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut d = full.clone();
        let c = Change::from_bytes(bytes.clone())?;
        let t = Instant::now();
        d.apply_changes(vec![c])?;
        alone.push(t.elapsed());
        let mut d = doc::Doc::from_automerge(full.clone());
        let c = Change::from_bytes(bytes.clone())?;
        let t = Instant::now();
        let touched = d.apply(vec![c])?.touched;
        with_touched.push(t.elapsed());
        ensure!(
            touched.len() == 1,
            "one change touched {} records",
            touched.len()
        );
    }
    Ok((Dist::new(alone).p50(), Dist::new(with_touched).p50()))
}

// ---------------------------------------------------------------------------------------------

/// An organization name for node `i` of a large mesh.
fn org_name(i: usize) -> &'static str {
    Box::leak(format!("org{i:03}").into_boxed_str())
}

/// The mean size of `m`'s own envelopes of `ds`, in bytes (encoded, as pushed).
fn mean_envelope_bytes(m: &Member, ds: &DatasetId) -> Result<f64> {
    let envs = own_envelopes(m, ds)?;
    let total: usize = envs.iter().map(|e| e.encode().len()).sum();
    Ok(total as f64 / envs.len().max(1) as f64)
}

/// One way of pushing at one mesh size, as part 4 measured it.
#[derive(Debug, Clone)]
struct FanoutRow {
    nodes: usize,
    /// `direct` or `tree`.
    how: &'static str,
    p50: Duration,
    p99: Duration,
    /// The writer's push frame bytes sent per record, over the envelope.
    writer_x: f64,
    /// A receiver's push frame bytes in (envelopes, acknowledgements) per record, mean over the
    /// receivers.
    received: f64,
    /// Most a single receiver took in per record.
    received_max: f64,
}

/// Part 4 at one mesh size: node 0 pushes directly (`push = "direct"`), node 1 along trees (the
/// default); each owns a dataset shared with all and publishes `count` single-record batches, in
/// turn, while every other node watches.
async fn fanout(s: &Sizes, n: usize, seed: u8) -> Result<Vec<FanoutRow>> {
    let orgs: Vec<&'static str> = (0..n).map(org_name).collect();
    let setup = Instant::now();
    let (nodes, direct) =
        spawn_mesh_with(&orgs, seed, "flu-direct", None, PushMode::Direct).await?;
    let readers: Vec<&str> = orgs
        .iter()
        .copied()
        .filter(|o| *o != nodes[1].org)
        .collect();
    let tree = nodes[1]
        .node
        .create_dataset(&nodes[1].admin, shared_spec("flu-tree", &readers, None))
        .await?
        .id;
    for m in &nodes {
        let tree = &tree;
        wait_for("the tree dataset and its key everywhere", SETUP, || async move {
            m.holds(tree) && m.node.stored_keys(tree).is_ok_and(|k| !k.is_empty())
        })
        .await?;
    }
    println!(
        "  {n:>3} nodes (mesh set up in {:.1} s)",
        setup.elapsed().as_secs_f64()
    );
    let count = (s.latency / 5).max(20);
    let mut rows = Vec::new();
    for (writer, ds, how) in [(0, &direct, "direct"), (1, &tree, "tree")] {
        let receivers: Vec<&Member> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != writer)
            .map(|(_, m)| m)
            .collect();
        // Warm-up long enough that the writer has pushed to every member: the first push of an
        // epoch to each carries the dataset's description and access state once.
        let warmup = 10 + 2 * n;
        let l = publish_and_watch(&nodes[writer], &receivers, ds, warmup, count, how).await?;
        let records = count as f64;
        let per_node: Vec<f64> = l
            .received
            .iter()
            .map(|t| t.push.bytes_in as f64 / records)
            .collect();
        let transport_in: f64 = l
            .received
            .iter()
            .map(|t| t.inbound as f64 / records)
            .sum::<f64>()
            / l.received.len().max(1) as f64;
        let sent = &l.writer;
        let envelope = mean_envelope_bytes(&nodes[writer], ds)?;
        let sum = |f: &dyn Fn(&fogmesh::metrics::Metrics) -> u64| -> u64 {
            nodes.iter().map(|m| f(m.node.metrics())).sum()
        };
        println!(
            "      {how:<6} (cumulative, all nodes) pushes {} failed {} forwarded {} not forwarded {}",
            sum(&|m| m.pushes.get()),
            sum(&|m| m.push_failures.get()),
            sum(&|m| m.envelopes_forwarded.get()),
            sum(&|m| m.forwards_dropped.get()),
        );
        let row = FanoutRow {
            nodes: n,
            how,
            p50: l.everywhere.p50(),
            p99: l.everywhere.p99(),
            writer_x: sent.push.bytes_out as f64 / records / envelope.max(1.0),
            received: per_node.iter().sum::<f64>() / per_node.len().max(1) as f64,
            received_max: per_node.iter().copied().fold(0.0, f64::max),
        };
        println!(
            "      {how:<6} visible at a receiver {}",
            l.per_receiver.line()
        );
        println!(
            "      {how:<6} visible at all {}: {}",
            n - 1,
            l.everywhere.line()
        );
        println!(
            "      {how:<6} writer push frames sent per record {:.0} B = {:.2} x the envelope \
             ({envelope:.0} B), all its transport bytes out {:.0} B; a receiver's push frames in \
             per record {:.0} B (most {:.0} B), all its transport bytes in {:.0} B; lost {}",
            sent.push.bytes_out as f64 / records,
            row.writer_x,
            sent.outbound as f64 / records,
            row.received,
            row.received_max,
            transport_in,
            l.lost
        );
        rows.push(row);
    }
    for m in nodes {
        m.shutdown().await;
    }
    Ok(rows)
}

/// Part 4's table, with the targets of the tree: the writer's push bytes at most
/// [`TARGET_WRITER_X`] x the envelope at every size, p99 at 50 nodes at most [`TARGET_FANOUT_P99`],
/// and a receiver's inbound bytes per record flat in the mesh size (within 25% of the smallest
/// mesh's).
fn print_fanout(rows: &[FanoutRow]) {
    println!(
        "  nodes  push    p50 all   p99 all   writer bytes/envelope  receiver push B/record (most)"
    );
    for r in rows {
        println!(
            "  {:>5}  {:<6}  {:>8}  {:>8}  {:>21.2}  {:>10.0} ({:.0})",
            r.nodes,
            r.how,
            ms(r.p50),
            ms(r.p99),
            r.writer_x,
            r.received,
            r.received_max
        );
    }
    let trees: Vec<&FanoutRow> = rows.iter().filter(|r| r.how == "tree").collect();
    if let (Some(small), Some(large)) = (trees.first(), trees.last()) {
        let writer = trees.iter().all(|r| r.writer_x <= TARGET_WRITER_X);
        println!(
            "  tree: writer bytes <= {TARGET_WRITER_X} x the envelope at every size: {}",
            verdict(writer)
        );
        let flat = large.received <= small.received * 1.25;
        println!(
            "  tree: receiver bytes per record {:.0} B at {} nodes, {:.0} B at {}: flat {}",
            small.received,
            small.nodes,
            large.received,
            large.nodes,
            verdict(flat)
        );
    }
    if let Some(r) = trees.iter().find(|r| r.nodes == 50) {
        println!(
            "  tree: p99 at 50 nodes {} (target {}): {}",
            ms(r.p99),
            ms(TARGET_FANOUT_P99),
            verdict(r.p99 <= TARGET_FANOUT_P99)
        );
    }
}

fn main() -> Result<()> {
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let sizes = Sizes::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(sizes))
}

async fn run(s: Sizes) -> Result<()> {
    let started = Instant::now();
    let only = s.only.as_deref();
    println!("fogmesh mesh benchmark");
    println!(
        "  cores: {}   quick: {}   loopback TCP, mDNS off; record data 100..1024 B JSON (uniform)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.quick,
    );
    println!(
        "  sizes: latency {} records after {} warm-up, raw round trips {}, catch-up {} records, \
         short history {} records",
        thousands(s.latency as u64),
        s.warmup,
        thousands(s.rtt as u64),
        thousands(s.catchup as u64),
        thousands(s.short_history as u64),
    );
    println!();

    if only.is_none_or(|o| o == "latency") {
        println!("1. write-to-visible latency, 5 nodes, single-record batches from node 0");
        let (rtt, rtt_traffic) = raw_rtt(s.rtt, s.warmup).await?;
        println!("  raw libp2p request-response round trip (net actors, Sync, 15 B frame echoed):");
        println!("    {}", rtt.line());
        println!(
            "    bytes per round trip: {:.0} B on the transport ({:.0} B of frames)",
            rtt_traffic.total() as f64 / s.rtt as f64,
            rtt_traffic.frames().bytes() as f64 / s.rtt as f64
        );
        println!("  dataset shared with the 4 receivers, sealed (the default; 1e below: clear)");
        let l = latency(&s, &ORGS, 1, false, None).await?;
        println!(
            "  Node::publish returned (local, durable):      {}",
            l.publish.line()
        );
        println!(
            "  visible at a receiver (4 samples per record): {}",
            l.per_receiver.line()
        );
        println!(
            "  visible at all 4 receivers:                   {}",
            l.everywhere.line()
        );
        println!(
            "  all 4 minus publish (push + remote apply):    {}",
            l.after_publish.line()
        );
        println!(
            "  lost (not visible within {} s): {}   push bytes per record (4 receivers, frames): {:.0} B",
            VISIBLE.as_secs(),
            l.lost,
            l.push_bytes_per_record
        );
        println!(
            "  visible at all 4, p50 of the first tenth of the records {} -> of the last tenth {}",
            ms(l.drift.0),
            ms(l.drift.1)
        );
        let (p50, p99) = (l.per_receiver.p50(), l.per_receiver.p99());
        println!(
            "  target p50 <= {}: {} ({})   target p99 <= {}: {} ({})   raw baseline p50 {} p99 {}",
            ms(TARGET_P50),
            ms(p50),
            verdict(p50 <= TARGET_P50),
            ms(TARGET_P99),
            ms(p99),
            verdict(p99 <= TARGET_P99),
            ms(rtt.p50()),
            ms(rtt.p99()),
        );
        let two = latency(&s, &ORGS[..2], 6, true, None).await?;
        println!("  for comparison, 2 nodes (1 receiver), sealed:");
        println!(
            "    Node::publish returned:                     {}",
            two.publish.line()
        );
        println!(
            "    visible at the receiver:                    {}",
            two.per_receiver.line()
        );
        println!(
            "    visible, p50 of the first tenth {} -> of the last tenth {}",
            ms(two.drift.0),
            ms(two.drift.1)
        );
        if let Some(((first, last), d)) = &two.apply {
            println!(
                "  receiver's share alone: Node::apply_envelopes of the same {} single-record envelopes, one call each,",
                d.0.len()
            );
            println!(
                "    durable, opened with the receiver's unwrapped key, on a node without a mesh: {}; \
                 p50 first tenth {} -> last tenth {}",
                d.line(),
                ms(*first),
                ms(*last)
            );
        }
        println!();
        encryption_on_off(&s, l).await?;
        println!();
    }
    if only.is_none_or(|o| o == "reconnect") {
        println!("3a. reconnect when in sync, short history");
        let (base, per) = hello_sizes();
        println!(
            "  Hello request frame (mesh::proto, CBOR): {base} B with no dataset, +{per:.0} B per dataset listed \
             (ids like \"hospital/flu-catchup\", random digests)"
        );
        let short = reconnect_short(&s).await?;
        print_reconnect(&short);
        println!();
    }
    if only.is_none_or(|o| o == "catchup") {
        println!(
            "2. catch-up of {} records missed by B (batches of 100 written on A while B's mesh was stopped)",
            thousands(s.catchup as u64)
        );
        let (c, changes, long) = catch_up(&s).await?;
        println!(
            "  A wrote {} records in {} envelopes in {:.2} s; payload (Automerge change bytes) {} ({} B/record; \
             sealed {}), encoded envelopes {}",
            thousands(c.records as u64),
            c.envelopes,
            c.write.as_secs_f64(),
            mib(c.payload),
            c.payload / c.records.max(1) as u64,
            mib(c.sealed_payload),
            mib(c.encoded),
        );
        if let Some(stall) = &c.stall {
            println!("  STALLED: {stall}");
        }
        match c.elapsed {
            Some(e) => println!(
                "  B holds {} records {:.2} s after its mesh started ({} rec/s); first TCP connection at {}, \
                 first Hello sent at {}",
                thousands(c.held as u64),
                e.as_secs_f64(),
                thousands((c.records as f64 / e.as_secs_f64()) as u64),
                c.connected.map_or_else(|| "-".into(), ms),
                c.first_hello.map_or_else(|| "-".into(), ms),
            ),
            None => println!("  B holds {} records (incomplete)", thousands(c.held as u64)),
        }
        if let Some((t, pages, per_page)) = &c.offline {
            let each: Vec<String> = per_page
                .iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
                .collect();
            println!(
                "  the same envelopes applied with no network (Node::apply_envelopes, {pages} pages of \
                 <= 4 MiB, fresh node): {:.2} s; ms per page in order: {}",
                t.as_secs_f64(),
                each.join(" ")
            );
        }
        for (n, t) in &c.marks {
            println!(
                "    {:>7} records at {:.2} s",
                thousands(*n as u64),
                t.as_secs_f64()
            );
        }
        println!("  B: {}", traffic_line(&c.b));
        println!(
            "  A (cross-check, same link): transport {} B",
            thousands(c.a.total())
        );
        let ratio = c.b.total() as f64 / c.payload as f64;
        let frame_ratio = c.b.frames().bytes() as f64 / c.payload as f64;
        println!(
            "  wire / payload: {ratio:.3}x (fogmesh frames alone {frame_ratio:.3}x; encoded envelopes {:.3}x)",
            c.encoded as f64 / c.payload as f64
        );
        let n = c.records;
        let am = tokio::task::spawn_blocking(move || automerge_sync(changes)).await??;
        println!(
            "  automerge sync (cold join of A's document, {} messages): {:.2} s; {} to the joiner + {} from it \
             = {:.3}x payload; joiner holds {} records (building A's doc from the changes took {:.2} s, untimed)",
            am.messages,
            am.elapsed.as_secs_f64(),
            mib(am.bytes_to_joiner),
            mib(am.bytes_from_joiner),
            (am.bytes_to_joiner + am.bytes_from_joiner) as f64 / c.payload as f64,
            thousands(am.records as u64),
            am.build.as_secs_f64(),
        );
        ensure!(
            am.records == n,
            "automerge joiner holds {} records",
            am.records
        );
        println!(
            "  one single-record change applied to a {}-record document: apply_changes {}, \
             view::doc::apply (apply_changes + touched ids) {}",
            thousands(n as u64),
            ms(am.one_change.0),
            ms(am.one_change.1),
        );
        if let Some(e) = c.elapsed {
            println!(
                "  target <= {:.0} s: {:.2} s ({})   target <= {TARGET_WIRE_RATIO:.2}x payload: {ratio:.3}x ({})",
                TARGET_CATCHUP.as_secs_f64(),
                e.as_secs_f64(),
                verdict(e <= TARGET_CATCHUP),
                verdict(ratio <= TARGET_WIRE_RATIO),
            );
        }
        println!();

        match &long {
            Some((late, _)) => {
                println!(
                    "1c. write-to-visible latency at a long history: A publishes single records, B receives \
                     ({} records held)",
                    thousands(s.catchup as u64)
                );
                println!("  Node::publish returned (A):  {}", late.publish.line());
                println!(
                    "  visible at B:                {}",
                    late.per_receiver.line()
                );
                println!(
                    "  lost (not visible within {} s): {}",
                    VISIBLE.as_secs(),
                    late.lost
                );
            }
            None => println!("1c. skipped: the catch-up did not complete"),
        }
        println!();
        println!("3b. reconnect when in sync, long history");
        match &long {
            Some((_, r)) => print_reconnect(r),
            None => println!("  skipped: the catch-up did not complete"),
        }
        println!();
    }
    if only.is_none_or(|o| o == "fanout") {
        println!(
            "4. fan-out by mesh size: direct push (node 0, push = \"direct\": the writer sends \
             each envelope to every member) beside trees (node 1, push = \"tree\", fan-out {}), \
             single-record batches, sealed, in turn on one mesh",
            fogmesh::mesh::tree::FANOUT
        );
        let mut rows = Vec::new();
        for n in &s.fanout {
            rows.extend(fanout(&s, *n, 100).await?);
        }
        print_fanout(&rows);
        if let Ok(dir) = std::env::var("FOGMESH_BENCH_PLOT") {
            std::fs::create_dir_all(&dir).with_context(|| dir.clone())?;
            for (file, svg) in plot::fanout(&rows) {
                let path = std::path::Path::new(&dir).join(file);
                std::fs::write(&path, svg).with_context(|| format!("{}", path.display()))?;
                println!("  plot written to {}", path.display());
            }
        }
        println!();
    }
    if only.is_none_or(|o| o == "priority") {
        println!("5. priorities under load: a pair, B catching up a low-priority dataset");
        priority::print(&priority::run(&s).await?);
        println!();
    }
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
