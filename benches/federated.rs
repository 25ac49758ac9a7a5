//! Federated aggregate benchmark: prints figures, asserts nothing about time.
//!
//! ```text
//! cargo bench --bench federated                         # 8 owners x 100,000 rows, 50 queries
//! FOGMESH_BENCH_QUICK=1 cargo bench --bench federated   # 8 owners x 10,000 rows, 10 queries
//! ```
//!
//! Nine nodes run in this process, on 127.0.0.1 over TCP, mDNS off, each in a temporary home: a
//! requester (`agency`, which founds the mesh) and 8 owners (`owner-1` .. `owner-8`, each joined by
//! the requester's invitation). Each owner keeps a private dataset `visits` (its rows never leave
//! it) of `rows` records `district-{0..19}/ward-{0..4}/visit` with data `{cases, cost}` and times
//! spread evenly over 30 days, written in batches of 10,000 (`Node::publish`), and grants the
//! requester's app `agency/analyst` the `query` right. The requester asks `Mesh::federated` for
//!
//! - A: `group_by ["segment:0"]`, 20 groups, and
//! - B: `group_by ["segment:0", "bucket:1d"]`, 600 groups,
//!
//! each with `count, sum:cases, avg:cases, min:cost, max:cost` over the 8 datasets, 3 warm-ups
//! then `queries` timed one after the other. Every answer is checked: 8 sources answered, the
//! expected number of groups (so none was suppressed as too small), and total count, sum of cases,
//! min and max of cost equal to those of the rows written. Bytes on the wire are the
//! `/fogmesh/query/1` frames both ways as the requester's codec counts them
//! (`net::Config::meter`, `Traffic::query`), divided by the 8 owners and the queries; the
//! transport bytes (Noise, yamux included) are given beside them, with whatever else the mesh sent
//! meanwhile (pings, catch-up Hellos). The machine may be shared: the CPU time used by other
//! processes while querying is printed (from `/proc/stat`).
//!
//! Then, to see where the time goes, the steps of one query with no network: the owner's answer
//! (`Node::answer_aggregate`: copying the matching rows out of the dataset, folding them, freeing
//! the copies) at one owner, at all 8 at once and at all 8 one after another; the same copy, fold
//! and free done here on a copy of one owner's rows; encoding and signing one answer; decoding,
//! verifying and merging 8.

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses part of it
mod common;
use common::stats::{ms, thousands, Dist};
use common::wait::wait_for;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::Rng;
use libp2p::PeerId;
use serde_json::{json, Map, Value};

use fogmesh::apps::{Action, App};
use fogmesh::config::Config;
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::identity::Identity;
use fogmesh::mesh::proto::{self, Answer, QueryResponse, ANSWER_DOMAIN};
use fogmesh::mesh::{self, Mesh};
use fogmesh::naming::DatasetId;
use fogmesh::net::{self, FrameTraffic, Meter, Traffic};
use fogmesh::node::{self, home, AggregateAnswer, Batch, GrantRequest, Source};
use fogmesh::record::{Input, Record, BATCH_MAX_RECORDS};
use fogmesh::view::aggregate::{self, Aggregation, Groups};
use fogmesh::view::plan::{Plan, Shape, ViewQuery, MAX_TIMEOUT};
use fogmesh::Node;

/// Latency target (p50 of one federated query over the 8 owners).
const TARGET_P50: Duration = Duration::from_millis(200);
/// Bytes on the wire per owner per result group.
const TARGET_BYTES_PER_GROUP: f64 = 1024.0;

const OWNERS: usize = 8;
const REQUESTER: &str = "agency";
const APP: &str = "analyst";
const DATASET: &str = "visits";
const DISTRICTS: u64 = 20;
const WARDS: u64 = 5;
const DAYS: u64 = 30;
const DAY_MS: u64 = 86_400_000;
/// 2023-11-15T00:00Z: a day boundary, so `bucket:1d` makes exactly `DAYS` buckets.
const START_MS: u64 = 19_676 * DAY_MS;
const MEASURES: [&str; 5] = ["count", "sum:cases", "avg:cases", "min:cost", "max:cost"];
/// Longest wait for setup steps (roster, connections).
const SETUP: Duration = Duration::from_secs(120);

/// How many of everything.
#[derive(Debug, Clone)]
struct Sizes {
    quick: bool,
    rows: usize,
    warmup: usize,
    queries: usize,
    /// Repetitions of each no-network step.
    steps: usize,
}

