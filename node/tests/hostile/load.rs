//! Work a member's messages can cause, on the real wire.
//!
//! - `a_hundred_concurrent_heavy_pushes_keep_memory_bounded_and_the_api_answering`: mallory, a
//!   member with write rights on `hospital/flu`, opens 100 streams at once, each a valid 1 MiB
//!   push (`FOGMESH_LOAD_ENVELOPES=256` for 15 MiB ones): 16 envelopes of its own (one 60 KiB record each, a signature to check each) and the
//!   dataset's access set relayed as the owner signed it. The node reads pushes only within a
//!   node-wide budget (two of the largest pushes), checks signatures off its async threads and
//!   skips access items it holds before checking anything. While the flood lasts, a client
//!   asks the node's API `GET /v1/node` as fast as it answers; the test prints the API's p50 and
//!   p99 latencies and the node's resident memory, and asserts the memory grew by less than
//!   [`RSS_GROWTH_MIB`], every push was answered, mallory stays connected (valid input is no
//!   bad input) and the 16 records arrived once.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use fogmesh::envelope::{Envelope, GENESIS};
use fogmesh::identity::Identity;
use fogmesh::mesh::proto::{self, Push, PushAck, SyncRequest, SyncResponse};
use fogmesh::naming::DatasetId;
use serde_bytes::ByteBuf;

use crate::checks::{frame, rss_mib, target};
use crate::common::TestNode;
use crate::raw::{Proto, RawClient};

/// Pushes sent at once.
const PUSHES: usize = 100;
/// Envelopes per push (60 KiB each); `FOGMESH_LOAD_ENVELOPES` sets another number (at most
/// 256, a 15 MiB push).
fn per_push() -> usize {
    std::env::var("FOGMESH_LOAD_ENVELOPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(16, |n: usize| n.clamp(1, 256))
}
/// Most the node's resident memory may grow during the flood, whatever the push size: the pushes
/// it reads at once are bounded by its budget (32 MiB), their decoding and the records they
/// carry come on top.
const RSS_GROWTH_MIB: f64 = 400.0;

fn envelopes(key: &Identity, ds: &DatasetId) -> Result<Vec<ByteBuf>> {
    let mut doc = fogmesh::view::doc::Doc::new(key.author().as_bytes());
    let hlc = fogmesh::hlc::wall_millis() << 16;
    let mut prev = GENESIS;
    let mut out = Vec::new();
    for i in 0..per_push() {
        let mut data = serde_json::Map::new();
        data.insert("blob".into(), "x".repeat(60 * 1024).into());
        let up = fogmesh::view::doc::Upsert {
            id: format!("m{i}"),
            name: format!("ward/m{i}"),
            time: 1,
            data,
        };
        let change = doc.write(&[up], &[])?.context("a change")?;
        let env = Envelope::seal(key, ds.clone(), i as u64 + 1, 0, hlc, prev, change);
        prev = env.digest();
        out.push(ByteBuf::from(env.encode()));
    }
    Ok(out)
}

/// The dataset's access set as the node serves it to a member (the owner's signatures).
fn relayed_access(c: &RawClient, ds: &str) -> Result<Vec<(String, fogmesh::access::Bundle)>> {
    let hello = SyncRequest::Hello {
        roster: [0; 32],
        datasets: vec![(ds.to_owned(), [0; 32])],
        access: vec![(ds.to_owned(), [0; 32])],
        after: None,
        more: false,
    };
    let answer = c.request(Proto::Sync, frame(&proto::encode(&hello)));
    match answer.message::<SyncResponse>()? {
        SyncResponse::Hello { access, .. } => Ok(access),
        other => anyhow::bail!("unexpected answer to Hello: {other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[test]
fn a_hundred_concurrent_heavy_pushes_keep_memory_bounded_and_the_api_answering() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hospital = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    let invite = hospital.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    mallory.cli(&["join", &token]).ok();
    crate::share_flu_with_mallory(&hospital, true);
    mallory.stop()?;
    let key = Identity::load(&mallory.home)?;
    let (peer, addr) = target(&hospital)?;
    let mut c = RawClient::new(key.libp2p_keypair()?, peer, addr)?;
    c.connect()?;

    let ds = DatasetId::parse("hospital/flu")?;
    let per_push = per_push();
    let push = Push {
        catalog: vec![],
        access: relayed_access(&c, "hospital/flu")?,
        envelopes: envelopes(&key, &ds)?,
        evidence: vec![],
        tree: false,
    };
    let bytes = frame(&proto::encode(&push));
    eprintln!(
        "{PUSHES} pushes of {:.2} MiB each ({per_push} envelopes, the access set relayed)",
        bytes.len() as f64 / (1 << 20) as f64
    );
    let (rss0, _) = rss_mib(hospital.pid());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (answers, latencies, peak) = std::thread::scope(|s| {
        let api = s.spawn(|| {
            let mut lat = Vec::new();
            let mut peak = rss0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let ok = hospital.get("/v1/node").is_ok();
                lat.push((t.elapsed(), ok));
                peak = peak.max(rss_mib(hospital.pid()).0);
                std::thread::sleep(Duration::from_millis(5));
            }
            (lat, peak)
        });
        let started = Instant::now();
        let answers = c.request_many(Proto::Push, vec![bytes.clone(); PUSHES]);
        eprintln!(
            "all {PUSHES} pushes answered in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (lat, peak) = api.join().expect("api thread");
        (answers, lat, peak)
    });
    let mut accepted = 0;
    for a in &answers {
        let ack: PushAck = a.message().context("a push was not answered")?;
        accepted += ack.accepted;
    }
    ensure!(
        accepted as usize == per_push,
        "{accepted} envelopes taken, {per_push} new"
    );
    ensure!(
        latencies.iter().all(|(_, ok)| *ok),
        "the API failed a request during the flood"
    );
    let mut sorted: Vec<Duration> = latencies.iter().map(|(d, _)| *d).collect();
    sorted.sort();
    let (rss1, hwm) = rss_mib(hospital.pid());
    eprintln!(
        "API during the flood: {} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        percentile(&sorted, 1.0)
    );
    eprintln!(
        "node RSS: {rss0:.1} MiB before, {peak:.1} MiB at the highest sample, {rss1:.1} MiB after \
         (kernel high-water mark {hwm:.1} MiB)"
    );
    ensure!(
        hwm - rss0 < RSS_GROWTH_MIB,
        "resident memory grew by {:.1} MiB (bound {RSS_GROWTH_MIB} MiB)",
        hwm - rss0
    );
    ensure!(c.is_up(), "a member sending valid pushes was disconnected");
    let records = hospital.get("/v1/datasets/hospital/flu/records")?;
    let n = records["records"].as_array().map_or(0, Vec::len);
    ensure!(n == per_push, "{n} records, want {per_push}");
    Ok(())
}
