//! Ingest benchmark: prints figures, asserts nothing about time.
//!
//! ```text
//! cargo bench --bench ingest                          # full run
//! FOGMESH_BENCH_QUICK=1 cargo bench --bench ingest    # every size shrunk ~10x
//! FOGMESH_BENCH_RECORDS=200000 cargo bench --bench ingest   # restart test size (default 100000)
//! ```
//!
//! Measures, in one run: library ingest (`Node::publish`, durable) with batches of 1 and 100, one
//! and four writers; the same through the HTTP API on loopback; raw sled and raw Automerge
//! baselines; where the time of one library batch goes; the time to reopen a node holding
//! `FOGMESH_BENCH_RECORDS` records, with and without a final snapshot; and (section 6) the library
//! batch-100 ingest of a shared dataset sealed under an epoch key (XChaCha20-Poly1305) against the
//! same dataset kept in clear. Figures 1-5 use a private dataset, which is kept in clear.

#[path = "common/mod.rs"]
#[allow(dead_code)] // each benchmark uses part of it
mod common;
use common::stats::ms;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ReadDoc, ROOT};
use common::{pad_with_notes, Rng};
use serde_json::{json, Map, Value};

use fogmesh::access::{seal, EpochKey};
use fogmesh::apps::App;
use fogmesh::config::Config;
use fogmesh::dataset::{Priority, Retention, Spec, Visibility};
use fogmesh::envelope::Envelope;
use fogmesh::identity::Identity;
use fogmesh::naming::DatasetId;
use fogmesh::node::{home, Batch};
use fogmesh::record::{self, Input};
use fogmesh::store::Store;
use fogmesh::view::{amjson, doc};
use fogmesh::Node;

/// Target JSON size of one record's `data`.
const RECORD_BYTES: usize = 1024;
/// Library batch-100 rate target, records/s.
const TARGET_RATE: f64 = 20_000.0;
/// Library batch-100 rate / raw Automerge rate target.
const TARGET_AM_RATIO: f64 = 0.40;
/// Concurrent writers for the concurrent figures.
const WRITERS: usize = 4;
/// Sealed / clear library batch-100 rate target.
const TARGET_SEALED_RATIO: f64 = 0.90;
/// Rounds of the sealed-vs-clear comparison (each round runs both, order alternating).
const SEALING_ROUNDS: usize = 2;

/// How many records each figure uses.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    quick: bool,
    batch1: usize,
    batch100: usize,
    automerge: usize,
    restart: usize,
}