impl Sizes {
    fn from_env() -> Self {
        let quick = std::env::var("FOGMESH_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        Self {
            quick,
            rows: if quick { 10_000 } else { 100_000 },
            warmup: 3,
            queries: if quick { 10 } else { 50 },
            steps: if quick { 5 } else { 10 },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

/// What an owner wrote, to check answers against.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    rows: u64,
    cases: u64,
    min_cost: u64,
    max_cost: u64,
}

impl Totals {
    const EMPTY: Self = Self {
        rows: 0,
        cases: 0,
        min_cost: u64::MAX,
        max_cost: 0,
    };

    fn add(&mut self, o: &Self) {
        self.rows += o.rows;
        self.cases += o.cases;
        self.min_cost = self.min_cost.min(o.min_cost);
        self.max_cost = self.max_cost.max(o.max_cost);
    }
}

/// Owner `owner`'s rows (deterministic), and their totals.
fn rows_of(owner: usize, n: usize) -> (Vec<Input>, Totals) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (owner as u64 + 1).wrapping_mul(0x1000_0001));
    let step = DAYS * DAY_MS / n as u64;
    let mut t = Totals::EMPTY;
    let rows = (0..n as u64)
        .map(|i| {
            let cases = rng.next() % 50;
            let cost = 10 + rng.next() % 9_990;
            t.add(&Totals {
                rows: 1,
                cases,
                min_cost: cost,
                max_cost: cost,
            });
            Input {
                id: None,
                name: format!(
                    "district-{}/ward-{}/visit",
                    i % DISTRICTS,
                    (i / DISTRICTS) % WARDS
                ),
                data: json!({ "cases": cases, "cost": cost }),
                time: Some(START_MS + i * DAYS * DAY_MS / n as u64 + rng.next() % step),
            }
        })
        .collect();
    (rows, t)
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn node_config(org: &str) -> Config {
    Config {
        org: org.into(),
        mesh: "bench-federated".into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        mdns: false,
        ..Config::default()
    }
}

/// One node in a temporary home, with its mesh and the mesh's traffic meter.
struct Member {
    node: Node,
    admin: App,
    mesh: Mesh,
    meter: Meter,
    peer: PeerId,
    _dir: tempfile::TempDir,
}

impl Member {
    async fn new(org: &str, seed: u8) -> Result<Self> {
        let dir = tempfile::tempdir().context("tempdir")?;
        let id = Identity::from_seed([seed; 32]);
        let peer = id.peer_id()?;
        home::init_with(dir.path(), node_config(org), id)
            .await
            .context("init")?;
        let node = Node::open_home(dir.path(), node_config(org)).context("open")?;
        let admin = node.authenticate(&home::admin_token(dir.path())?)?;
        let meter = Meter::new();
        let cfg = net::Config {
            meter: Some(meter.clone()),
            ..mesh::net_config(&node_config(org))?
        };
        let mesh = Mesh::start(node.clone(), cfg).await?;
        let m = &mesh;
        wait_for("listening", SETUP, || async move {
            m.status().await.is_ok_and(|s| !s.listen.is_empty())
        })
        .await?;
        Ok(Self {
            node,
            admin,
            mesh,
            meter,
            peer,
            _dir: dir,
        })
    }

