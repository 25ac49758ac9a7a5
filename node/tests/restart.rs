//! A restart with data: the API answers at once; each dataset answers as soon as it is loaded,
//! the most urgent first, and `loading` (503, `Retry-After`) until then; the mesh answers
//! `starting` until every dataset is loaded; the CLI waits for a dataset still loading.
//!
//! A test binary of its own: its 30,000-record write would slow the crash test's timed cycles.
//!
//! ```text
//! cargo test -p fogmesh-node --test restart -- --nocapture    # prints the times
//! ```

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use common::{TestNode, START_DEADLINE};

/// Records in the low-priority dataset: enough that loading it takes seconds in a debug build.
const ARCHIVE: usize = 30_000;
/// Records per write.
const BATCH: usize = 1_000;

/// A GET's status, `Retry-After` header and JSON body, whatever the status.
fn get(node: &TestNode, path: &str) -> Result<(u16, Option<String>, Value)> {
    let req = ureq::get(&node.url(path)).set("Authorization", &format!("Bearer {}", node.token));
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).with_context(|| format!("GET {path}")),
    };
    let (status, retry) = (resp.status(), resp.header("Retry-After").map(str::to_owned));
    Ok((status, retry, resp.into_json()?))
}

fn fill(node: &TestNode) -> Result<()> {
    node.cli(&["dataset", "create", "archive", "--priority", "low"])
        .ok();
    node.cli(&["dataset", "create", "alerts", "--priority", "high"])
        .ok();
    for b in 0..ARCHIVE / BATCH {
        let records: Vec<Value> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                json!({"name": format!("ward-{}/bed-{n}", n % 20), "data": {"temp": 36.5, "n": n, "note": "routine check, no findings"}})
            })
            .collect();
        node.post(
            "/v1/datasets/hospital/archive/records",
            &json!({ "records": records }),
        )?;
    }
    node.post(
        "/v1/datasets/hospital/alerts/records",
        &json!({"records": [{"name": "ward-3/bed-7", "data": {"alert": "fever"}}]}),
    )?;
    Ok(())
}

#[test]
fn a_restarted_node_answers_at_once_and_serves_each_dataset_once_it_is_loaded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    fill(&node)?;
    node.stop()?;

    let began = Instant::now();
    node.restart_answering()?;
    let answered = began.elapsed();
    let info = node.get("/v1/node")?;
    ensure!(
        info["loading"]["total"] == 2,
        "the first answer ({answered:?} after the start) shows no loading of the 2 datasets: {info}"
    );

    // The archive refuses with `loading` until it is loaded; the mesh with `starting`.
    let (status, retry, body) = get(&node, "/v1/datasets/hospital/archive/records?limit=1")?;
    ensure!(
        status == 503 && body["error"]["reason"] == "loading" && retry.as_deref() == Some("1"),
        "a read of the archive while it loads: {status} {retry:?} {body}"
    );
    let (status, _, body) = get(&node, "/v1/peers")?;
    ensure!(
        status == 503 && body["error"]["reason"] == "starting",
        "the mesh while the datasets load: {status} {body}"
    );
    let listed = node.get("/v1/datasets/hospital/archive")?;
    ensure!(
        listed["loading"] == true,
        "the archive's page while it loads: {listed}"
    );

    // The high-priority dataset answers first, while the archive still loads.
    let deadline = Instant::now() + START_DEADLINE;
    let alerts_at = loop {
        let (status, _, body) = get(&node, "/v1/datasets/hospital/alerts/records")?;
        if status == 200 {
            ensure!(
                body["records"].as_array().map(Vec::len) == Some(1),
                "{body}"
            );
            break began.elapsed();
        }
        ensure!(Instant::now() < deadline, "alerts never answered: {body}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let info = node.get("/v1/node")?;
    ensure!(
        info["loading"]["loaded"] == 1,
        "alerts answered ({alerts_at:?}) before the archive loaded: {info}"
    );

    // The CLI waits for the archive instead of failing.
    let out = node
        .cli(&[
            "query",
            "hospital/archive",
            "--name-prefix",
            "ward-3",
            "--limit",
            "5000",
            "--format",
            "ndjson",
        ])
        .ok();
    let loaded_at = began.elapsed();
    ensure!(
        out.lines().len() == ARCHIVE / 20,
        "the CLI's query while the archive loaded: {} rows; stderr {}",
        out.lines().len(),
        out.stderr
    );
    node.await_loaded()?;
    let archive = node.get("/v1/datasets/hospital/archive")?;
    ensure!(archive["records"] == ARCHIVE, "{archive}");
    ensure!(archive.get("loading").is_none(), "{archive}");
    println!(
        "restart with {ARCHIVE} records: API answered after {answered:?}, the high-priority dataset after {alerts_at:?}, the archive (CLI query done) after {loaded_at:?}; the CLI said: {}",
        out.stderr.trim()
    );
    Ok(())
}