impl Sizes {
    fn from_env() -> Result<Self> {
        let quick = std::env::var("FOGMESH_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        let div = if quick { 10 } else { 1 };
        let restart = match std::env::var("FOGMESH_BENCH_RECORDS") {
            Ok(v) => v
                .trim()
                .replace('_', "")
                .parse::<usize>()
                .with_context(|| format!("FOGMESH_BENCH_RECORDS={v:?} is not a number"))?,
            Err(_) => 100_000 / div,
        };
        ensure!(restart >= 100, "FOGMESH_BENCH_RECORDS must be at least 100");
        Ok(Self {
            quick,
            batch1: 3_000 / div,
            batch100: 50_000 / div,
            automerge: 50_000 / div,
            restart: restart / 100 * 100,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Records

const TRIAGE: [&str; 3] = ["urgent", "standard", "low"];

/// The `data` of record `i`: eight fields, ~1 KiB as JSON (one long free-text field).
fn record_data(i: u64, rng: &mut Rng) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("patient_age".into(), json!(i * 7 % 90));
    m.insert(
        "temperature_c".into(),
        json!(36.5 + (i % 40) as f64 / 10.0 + 0.05),
    );
    m.insert("ward_beds".into(), json!(20 + i % 30));
    m.insert("admitted".into(), json!(i % 3 != 0));
    m.insert("triage".into(), json!(TRIAGE[(i % 3) as usize]));
    m.insert("facility".into(), json!("st-marys-general"));
    m.insert("lab_code".into(), json!("FLU-A-H3N2"));
    pad_with_notes(&mut m, RECORD_BYTES, rng);
    m
}

fn record_name(i: u64) -> String {
    format!("district-{}/ward-{}/flu-admission", i % 64, (i / 64) % 16)
}

/// `count` records starting at number `first`, cut into batches of `batch`.
fn make_batches(first: u64, count: usize, batch: usize) -> Vec<Vec<Input>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ first.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let mut out = Vec::with_capacity(count.div_ceil(batch));
    let mut cur = Vec::with_capacity(batch);
    for i in first..first + count as u64 {
        cur.push(Input {
            name: record_name(i),
            data: Value::Object(record_data(i, &mut rng)),
            time: None,
            id: None,
        });
        if cur.len() == batch {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(batch)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `count` records into `writers` equal shares of whole batches.
fn shares(first: u64, count: usize, batch: usize, writers: usize) -> Vec<Vec<Vec<Input>>> {
    let per = count / writers / batch * batch;
    (0..writers)
        .map(|w| make_batches(first + (w * per) as u64, per, batch))
        .collect()
}

fn records_in(batches: &[Vec<Vec<Input>>]) -> usize {
    batches.iter().flatten().map(Vec::len).sum()
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// The dataset a bench node writes to, and whether its envelopes are sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    /// Private, default encryption (`None`): kept in clear. Figures 1-5.
    PrivateClear,
    /// Shared (no readers), `encrypted: Some(true)`: payloads sealed with XChaCha20-Poly1305.
    SharedSealed,
    /// Shared (no readers), `encrypted: Some(false)`: the same dataset in clear.
    SharedClear,
}

impl Setting {
    fn label(self) -> &'static str {
        match self {
            Self::PrivateClear => "private dataset, clear (encryption off)",
            Self::SharedSealed => "shared dataset, sealed (encryption on)",
            Self::SharedClear => "shared dataset, clear (encrypted: false)",
        }
    }

    fn sealed(self) -> bool {
        self == Self::SharedSealed
    }

    fn spec(self) -> Spec {
        let (visibility, encrypted) = match self {
            Self::PrivateClear => (Visibility::Private, None),
            Self::SharedSealed => (Visibility::Shared, Some(true)),
            Self::SharedClear => (Visibility::Shared, Some(false)),
        };
        Spec {
            name: "flu-admissions".into(),
            visibility,
            priority: Priority::Normal,
            retention: Retention::default(),
            schema: None,
            readers: vec![],
            encrypted,
        }
    }
}

/// A node in a temporary home, with its admin app and one dataset.
struct BenchNode {
    node: Node,
    admin: App,
    token: String,
    ds: DatasetId,
    config: Config,
    dir: tempfile::TempDir,
}

fn bench_config(snapshot_every: Option<u64>) -> Config {
    let mut c = Config {
        org: "hospital".into(),
        mesh: "bench".into(),
        ..Config::default()
    };
    if let Some(s) = snapshot_every {
        c.snapshot_every = s;
    }
    c
}

impl BenchNode {
    async fn new(config: Config, setting: Setting) -> Result<Self> {
        let dir = tempfile::tempdir().context("tempdir")?;
        home::init_with(dir.path(), config.clone(), Identity::from_seed([7; 32]))
            .await
            .context("init")?;
        let token = home::admin_token(dir.path()).context("admin token")?;
        let node = Node::open_home(dir.path(), config.clone()).context("open")?;
        let admin = node.authenticate(&token).context("authenticate")?;
        let meta = node
            .create_dataset(&admin, setting.spec())
            .await
            .context("create dataset")?;
        ensure!(
            meta.encrypted == setting.sealed(),
            "{}: dataset created with encrypted = {}",
            setting.label(),
            meta.encrypted
        );
        Ok(Self {
            node,
            admin,
            token,
            ds: meta.id,
            config,
            dir,
        })
    }

    fn records(&self) -> usize {
        self.node
            .datasets(&self.admin)
            .iter()
            .find(|d| d.meta.id == self.ds)
            .map_or(0, |d| d.records)
    }
}

/// Rate and per-call latencies of one figure.
struct Figure {
    records: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Median per-call latency.
    fn p50(&self) -> Duration {
        let mut lat = self.lat.clone();
        lat.sort();
        lat.get(lat.len() / 2).copied().unwrap_or_default()
    }

    /// Several runs of one figure as one: records and time summed, latencies pooled.
    fn pooled(runs: &[Figure]) -> Figure {
        Figure {
            records: runs.iter().map(|f| f.records).sum(),
            elapsed: runs.iter().map(|f| f.elapsed).sum(),
            lat: runs.iter().flat_map(|f| f.lat.iter().copied()).collect(),
        }
    }

    fn line(&self, label: &str) -> String {
        let mut lat = self.lat.clone();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        format!(
            "{label:<42} {:>10} rec/s   ({} records in {:.2} s; per call p50 {} p99 {})",
            thousands(self.rate()),
            thousands(self.records as f64),
            self.elapsed.as_secs_f64(),
            ms(pct(0.50)),
            ms(pct(0.99)),
        )
    }
}

fn thousands(x: f64) -> String {
    common::stats::thousands(x.round() as u64)
}

/// Lets background work (snapshots, flusher threads) of a dropped node finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------------------------
// 1. Library

async fn lib_figure(
    count: usize,
    batch: usize,
    writers: usize,
    setting: Setting,
) -> Result<Figure> {
    let b = BenchNode::new(bench_config(None), setting).await?;
    // Warm-up (untimed): creates the records map and touches every path once.
    for w in make_batches(10_000_000, batch, batch) {
        b.node
            .publish(
                &b.admin,
                &b.ds,
                Batch {
                    records: w,
                    delete: vec![],
                },
            )
            .await?;
    }
    let work = shares(0, count, batch, writers);
    let records = records_in(&work);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for share in work {
        let (node, admin, ds) = (b.node.clone(), b.admin.clone(), b.ds.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(share.len());
            for recs in share {
                let t = Instant::now();
                node.publish(
                    &admin,
                    &ds,
                    Batch {
                        records: recs,
                        delete: vec![],
                    },
                )
                .await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let have = b.records();
    ensure!(
        have == records + batch,
        "library holds {have} records, expected {}",
        records + batch
    );
    drop(b);
    settle().await;
    Ok(Figure {
        records,
        elapsed,
        lat,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. HTTP

fn http_body(recs: &[Input]) -> Result<Vec<u8>> {
    let records: Vec<Value> = recs
        .iter()
        .map(|r| json!({"name": r.name, "data": r.data}))
        .collect();
    Ok(serde_json::to_vec(&json!({ "records": records }))?)
}

fn post(agent: &ureq::Agent, url: &str, auth: &str, body: &[u8]) -> Result<()> {
    match agent
        .post(url)
        .set("Authorization", auth)
        .set("Content-Type", "application/json")
        .send_bytes(body)
    {
        Ok(resp) => {
            let text = resp.into_string()?;
            ensure!(
                text.starts_with("{\"ids\""),
                "unexpected reply: {text:.200}"
            );
            Ok(())
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            bail!("HTTP {code}: {text:.300}")
        }
        Err(e) => Err(e.into()),
    }
}

async fn http_figure(count: usize, batch: usize, writers: usize) -> Result<Figure> {
    let b = BenchNode::new(bench_config(None), Setting::PrivateClear).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fogmesh::api::serve(
        listener,
        b.node.clone(),
        None,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let url = Arc::new(format!(
        "http://{addr}/v1/datasets/{}/{}/records",
        b.ds.owner(),
        b.ds.name()
    ));
    let auth = Arc::new(format!("Bearer {}", b.token));

    // Request bodies are built before the clock starts: client-side JSON is not the node's cost.
    let mut bodies = Vec::new();
    for share in shares(0, count, batch, writers) {
        let mut v = Vec::with_capacity(share.len());
        for recs in &share {
            v.push((recs.len(), http_body(recs)?));
        }
        bodies.push(v);
    }
    let records: usize = bodies.iter().flatten().map(|(n, _)| n).sum();
    let agents: Vec<ureq::Agent> = (0..writers)
        .map(|_| {
            ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build()
        })
        .collect();
    // Warm-up (untimed): one batch per client, which also opens its keep-alive connection.
    for (w, agent) in agents.iter().enumerate() {
        let (agent, url, auth) = (agent.clone(), url.clone(), auth.clone());
        let body = http_body(&make_batches(10_000_000 + (w * batch) as u64, batch, batch)[0])?;
        tokio::task::spawn_blocking(move || post(&agent, &url, &auth, &body)).await??;
    }

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (share, agent) in bodies.into_iter().zip(agents) {
        let (url, auth) = (url.clone(), auth.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut lat = Vec::with_capacity(share.len());
            for (_, body) in share {
                let t = Instant::now();
                post(&agent, &url, &auth, &body)?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let have = b.records();
    ensure!(
        have == records + writers * batch,
        "HTTP node holds {have} records, expected {}",
        records + writers * batch
    );
    let _ = stop_tx.send(());
    server.await??;
    drop(b);
    settle().await;
    Ok(Figure {
        records,
        elapsed,
        lat,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Baselines

/// sled with the same configuration as `fogmesh::store::Store`; one flush per batch.
fn sled_figure(count: usize, batch: usize) -> Result<Figure> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(256 * 1024 * 1024)
        .flush_every_ms(Some(1_000))
        .open()?;
    let tree = db.open_tree("envelopes")?;
    let values: Vec<Vec<Vec<u8>>> = make_batches(0, count, batch)
        .iter()
        .map(|b| {
            b.iter()
                .map(|r| serde_json::to_vec(&r.data).unwrap_or_default())
                .collect()
        })
        .collect();
    let mut key = 0u64;
    let mut lat = Vec::with_capacity(values.len());
    let start = Instant::now();
    for b in &values {
        let t = Instant::now();
        for v in b {
            key += 1;
            tree.insert(key.to_be_bytes(), v.as_slice())?;
        }
        db.flush()?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    ensure!(tree.len() == count, "sled holds {} values", tree.len());
    Ok(Figure {
        records: count,
        elapsed,
        lat,
    })
}

/// Raw Automerge: one transaction per batch, the library's document layout, no I/O.
/// With `extract`, also fetches each committed change's bytes the way the library does.
/// How the raw Automerge baseline writes a record.
#[derive(Clone, Copy)]
enum AmWrite {
    /// One `put` per field, as a hand-written app would.
    Puts,
    /// One `batch_create_object` per record, each directly under the root (fogmesh's layout
    /// before pages).
    Batch,
    /// One `batch_create_object` per batch: a new page map holding the batch's records (what
    /// fogmesh does for new records).
    Page,
}

/// One record as a hydrate value, for [`AmWrite::Batch`].
fn hydrate_record(r: &Input, ms: u64) -> automerge::hydrate::Value {
    use automerge::hydrate;
    let data: std::collections::HashMap<String, hydrate::Value> = match &r.data {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), amjson::to_scalar(v).into()))
            .collect(),
        _ => Default::default(),
    };
    let rec = std::collections::HashMap::from([
        ("name".to_owned(), hydrate::Value::from(r.name.as_str())),
        ("time".to_owned(), hydrate::Value::from(ms)),
        ("data".to_owned(), hydrate::Map::from(data).into()),
    ]);
    hydrate::Map::from(rec).into()
}

fn automerge_figure(
    count: usize,
    batch: usize,
    extract: bool,
    how: AmWrite,
) -> Result<(Figure, usize)> {
    let batches = make_batches(0, count, batch);
    let mut d = Automerge::new().with_actor(ActorId::from([7u8; 32].as_slice()));
    let mut change_bytes = 0usize;
    let mut lat = Vec::with_capacity(batches.len());
    let start = Instant::now();
    for b in &batches {
        let t = Instant::now();
        let ms = now_ms();
        let mut tx = d.transaction();
        match how {
            AmWrite::Page => {
                let page: std::collections::HashMap<String, automerge::hydrate::Value> = b
                    .iter()
                    .map(|r| (record::new_id(ms), hydrate_record(r, ms)))
                    .collect();
                let page = automerge::hydrate::Map::from(page).into();
                let key = format!("p.{}", record::new_id(ms));
                tx.batch_create_object(&ROOT, key.as_str(), &page, false)?;
            }
            AmWrite::Batch => {
                for r in b {
                    let id = record::new_id(ms);
                    tx.batch_create_object(&ROOT, id.as_str(), &hydrate_record(r, ms), false)?;
                }
            }
            AmWrite::Puts => {
                for r in b {
                    let id = record::new_id(ms);
                    let rec = tx.put_object(&ROOT, id.as_str(), ObjType::Map)?;
                    tx.put(&rec, "name", r.name.as_str())?;
                    tx.put(&rec, "time", ms)?;
                    let data = tx.put_object(&rec, "data", ObjType::Map)?;
                    if let Value::Object(m) = &r.data {
                        for (k, v) in m {
                            tx.put(&data, k.as_str(), amjson::to_scalar(v))?;
                        }
                    }
                }
            }
        }
        let (hash, _) = tx.commit();
        if extract {
            let h = hash.context("empty change")?;
            let c = d.get_change_by_hash(&h).context("change not found")?;
            change_bytes += c.raw_bytes().len();
        }
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    Ok((
        Figure {
            records: count,
            elapsed,
            lat,
        },
        change_bytes,
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// Where one library batch spends its time: the steps of `Node::publish`, run one by one.

#[derive(Default)]
struct Pieces {
    validate: Duration,
    to_upserts: Duration,
    doc_write: Duration,
    seal: Duration,
    store_put: Duration,
    durable: Duration,
    refresh: Duration,
    batches: usize,
    records: usize,
    change_bytes: usize,
}

async fn pieces(count: usize, batch: usize) -> Result<Pieces> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let id = Identity::from_seed([7; 32]);
    let ds = DatasetId::new("hospital", "flu-admissions")?;
    let mut d = doc::Doc::new(id.author().as_bytes());
    let mut p = Pieces::default();
    let mut prev = fogmesh::envelope::GENESIS;
    for (seq, b) in make_batches(0, count, batch).into_iter().enumerate() {
        let t = Instant::now();
        record::validate_batch(&b, &[])?;
        p.validate += t.elapsed();

        let t = Instant::now();
        let ms = now_ms();
        let ups: Vec<doc::Upsert> = b
            .into_iter()
            .map(|i| doc::Upsert {
                id: record::new_id(ms),
                name: i.name,
                time: ms,
                data: match i.data {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
            })
            .collect();
        p.to_upserts += t.elapsed();

        let t = Instant::now();
        let change = d.write(&ups, &[])?.context("no change")?;
        p.doc_write += t.elapsed();
        p.change_bytes += change.len();

        let t = Instant::now();
        let env = Envelope::seal(&id, ds.clone(), seq as u64 + 1, 0, ms, prev, change);
        prev = env.digest();
        p.seal += t.elapsed();

        let t = Instant::now();
        store.put_envelope(&env)?;
        p.store_put += t.elapsed();

        let t = Instant::now();
        store.durable().await?;
        p.durable += t.elapsed();

        // The library builds a new record's materialized form from the upsert, not by reading
        // the document back.
        let t = Instant::now();
        for u in &ups {
            let r = record::Record {
                id: u.id.clone(),
                name: u.name.clone(),
                time: u.time,
                data: u.data.clone(),
            };
            std::hint::black_box(r);
        }
        p.refresh += t.elapsed();

        p.batches += 1;
        p.records += ups.len();
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// 5. Restart

struct Restart {
    write: Duration,
    /// Time to write each successive 10,000 records (100 batches).
    chunks: Vec<Duration>,
    shutdown: Option<Duration>,
    reopen: Duration,
    records: usize,
    envelopes: u64,
    snapshot_covers: u64,
    snapshot_bytes: usize,
    replayed: usize,
    disk_bytes: u64,
    load_doc: Duration,
    materialize: Duration,
}

/// Opens the store of a closed node, waiting for the previous owner's threads to let go of it.
async fn open_store_retry(path: &Path) -> Result<Store> {
    let mut last = None;
    for _ in 0..40 {
        match Store::open(path) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("store did not open"), Into::into))
}

async fn restart(count: usize, final_snapshot: bool) -> Result<Restart> {
    let batches = count / 100;
    // Without a final snapshot: no snapshot is due before the last batch either.
    let snapshot_every = if final_snapshot {
        None
    } else {
        Some(batches as u64 + 1_000)
    };
    let b = BenchNode::new(bench_config(snapshot_every), Setting::PrivateClear).await?;
    let start = Instant::now();
    let mut chunks = Vec::new();
    for chunk in (0..batches).collect::<Vec<_>>().chunks(100) {
        // Generate 100 batches at a time to keep memory flat.
        let first = chunk[0] as u64 * 100;
        let made = make_batches(first, chunk.len() * 100, 100);
        let t = Instant::now();
        for recs in made {
            b.node
                .publish(
                    &b.admin,
                    &b.ds,
                    Batch {
                        records: recs,
                        delete: vec![],
                    },
                )
                .await?;
        }
        chunks.push(t.elapsed());
    }
    let write = start.elapsed();
    ensure!(b.records() == count, "wrote {} records", b.records());
    let shutdown = if final_snapshot {
        let t = Instant::now();
        b.node.shutdown().await?;
        Some(t.elapsed())
    } else {
        None
    };
    let BenchNode {
        node,
        admin,
        token,
        ds,
        config,
        dir,
    } = b;
    drop((node, admin));
    settle().await;

    // What is on disk, and how long the pieces of a restart take (untimed for the reopen figure).
    let data = dir.path().join(home::DATA_DIR);
    let (snapshot_covers, snapshot_bytes, replayed, disk_bytes, load_doc, materialize) = {
        let store = open_store_retry(&data).await?;
        let snap = store.snapshot(&ds)?;
        let covers = snap.as_ref().map_or(0, |s| s.vv.total());
        let bytes = snap.as_ref().map_or(0, |s| s.doc.len());
        let envs = store.envelope_count(&ds);
        let disk = store.size_on_disk();
        let (load, mat) = match &snap {
            Some(s) => {
                let t = Instant::now();
                let mut d = doc::Doc::load(&s.doc, &[0; 32])?;
                let load = t.elapsed();
                let t = Instant::now();
                let n = d.read_all().len();
                std::hint::black_box(n);
                (load, t.elapsed())
            }
            None => (Duration::ZERO, Duration::ZERO),
        };
        (
            covers,
            bytes,
            envs.saturating_sub(covers as usize),
            disk,
            load,
            mat,
        )
    };
    settle().await;

    let mut reopened = None;
    let mut reopen = Duration::ZERO;
    for _ in 0..40 {
        let t = Instant::now();
        match Node::open_home(dir.path(), config.clone()) {
            Ok(n) => {
                reopen = t.elapsed();
                reopened = Some(n);
                break;
            }
            // A store still held by a thread of the dropped node: wait and retry.
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let node = reopened.context("reopen failed")?;
    let admin = node.authenticate(&token)?;
    let info = node
        .datasets(&admin)
        .into_iter()
        .find(|d| d.meta.id == ds)
        .context("dataset missing after reopen")?;
    drop((node, admin));
    settle().await;
    Ok(Restart {
        write,
        chunks,
        shutdown,
        reopen,
        records: info.records,
        envelopes: info.envelopes,
        snapshot_covers,
        snapshot_bytes,
        replayed,
        disk_bytes,
        load_doc,
        materialize,
    })
}

// ---------------------------------------------------------------------------------------------
// 6. Encryption on and off

/// XChaCha20-Poly1305 alone on the payloads of library batches, mean per batch.
struct SealCost {
    seal: Duration,
    open: Duration,
    batches: usize,
    change_bytes: usize,
}

/// Seals and opens (`fogmesh::access::seal`, as `write_local` and a receiver do) the change bytes
/// of `count` records written in batches of `batch` to a fresh document (the writes untimed).
fn seal_cost(count: usize, batch: usize) -> Result<SealCost> {
    let id = Identity::from_seed([7; 32]);
    let author = id.author();
    let ds = DatasetId::new("hospital", "flu-admissions")?;
    let mut d = doc::Doc::new(author.as_bytes());
    let mut changes = Vec::new();
    for b in make_batches(0, count, batch) {
        let ms = now_ms();
        let ups: Vec<doc::Upsert> = b
            .into_iter()
            .map(|i| doc::Upsert {
                id: record::new_id(ms),
                name: i.name,
                time: ms,
                data: match i.data {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
            })
            .collect();
        changes.push(d.write(&ups, &[])?.context("no change")?);
    }
    let key = EpochKey::generate();
    let slot = |seq: usize| seal::Slot {
        dataset: &ds,
        author: &author,
        seq: seq as u64 + 1,
        epoch: 1,
    };
    let t = Instant::now();
    let sealed: Vec<Vec<u8>> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| seal::seal(&key, slot(i), c))
        .collect();
    let seal_time = t.elapsed();
    let t = Instant::now();
    for (i, c) in sealed.iter().enumerate() {
        let plain = seal::open(&key, slot(i), c)?;
        ensure!(plain.len() == changes[i].len(), "opened payload differs");
    }
    let open_time = t.elapsed();
    let n = changes.len().max(1) as u32;
    Ok(SealCost {
        seal: seal_time / n,
        open: open_time / n,
        batches: changes.len(),
        change_bytes: changes.iter().map(Vec::len).sum::<usize>() / changes.len().max(1),
    })
}

/// The library batch-100 figure for `writers` writers on a sealed and a clear shared dataset,
/// `SEALING_ROUNDS` rounds with the order alternating; prints each run and the pooled comparison.
/// Returns the pooled (clear, sealed) figures.
async fn sealed_vs_clear(s: &Sizes, writers: usize) -> Result<(Figure, Figure)> {
    let (mut clear, mut sealed) = (Vec::new(), Vec::new());
    for round in 1..=SEALING_ROUNDS {
        let order = if round % 2 == 1 {
            [Setting::SharedClear, Setting::SharedSealed]
        } else {
            [Setting::SharedSealed, Setting::SharedClear]
        };
        for setting in order {
            let f = lib_figure(s.batch100, 100, writers, setting).await?;
            let what = if setting.sealed() { "sealed" } else { "clear" };
            println!(
                "{}",
                f.line(&format!(
                    "  {what} batch=100 writers={writers} round {round}:"
                ))
            );
            if setting.sealed() {
                sealed.push(f);
            } else {
                clear.push(f);
            }
        }
    }
    let (c, e) = (Figure::pooled(&clear), Figure::pooled(&sealed));
    let ratio = e.rate() / c.rate();
    println!(
        "  => writers={writers}: clear {} rec/s, sealed {} rec/s (pooled over {SEALING_ROUNDS} rounds); \
         sealed/clear {ratio:.3} (target >= {TARGET_SEALED_RATIO:.2}: {}); per call p50 {} -> {} ({:+.2} ms)",
        thousands(c.rate()),
        thousands(e.rate()),
        verdict(ratio >= TARGET_SEALED_RATIO),
        ms(c.p50()),
        ms(e.p50()),
        (e.p50().as_secs_f64() - c.p50().as_secs_f64()) * 1e3,
    );
    Ok((c, e))
}

// ---------------------------------------------------------------------------------------------

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets target"
    } else {
        "BELOW target"
    }
}

fn main() -> Result<()> {
    let sizes = Sizes::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(sizes))
}

async fn run(s: Sizes) -> Result<()> {
    let sample = make_batches(0, 1_000, 1_000);
    let avg_json: f64 = sample[0]
        .iter()
        .map(|r| serde_json::to_vec(&r.data).map_or(0, |b| b.len()) as f64)
        .sum::<f64>()
        / 1_000.0;
    println!("fogmesh ingest benchmark");
    println!(
        "  cores: {}   quick: {}   record data: {avg_json:.0} B JSON, 8 fields   example name: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        s.quick,
        record_name(1234),
    );
    println!(
        "  sizes: batch=1 {} records, batch=100 {} records, automerge {} records, restart {} records",
        thousands(s.batch1 as f64),
        thousands(s.batch100 as f64),
        thousands(s.automerge as f64),
        thousands(s.restart as f64),
    );
    println!("  every figure starts on a fresh node/store after one untimed warm-up batch");
    let clear = Setting::PrivateClear.label();
    println!("  figures 1-5: {clear}; figure 6: encryption on and off");
    println!();

    println!("1. library: Node::publish, durable (group-committed sled flush) before it returns");
    println!("   dataset: {clear}");
    let lib_1_1 = lib_figure(s.batch1, 1, 1, Setting::PrivateClear).await?;
    println!("{}", lib_1_1.line("ingest lib batch=1 writers=1:"));
    let lib_1_4 = lib_figure(s.batch1, 1, WRITERS, Setting::PrivateClear).await?;
    println!("{}", lib_1_4.line("ingest lib batch=1 writers=4:"));
    let lib_100_1 = lib_figure(s.batch100, 100, 1, Setting::PrivateClear).await?;
    println!("{}", lib_100_1.line("ingest lib batch=100 writers=1:"));
    let lib_100_4 = lib_figure(s.batch100, 100, WRITERS, Setting::PrivateClear).await?;
    println!("{}", lib_100_4.line("ingest lib batch=100 writers=4:"));
    println!();

    println!("2. HTTP: POST /v1/datasets/{{owner}}/{{name}}/records on 127.0.0.1, ureq keep-alive clients");
    println!("   dataset: {clear}");
    let http_1_1 = http_figure(s.batch1, 1, 1).await?;
    println!("{}", http_1_1.line("ingest http batch=1 clients=1:"));
    let http_1_4 = http_figure(s.batch1, 1, WRITERS).await?;
    println!("{}", http_1_4.line("ingest http batch=1 clients=4:"));
    let http_100_1 = http_figure(s.batch100, 100, 1).await?;
    println!("{}", http_100_1.line("ingest http batch=100 clients=1:"));
    let http_100_4 = http_figure(s.batch100, 100, WRITERS).await?;
    println!("{}", http_100_4.line("ingest http batch=100 clients=4:"));
    println!();

    println!("3. baselines");
    let (b1, b100) = (s.batch1, s.batch100);
    let sled_1 = tokio::task::spawn_blocking(move || sled_figure(b1, 1)).await??;
    println!("{}", sled_1.line("raw sled insert+flush batch=1:"));
    let sled_100 = tokio::task::spawn_blocking(move || sled_figure(b100, 100)).await??;
    println!("{}", sled_100.line("raw sled insert+flush batch=100:"));
    let n = s.automerge;
    let puts = move || automerge_figure(n, 100, false, AmWrite::Puts);
    let (am, _) = tokio::task::spawn_blocking(puts).await??;
    println!("{}", am.line("raw automerge map puts b=100:"));
    let extract = move || automerge_figure(n, 100, true, AmWrite::Puts);
    let (am_x, am_bytes) = tokio::task::spawn_blocking(extract).await??;
    println!("{}", am_x.line("raw automerge puts + change bytes b=100:"));
    let batch = move || automerge_figure(n, 100, false, AmWrite::Batch);
    let (am_b, _) = tokio::task::spawn_blocking(batch).await??;
    println!("{}", am_b.line("raw automerge batch_create_object b=100:"));
    let page = move || automerge_figure(n, 100, true, AmWrite::Page);
    let (am_p, _) = tokio::task::spawn_blocking(page).await??;
    println!("{}", am_p.line("raw automerge one page per batch + bytes:"));
    println!(
        "  (change bytes per record: {:.0} B for {avg_json:.0} B of JSON)",
        am_bytes as f64 / n as f64
    );
    println!();

    println!("4. ratios");
    let r1 = lib_100_1.rate() / am.rate();
    let r4 = lib_100_4.rate() / am.rate();
    println!(
        "  lib batch=100 writers=1 / raw automerge:  {r1:.2}  (target >= {TARGET_AM_RATIO:.2}: {})",
        verdict(r1 >= TARGET_AM_RATIO)
    );
    println!(
        "  lib batch=100 writers=4 / raw automerge:  {r4:.2}  (target >= {TARGET_AM_RATIO:.2}: {})",
        verdict(r4 >= TARGET_AM_RATIO)
    );
    let rb = lib_100_1.rate() / am_b.rate();
    println!("  lib batch=100 writers=1 / raw automerge batch_create_object:  {rb:.2}");
    let rp = lib_100_1.rate() / am_p.rate();
    println!("  lib batch=100 writers=1 / raw automerge one page per batch:   {rp:.2}");
    for (label, f) in [("writers=1", &lib_100_1), ("writers=4", &lib_100_4)] {
        println!(
            "  lib batch=100 {label} vs {} rec/s target: {} rec/s = {:.2}x ({})",
            thousands(TARGET_RATE),
            thousands(f.rate()),
            f.rate() / TARGET_RATE,
            verdict(f.rate() >= TARGET_RATE)
        );
    }
    println!(
        "  lib / raw sled, batch=1   (writers=1): {:.2}   (writers=4: {:.2})",
        lib_1_1.rate() / sled_1.rate(),
        lib_1_4.rate() / sled_1.rate()
    );
    println!(
        "  lib / raw sled, batch=100 (writers=1): {:.2}   (writers=4: {:.2})",
        lib_100_1.rate() / sled_100.rate(),
        lib_100_4.rate() / sled_100.rate()
    );
    println!(
        "  http / lib, batch=1: {:.2} (1 client), {:.2} (4);  batch=100: {:.2} (1 client), {:.2} (4)",
        http_1_1.rate() / lib_1_1.rate(),
        http_1_4.rate() / lib_1_4.rate(),
        http_100_1.rate() / lib_100_1.rate(),
        http_100_4.rate() / lib_100_4.rate(),
    );
    println!();

    println!("where one library batch of 100 goes (publish's steps run one by one, fresh doc, mean per batch):");
    println!("   dataset: {clear} (no encryption step; see 6 for XChaCha20-Poly1305 alone)");
    let p = pieces(s.batch100, 100).await?;
    let per = |d: Duration| d / p.batches.max(1) as u32;
    let total =
        p.validate + p.to_upserts + p.doc_write + p.seal + p.store_put + p.durable + p.refresh;
    let lib_per_batch = lib_100_1.elapsed / (lib_100_1.records / 100).max(1) as u32;
    for (name, d) in [
        ("validate_batch (incl. JSON re-serialize)", p.validate),
        ("inputs -> upserts (ULIDs)", p.to_upserts),
        ("doc::write (Automerge tx + change bytes)", p.doc_write),
        ("Envelope::seal (ed25519 over the change)", p.seal),
        ("store.put_envelope (encode + sled insert)", p.store_put),
        ("store.durable (group flush)", p.durable),
        ("materialize the 100 new records", p.refresh),
    ] {
        println!(
            "  {name:<44} {:>10}  {:>5.1}%",
            ms(per(d)),
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!(
        "  {:<44} {:>10}   (library publish measured above: {} per batch; {} rec/s if steps alone)",
        "sum",
        ms(per(total)),
        ms(lib_per_batch),
        thousands(p.records as f64 / total.as_secs_f64()),
    );
    println!(
        "  envelope payload: {:.0} B per record",
        p.change_bytes as f64 / p.records.max(1) as f64
    );
    println!();

    println!(
        "5. restart with {} records (batches of 100, one writer; {clear})",
        thousands(s.restart as f64)
    );
    let a = restart(s.restart, true).await?;
    println!(
        "  after shutdown (snapshot): reopen {:>9}   records visible {} of {}  envelopes {}  \
         (snapshot covers {} envelopes, {}; {} replayed)",
        ms(a.reopen),
        thousands(a.records as f64),
        thousands(s.restart as f64),
        a.envelopes,
        a.snapshot_covers,
        mib(a.snapshot_bytes as u64),
        a.replayed,
    );
    println!(
        "      write {:.2} s ({} rec/s), shutdown {}, store on disk {}; pieces: Doc::load {}, \
         read all records {}",
        a.write.as_secs_f64(),
        thousands(s.restart as f64 / a.write.as_secs_f64()),
        a.shutdown.map_or_else(|| "-".into(), ms),
        mib(a.disk_bytes),
        ms(a.load_doc),
        ms(a.materialize),
    );
    if let (Some(first), Some(last)) = (a.chunks.first(), a.chunks.last()) {
        let rate = |d: &Duration| thousands(10_000.0 / d.as_secs_f64());
        println!(
            "      while the document grows: first 10,000 records written at {} rec/s, last \
             10,000 at {} rec/s",
            rate(first),
            rate(last)
        );
    }
    let b = restart(s.restart, false).await?;
    println!(
        "  without final snapshot:    reopen {:>9}   records visible {} of {}  envelopes {}  \
         (snapshot covers {} envelopes; {} replayed)",
        ms(b.reopen),
        thousands(b.records as f64),
        thousands(s.restart as f64),
        b.envelopes,
        b.snapshot_covers,
        b.replayed,
    );
    println!(
        "      write {:.2} s ({} rec/s), store on disk {}",
        b.write.as_secs_f64(),
        thousands(s.restart as f64 / b.write.as_secs_f64()),
        mib(b.disk_bytes),
    );
    for (label, r) in [("with snapshot", &a), ("without", &b)] {
        if r.records != s.restart {
            println!(
                "  WARNING ({label}): {} records visible after reopen, {} written",
                r.records, s.restart
            );
        }
    }
    println!();

    println!(
        "6. encryption on and off: library ingest (Node::publish, batch=100, durable) of a shared \
         dataset (no readers)"
    );
    println!(
        "   sealed: {}; clear: {}; fresh node per run, {} records per run",
        Setting::SharedSealed.label(),
        Setting::SharedClear.label(),
        thousands(s.batch100 as f64),
    );
    sealed_vs_clear(&s, 1).await?;
    sealed_vs_clear(&s, WRITERS).await?;
    let n = s.batch100.min(20_000);
    let c = tokio::task::spawn_blocking(move || seal_cost(n, 100)).await??;
    println!(
        "  XChaCha20-Poly1305 alone, mean per batch of 100 ({} B change, {} batches): seal {}, open {}",
        thousands(c.change_bytes as f64),
        c.batches,
        ms(c.seal),
        ms(c.open),
    );
    Ok(())
}
