//! Frames as the node's codec reads them, and the node's observable state: metrics, liveness,
//! memory.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use libp2p::{Multiaddr, PeerId};
use rand::RngCore;
use serde_json::Value;

use crate::common::{proc_status_kib, TestNode};
use crate::raw::{Answer, Proto, RawClient};
use crate::PROMPT;
use fogmesh::net::BAD_INPUT_LIMIT;

/// `payload` as one CBOR byte string: exactly what the node's codec reads as a `Frame`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut out = Vec::with_capacity(n + 9);
    match n {
        0..=23 => out.push(0x40 | n as u8),
        24..=0xff => out.extend([0x58, n as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x5a);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(0x5b);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// The node's peer id and its TCP address on loopback (with `/p2p/`).
pub(crate) fn target(node: &TestNode) -> Result<(PeerId, Multiaddr)> {
    let info = node.get("/v1/node")?;
    let peer: PeerId = info["peer_id"].as_str().context("peer_id")?.parse()?;
    let mesh = node.get("/v1/mesh")?;
    let addr = mesh["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .with_context(|| format!("no loopback TCP listen address in {mesh}"))?;
    Ok((peer, addr.parse()?))
}

/// `fogmesh_peer_bad_inputs_total{peer="PEER"}` from `GET /metrics` (0 when absent).
pub(crate) fn bad_inputs_metric(node: &TestNode, peer: &PeerId) -> Result<u64> {
    let text = node.get_text("/metrics")?;
    let label = format!("peer=\"{peer}\"");
    let Some(line) = text
        .lines()
        .find(|l| l.starts_with("fogmesh_peer_bad_inputs_total{") && l.contains(&label))
    else {
        return Ok(0);
    };
    let value = line.split_whitespace().last().context("metric value")?;
    Ok(value.parse::<f64>().with_context(|| line.to_owned())? as u64)
}

/// How long a count may take to show: the mesh layer counts asynchronously, and in CI the node
/// shares two cores with the other hostile tests' nodes (5 s was once not enough there: a second
/// bad input still read 1).
const COUNTED: Duration = Duration::from_secs(20);

/// Waits until the metric for `peer` reaches `want`.
pub(crate) fn expect_bad_inputs(node: &TestNode, peer: &PeerId, want: u64) -> Result<()> {
    let deadline = Instant::now() + COUNTED;
    loop {
        let got = bad_inputs_metric(node, peer)?;
        if got == want {
            return Ok(());
        }
        ensure!(
            got < want && Instant::now() < deadline,
            "fogmesh_peer_bad_inputs_total{{peer=\"{peer}\"}} is {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node still serves its API, and its process is alive.
pub(crate) fn assert_serving(node: &TestNode) -> Result<()> {
    let info = node
        .get("/v1/node")
        .with_context(|| format!("the node stopped serving; log:\n{}", node.log_tail()))?;
    ensure!(info["org"] == node.org.as_str(), "GET /v1/node: {info}");
    Ok(())
}

pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let kib = |f| proc_status_kib(pid, f).unwrap_or(0) as f64 / 1024.0;
    (kib("VmRSS"), kib("VmHWM"))
}

/// Sends one bad input and checks the node's reaction: no answer, the count, the disconnect once
/// the count reaches the limit, an API that still answers.
pub(crate) fn bad(
    node: &TestNode,
    client: &mut RawClient,
    what: &str,
    proto: Proto,
    bytes: Vec<u8>,
    count: u64,
) -> Result<()> {
    let size = bytes.len();
    let started = Instant::now();
    let answer = client.request(proto, bytes);
    eprintln!(
        "  [{:>6.2}s] bad input #{count} ({what}, {size} bytes on {}): {}",
        started.elapsed().as_secs_f64(),
        proto.name(),
        match &answer {
            Answer::Bytes(b) => format!("answer of {} bytes", b.len()),
            Answer::Failed(e) => format!("failed: {e}"),
        }
    );
    ensure!(answer.is_nothing(), "{what}: the node answered {answer:?}");
    expect_bad_inputs(node, &client.local, count)
        .with_context(|| format!("{what}; the node's log:\n{}", node.log_tail()))?;
    if count >= BAD_INPUT_LIMIT {
        let down = client.wait_down(PROMPT);
        let (_, cause) = down.with_context(|| {
            format!("{what}: still connected {PROMPT:?} after bad input #{count}")
        })?;
        eprintln!("    disconnected by the node: {cause}");
    } else {
        std::thread::sleep(Duration::from_millis(300));
        ensure!(
            client.is_up(),
            "{what}: disconnected after only {count} bad inputs"
        );
    }
    assert_serving(node)
}

/// The metric `name` (with its labels, if any) from `GET /metrics` (0 when absent).
pub(crate) fn metric(node: &TestNode, name: &str) -> Result<u64> {
    let text = node.get_text("/metrics")?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// `fogmesh_envelopes_rejected_total{dataset="DATASET"}` from `GET /metrics` (0 when absent).
pub(crate) fn rejected(node: &TestNode, dataset: &str) -> Result<u64> {
    metric(
        node,
        &format!("fogmesh_envelopes_rejected_total{{dataset=\"{dataset}\"}}"),
    )
}

/// Pushes one envelope; how many the node took as new (an error when it answered nothing).
pub(crate) fn push_envelope(c: &RawClient, env: &fogmesh::envelope::Envelope) -> Result<u32> {
    use fogmesh::mesh::proto::{self, Push, PushAck};
    let push = Push {
        catalog: vec![],
        access: vec![],
        envelopes: vec![serde_bytes::ByteBuf::from(env.encode())],
        evidence: vec![],
        tree: false,
    };
    let ack: PushAck = c
        .request(Proto::Push, frame(&proto::encode(&push)))
        .message()?;
    Ok(ack.accepted)
}