    /// Whether `other` is connected, as this node's network layer sees it.
    async fn sees_up(&self, other: &PeerId) -> bool {
        let other = other.to_string();
        self.mesh
            .peers()
            .await
            .is_ok_and(|ps| ps.iter().any(|p| p.net.peer == other && p.net.up))
    }
}

/// The requester founds the mesh; each owner joins by its invitation. Returns once every member
/// has the full roster and the requester is connected to every owner.
async fn spawn_mesh() -> Result<(Member, Vec<Member>)> {
    let requester = Member::new(REQUESTER, 1).await?;
    let mut owners = Vec::new();
    for i in 1..=OWNERS {
        let m = Member::new(&format!("owner-{i}"), 1 + i as u8).await?;
        let (token, _) = requester.mesh.invite(Duration::from_secs(600)).await?;
        m.mesh.join(&token).await?;
        owners.push(m);
    }
    let n = OWNERS + 1;
    for m in std::iter::once(&requester).chain(&owners) {
        wait_for("the full roster", SETUP, || async move {
            m.mesh.status().await.is_ok_and(|s| s.members.len() == n)
        })
        .await?;
    }
    for o in &owners {
        let (r, peer) = (&requester, &o.peer);
        wait_for(
            "the requester connected to every owner",
            SETUP,
            || async move { r.sees_up(peer).await },
        )
        .await?;
    }
    Ok((requester, owners))
}

/// Creates the owner's private dataset, writes its rows in batches of 10,000 and grants the
/// requester's app the query right.
async fn load_owner(o: &Member, rows: Vec<Input>) -> Result<DatasetId> {
    let spec = Spec {
        name: DATASET.into(),
        visibility: Visibility::Private,
        priority: Priority::Normal,
        retention: Retention::default(),
        schema: None,
        readers: vec![],
        encrypted: None,
    };
    let id = o.node.create_dataset(&o.admin, spec).await?.id;
    let mut rows = rows;
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(BATCH_MAX_RECORDS));
        let b = Batch {
            records: std::mem::replace(&mut rows, rest),
            delete: vec![],
        };
        o.node.publish(&o.admin, &id, b).await?;
    }
    let g = GrantRequest {
        dataset: id.to_string(),
        to: format!("{REQUESTER}/{APP}"),
        rights: vec![Action::Query],
        prefix: None,
        expires: None,
    };
    o.node.grant(&o.admin, g).await?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing

/// The 1-minute load average, when the system tells it (this machine is shared).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// CPU time used so far, in clock ticks: by the whole machine (every process) and by this one.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    machine: u64,
    me: u64,
    at: Instant,
}

impl Cpu {
    fn now() -> Self {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .take(8)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 8).then(|| v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
            })
            .unwrap_or(0);
        let me = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // After the command name: state is field 3, utime 14, stime 15.
                let rest = s.rsplit_once(')')?.1.to_owned();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        Self {
            machine,
            me,
            at: Instant::now(),
        }
    }

    /// Cores kept busy since `earlier`, by this process and by all the others (100 ticks/s).
    fn since(&self, earlier: &Self) -> String {
        let secs = (self.at - earlier.at).as_secs_f64().max(1e-9) * 100.0;
        let me = self.me.saturating_sub(earlier.me) as f64 / secs;
        let all = self.machine.saturating_sub(earlier.machine) as f64 / secs;
        format!(
            "this process {me:.2} cores, other processes {:.2} cores",
            (all - me).max(0.0)
        )
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "MISSES target"
    }
}

// ---------------------------------------------------------------------------------------------
// The queries

/// One query shape.
struct QueryShape {
    label: &'static str,
    group_by: &'static [&'static str],
    groups: usize,
}

const SHAPES: [QueryShape; 2] = [
    QueryShape {
        label: "A",
        group_by: &["segment:0"],
        groups: DISTRICTS as usize,
    },
    QueryShape {
        label: "B",
        group_by: &["segment:0", "bucket:1d"],
        groups: (DISTRICTS * DAYS) as usize,
    },
];

fn plan_of(shape: &QueryShape, datasets: &[DatasetId]) -> Result<Plan> {
    let q = ViewQuery {
        datasets: datasets.iter().map(ToString::to_string).collect(),
        group_by: shape.group_by.iter().map(|d| (*d).to_owned()).collect(),
        aggregates: MEASURES.iter().map(|m| (*m).to_owned()).collect(),
        federated: true,
        timeout_ms: Some(MAX_TIMEOUT.as_millis() as u64),
        ..ViewQuery::default()
    };
    Ok(q.plan()?)
}

fn aggregation(plan: &Plan) -> Result<&Aggregation> {
    match &plan.shape {
        Shape::Aggregate { aggregation, .. } => Ok(aggregation),
        Shape::Rows { .. } => bail!("not an aggregate"),
    }
}

fn number(g: &Map<String, Value>, key: &str) -> Result<f64> {
    g.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("group without a numeric {key}: {g:?}"))
}

