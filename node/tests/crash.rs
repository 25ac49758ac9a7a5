//! Crash and disk-failure tests on the real binary.
//!
//! - A client publishes 10,000 records in batches while the node is killed with SIGKILL at a
//!   random moment; after each restart every acknowledged record must be present and the store
//!   must open cleanly.
//! - A node whose home is on a small real filesystem (a tmpfs the test mounts, as root) fills
//!   it: see [`disk`].
//!
//! ```text
//! cargo test -p fogmesh-node --test crash                          # 20 cycles
//! FOGMESH_CRASH_CYCLES=200 cargo test -p fogmesh-node --test crash # more
//! ```

mod common;
#[path = "crash/disk.rs"]
mod disk;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::TestNode;
use rand::Rng;
use serde_json::{json, Value};

/// Records one cycle tries to publish.
const RECORDS: usize = 10_000;
/// Records per HTTP request.
const BATCH: usize = 100;
/// Cycles in the normal suite.
const DEFAULT_CYCLES: usize = 20;

fn cycles() -> usize {
    std::env::var("FOGMESH_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES)
}

/// Ids acknowledged (HTTP 200) so far in one cycle.
type Acked = Arc<Mutex<Vec<String>>>;

/// Publishes `RECORDS` records of cycle `c` in batches until done or the node dies.
fn publisher(node_url: String, token: String, c: usize, acked: Acked, done: Arc<AtomicBool>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let url = format!("{node_url}/v1/datasets/hospital/crash/records");
    for start in (0..RECORDS).step_by(BATCH) {
        let ids: Vec<String> = (start..start + BATCH)
            .map(|i| format!("c{c}-{i}"))
            .collect();
        let records: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "name": format!("crash/c{c}"), "data": {"n": id, "pad": "x".repeat(200)}}))
            .collect();
        let sent = agent
            .post(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(json!({ "records": records }));
        match sent {
            Ok(r) if r.status() == 200 => acked.lock().expect("acked lock").extend(ids),
            _ => break,
        }
    }
    done.store(true, Ordering::Release);
}

/// The ids of cycle `c` that the node holds.
fn held(node: &TestNode, c: usize) -> Result<BTreeSet<String>> {
    let v = node.get(&format!(
        "/v1/datasets/hospital/crash/records?name_prefix=crash/c{c}&limit=10000"
    ))?;
    let recs = v["records"].as_array().context("records")?;
    Ok(recs
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect())
}

/// What one cycle did.
struct Cycle {
    acked: Vec<String>,
    mid_write: bool,
    /// From the first request to the kill or to the last acknowledgement.
    publishing: Duration,
}

/// One cycle: publish, kill (once `kill.0` batches are acknowledged, `kill.1` later; never with
/// `None`), restart, check that no acknowledged record is lost.
fn cycle(node: &mut TestNode, c: usize, kill: Option<(usize, Duration)>) -> Result<Cycle> {
    let acked: Acked = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, token) = (node.url(""), node.token.clone());
        let (acked, done) = (acked.clone(), done.clone());
        thread::spawn(move || publisher(url, token, c, acked, done))
    };
    let began = Instant::now();
    let (batches, then) = kill.unwrap_or((usize::MAX, Duration::ZERO));
    let acked_batches = || acked.lock().expect("acked lock").len() / BATCH;
    while acked_batches() < batches && !done.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(then);
    let publishing = began.elapsed();
    let mid_write = !done.load(Ordering::Acquire);
    node.kill();
    writer.join().expect("publisher thread");
    node.restart()
        .with_context(|| format!("cycle {c}: the store did not reopen"))?;
    let acked = acked.lock().expect("acked lock").clone();
    check(node, c, &acked)?;
    Ok(Cycle {
        acked,
        mid_write,
        publishing,
    })
}

/// Fails unless the node holds every id of `acked` (cycle `c`).
fn check(node: &TestNode, c: usize, acked: &[String]) -> Result<()> {
    let have = held(node, c)?;
    let lost: Vec<&String> = acked.iter().filter(|id| !have.contains(*id)).collect();
    ensure!(
        lost.is_empty(),
        "cycle {c}: {} of {} acknowledged records lost, first {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    Ok(())
}

#[test]
fn no_acknowledged_record_is_lost_when_the_node_is_killed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = TestNode::init(&dir.path().join("h"), "hospital")?;
    node.post("/v1/datasets", &json!({"name": "crash"}))?;
    // Cycle 0 runs to completion and times the publishing. A later cycle is killed after a random
    // number of acknowledged batches, a random part of one batch's time later: within the
    // next batch's request, whatever the machine's speed at the moment (a kill timed from the
    // start of a cycle landed after its end on a machine that had become faster).
    let first = cycle(&mut node, 0, None)?;
    ensure!(
        first.acked.len() == RECORDS,
        "an uninterrupted cycle acknowledged {} records",
        first.acked.len()
    );
    let full = first.publishing;
    let per_batch = full / u32::try_from(RECORDS / BATCH)?;
    let mut rng = rand::thread_rng();
    let mut all = vec![first.acked];
    let (mut mid, cycles) = (0, cycles());
    for c in 1..=cycles {
        let kill = (
            rng.gen_range(0..RECORDS / BATCH),
            per_batch.mul_f64(rng.gen_range(0.0..1.0)),
        );
        let done = cycle(&mut node, c, Some(kill))?;
        mid += usize::from(done.mid_write);
        all.push(done.acked);
    }
    // Every earlier cycle is still whole after all the later crashes.
    for (c, acked) in all.iter().enumerate() {
        check(&node, c, acked)?;
    }
    let total: usize = all.iter().map(Vec::len).sum();
    eprintln!(
        "{cycles} kills ({mid} mid-write), {total} acknowledged records, all present; \
         an uninterrupted cycle published for {full:?}"
    );
    ensure!(
        mid * 2 >= cycles,
        "only {mid} of {cycles} kills landed mid-write; the test did not test much"
    );
    Ok(())
}