/// Checks that the answer covers every row written: all owners answered, the expected groups
/// (none suppressed), and count, sum, min and max equal to those of the rows.
fn check(a: &AggregateAnswer, groups: usize, want: &Totals) -> Result<()> {
    ensure!(a.sources.len() == OWNERS, "{} sources", a.sources.len());
    for s in &a.sources {
        ensure!(
            s.status == "answered",
            "source {} {}: {:?}",
            s.dataset,
            s.status,
            s.reason
        );
    }
    ensure!(
        a.groups.len() == groups,
        "{} groups, expected {groups}",
        a.groups.len()
    );
    let mut got = Totals::EMPTY;
    for g in &a.groups {
        got.add(&Totals {
            rows: number(g, "count")? as u64,
            cases: number(g, "sum:cases")? as u64,
            min_cost: number(g, "min:cost")? as u64,
            max_cost: number(g, "max:cost")? as u64,
        });
    }
    ensure!(got == *want, "answer totals {got:?}, rows written {want:?}");
    Ok(())
}

/// The figures of one shape.
struct Timed {
    latency: Dist,
    traffic: Traffic,
    groups: usize,
}

async fn time_queries(
    s: &Sizes,
    requester: &Member,
    app: &App,
    plan: &Plan,
    shape: &QueryShape,
    want: &Totals,
) -> Result<Timed> {
    for _ in 0..s.warmup {
        let a = requester.mesh.federated(app, plan).await?;
        check(&a, shape.groups, want).context("warm-up answer")?;
    }
    let before = requester.meter.traffic();
    let mut lat = Vec::with_capacity(s.queries);
    let mut groups = 0;
    for _ in 0..s.queries {
        let t0 = Instant::now();
        let a = requester.mesh.federated(app, plan).await?;
        lat.push(t0.elapsed());
        check(&a, shape.groups, want)?;
        groups = a.groups.len();
    }
    let traffic = requester.meter.traffic().since(&before);
    Ok(Timed {
        latency: Dist::new(lat),
        traffic,
        groups,
    })
}

fn print_timed(s: &Sizes, shape: &QueryShape, t: &Timed) -> (bool, bool) {
    let q: FrameTraffic = t.traffic.query;
    let asks = (OWNERS * s.queries) as f64;
    let per_owner = q.bytes() as f64 / asks;
    let per_group = per_owner / t.groups as f64;
    println!("  latency: {}", t.latency.line());
    println!(
        "  query frames: {} requests out, {} answers in ({} expected each); {} B out, {} B in",
        q.requests_out,
        q.responses_in,
        OWNERS * s.queries,
        thousands(q.bytes_out),
        thousands(q.bytes_in)
    );
    println!(
        "  per owner per query: request {:.0} B + answer {:.0} B = {:.0} B; per result group \
         ({} groups from each owner): {:.1} B",
        q.bytes_out as f64 / asks,
        q.bytes_in as f64 / asks,
        per_owner,
        t.groups,
        per_group
    );
    println!(
        "  transport per owner per query (Noise, yamux, and whatever else the mesh sent \
         meanwhile): {:.0} B",
        t.traffic.total() as f64 / asks
    );
    let (p50_ok, bytes_ok) = (
        t.latency.p50() <= TARGET_P50,
        per_group <= TARGET_BYTES_PER_GROUP,
    );
    println!(
        "  {}: target p50 <= {}: {} ({})   p99 {}   target <= {:.0} B per owner per group: \
         {:.1} B ({})",
        shape.label,
        ms(TARGET_P50),
        ms(t.latency.p50()),
        verdict(p50_ok),
        ms(t.latency.p99()),
        TARGET_BYTES_PER_GROUP,
        per_group,
        verdict(bytes_ok)
    );
    (p50_ok, bytes_ok)
}

// ---------------------------------------------------------------------------------------------
// Where the time goes (no network)

/// Runs `f` `n` times; the distribution of its durations and its last result.
fn repeat<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<(Dist, T)> {
    let mut lat = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let t0 = Instant::now();
        let out = f()?;
        lat.push(t0.elapsed());
        last = Some(out);
    }
    Ok((Dist::new(lat), last.context("no repetitions")?))
}

/// One owner's rows as the dataset holds them (ids of ULID length), keyed like its record map.
fn as_records(rows: &[Input]) -> Result<BTreeMap<String, Record>> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let Value::Object(data) = r.data.clone() else {
                bail!("data is an object");
            };
            let id = format!("{i:026}");
            let rec = Record {
                id: id.clone(),
                name: r.name.clone(),
                time: r.time.context("time")?,
                data,
            };
            Ok((id, rec))
        })
        .collect()
}

async fn steps(
    s: &Sizes,
    owners: &[Member],
    datasets: &[DatasetId],
    plan: &Plan,
    sample_rows: &[Input],
) -> Result<()> {
    let agg = aggregation(plan)?.clone();
    let filter = plan.filter.clone();
    let n = s.steps;

    // The owner's whole answer, at one owner, then at all 8 at once (as in a federated query),
    // then at all 8 one after another on one thread.
    let (node, id) = (owners[0].node.clone(), datasets[0].clone());
    let (agg1, f1) = (agg.clone(), filter.clone());
    let (one, groups) = tokio::task::spawn_blocking(move || {
        repeat(n, || {
            node.answer_aggregate(REQUESTER, APP, &id, &f1, &agg1)
                .map_err(|e| anyhow::anyhow!("refused: {e}"))
        })
    })
    .await??;
    let (mut all, mut serial) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let cpu = Cpu::now();
    for _ in 0..n {
        let t0 = Instant::now();
        let tasks: Vec<_> = owners
            .iter()
            .zip(datasets)
            .map(|(o, id)| {
                let (node, id, agg, f) = (o.node.clone(), id.clone(), agg.clone(), filter.clone());
                tokio::task::spawn_blocking(move || {
                    node.answer_aggregate(REQUESTER, APP, &id, &f, &agg)
                        .map(|g| g.len())
                })
            })
            .collect();
        for t in tasks {
            t.await?.map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        }
        all.push(t0.elapsed());
    }
    let all_cpu = Cpu::now().since(&cpu);
    for _ in 0..n {
        let nodes: Vec<(Node, DatasetId)> = owners
            .iter()
            .zip(datasets)
            .map(|(o, id)| (o.node.clone(), id.clone()))
            .collect();
        let (agg, f) = (agg.clone(), filter.clone());
        let took = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            for (node, id) in &nodes {
                node.answer_aggregate(REQUESTER, APP, id, &f, &agg)
                    .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
            }
            Ok::<_, anyhow::Error>(t0.elapsed())
        })
        .await??;
        serial.push(took);
    }
    let (all, serial) = (Dist::new(all), Dist::new(serial));

    // The same work done here on a copy of one owner's rows: copying the rows that pass the
    // filter out of the record map, folding them into groups, dropping the copies.
    let recs = as_records(sample_rows)?;
    let (mut copy, mut fold, mut free) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let rows: Vec<Record> = recs
            .values()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect();
        let t1 = Instant::now();
        let g = agg
            .fold(rows.iter())
            .map_err(|m| anyhow::anyhow!("more than {m} groups"))?;
        let t2 = Instant::now();
        drop(rows);
        let t3 = Instant::now();
        ensure!(g.len() == groups.len(), "{} groups folded here", g.len());
        copy.push(t1 - t0);
        fold.push(t2 - t1);
        free.push(t3 - t2);
    }
    let (copy, fold, free) = (Dist::new(copy), Dist::new(fold), Dist::new(free));
    // What an owner would spend folding the rows where they lie, without copying them.
    let (in_place, g) = repeat(n, || {
        agg.fold(recs.values().filter(|r| filter.matches(r)))
            .map_err(|m| anyhow::anyhow!("more than {m} groups"))
    })?;
    ensure!(
        g.len() == groups.len(),
        "{} groups folded in place",
        g.len()
    );

    // The owner encodes and signs its answer; the requester decodes, verifies and merges 8.
    let owner_id = Identity::from_seed([2; 32]);
    let answer = Answer::Groups {
        request: [7; 32],
        groups: groups.clone().into_iter().collect(),
    };
    let (encode, frame) = repeat(n, || {
        let body = proto::encode(&answer);
        let signature = owner_id.sign(&[ANSWER_DOMAIN, &body].concat());
        Ok(proto::encode(&QueryResponse::Answer {
            body: serde_bytes::ByteBuf::from(body),
            signature: serde_bytes::ByteBuf::from(signature.to_vec()),
        }))
    })?;
    let key = owner_id.author();
    let (merge, _) = repeat(n, || {
        let mut parts = Vec::with_capacity(OWNERS);
        for _ in 0..OWNERS {
            let QueryResponse::Answer { body, signature } =
                proto::decode::<QueryResponse>("answer", &frame)?
            else {
                bail!("refused");
            };
            let sig: [u8; 64] = signature.as_slice().try_into()?;
            ensure!(key.verify(&[ANSWER_DOMAIN, &body].concat(), &sig), "sig");
            let Answer::Groups { groups, .. } = proto::decode::<Answer>("answer", &body)? else {
                bail!("not groups");
            };
            parts.push(groups.into_iter().collect::<Groups>());
        }
        let merged = aggregate::merge_all(parts.iter());
        let sources: Vec<Source> = Vec::new();
        Ok(node::aggregate_answer(&agg, &merged, sources, usize::MAX)
            .groups
            .len())
    })?;

    println!(
        "  one owner's answer (Node::answer_aggregate, {} rows):  {}",
        thousands(sample_rows.len() as u64),
        one.line()
    );
    println!(
        "  all 8 owners' answers at once (spawn_blocking):   {}",
        all.line()
    );
    println!("    CPU meanwhile: {all_cpu}");
    println!(
        "  all 8 owners' answers one after another:          {}",
        serial.line()
    );
    println!(
        "    the same on a copy of its rows here, p50: copy the rows out {}, fold them {}, \
         free the copies {}; fold in place over the record map, no copy: {}",
        ms(copy.p50()),
        ms(fold.p50()),
        ms(free.p50()),
        ms(in_place.p50())
    );
    println!(
        "  encode + sign one answer ({} B frame):  p50 {}",
        thousands(frame.len() as u64),
        ms(encode.p50())
    );
    println!(
        "  decode + verify 8 answers, merge, finish:  p50 {}",
        ms(merge.p50())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let sizes = Sizes::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(sizes))
}

async fn run(s: Sizes) -> Result<()> {
    let started = Instant::now();
    let cpu0 = Cpu::now();
    println!("fogmesh federated aggregate benchmark");
    println!(
        "  cores: {}   quick: {}   loopback TCP, mDNS off; 1 requester + {OWNERS} owners in one \
         process",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.quick,
    );
    println!("  load average (1 min) at start: {}", load());
    println!(
        "  sizes: {} rows per owner ({} in all), {} warm-up + {} timed queries per shape",
        thousands(s.rows as u64),
        thousands((s.rows * OWNERS) as u64),
        s.warmup,
        s.queries
    );
    println!();

    let t0 = Instant::now();
    let (requester, owners) = spawn_mesh().await?;
    println!(
        "setup: mesh of {} nodes up in {:.1} s",
        OWNERS + 1,
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut want = Totals::EMPTY;
    let mut loads = Vec::new();
    let mut sample = Vec::new();
    for (i, o) in owners.iter().enumerate() {
        let (rows, t) = rows_of(i, s.rows);
        want.add(&t);
        if i == 0 {
            sample = rows.clone();
        }
        loads.push(load_owner(o, rows));
    }
    let datasets = futures::future::try_join_all(loads).await?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "setup: {} rows written at {} owners in {:.1} s ({} rows/s), query granted to \
         {REQUESTER}/{APP}",
        thousands(want.rows),
        OWNERS,
        secs,
        thousands((want.rows as f64 / secs) as u64)
    );
    let app = requester
        .node
        .add_app(&requester.admin, APP, vec![])
        .await?
        .app;
    println!();

    let mut verdicts = Vec::new();
    for shape in &SHAPES {
        let plan = plan_of(shape, &datasets)?;
        println!(
            "{}. group_by {:?}, aggregates {:?}: {} groups over {} rows",
            shape.label,
            shape.group_by,
            MEASURES,
            shape.groups,
            thousands(want.rows)
        );
        let cpu = Cpu::now();
        let t = time_queries(&s, &requester, &app, &plan, shape, &want).await?;
        println!("  CPU while querying: {}", Cpu::now().since(&cpu));
        println!(
            "  every answer checked: {} sources answered, {} groups, total count {} \
             (= rows written), sum, min and max equal to the rows'",
            OWNERS,
            t.groups,
            thousands(want.rows)
        );
        verdicts.push((shape.label, print_timed(&s, shape, &t)));
        println!("  where the time goes (no network, this process):");
        steps(&s, &owners, &datasets, &plan, &sample).await?;
        println!();
    }

    println!("summary");
    for (label, (p50, bytes)) in &verdicts {
        println!(
            "  {label}: p50 {}; bytes per owner per group {}",
            verdict(*p50),
            verdict(*bytes)
        );
    }
    for m in std::iter::once(&requester).chain(&owners) {
        m.mesh.shutdown().await;
    }
    println!(
        "  done in {:.1} s; CPU over the whole run: {}",
        started.elapsed().as_secs_f64(),
        Cpu::now().since(&cpu0)
    );
    Ok(())
}
