//! Seeded simulation of replication without sockets: 20 real nodes (each its own store and
//! documents) in one process, five of them owning a sealed shared dataset every other node
//! replicates (the first also written by three granted members, which create records while its
//! owner updates and deletes them). Writers push each envelope to every node over a simulated
//! network that loses, duplicates and
//! reorders messages and splits the nodes into partitions; nodes catch up with random peers on
//! their side, driven by the same catch-up state machine the mesh uses (`mesh::plan::Catchup`),
//! over pages that are themselves lost or duplicated. Then the network heals and every node
//! catches up. Checked: every node holds exactly the owner's records of every dataset, and every
//! acknowledged write is there with its last value.
//!
//! `FOGMESH_SIM_SEED=N` replays one seed; `FOGMESH_SIM_SEEDS=K` runs seeds 1..=K (default 2);
//! `FOGMESH_SIM_NODES`, `FOGMESH_SIM_ROUNDS` change the size. A failing run names its seed.

use std::collections::{BTreeMap, BTreeSet};

use fogmesh::apps::Action;
use fogmesh::envelope::Envelope;
use fogmesh::mesh::plan::{Catchup, Page};
use fogmesh::mesh::proto::{MAX_ENVELOPES, PAGE_BYTES};
use fogmesh::naming::DatasetId;
use fogmesh::node::{Batch, GrantRequest, MemberKeys};
use fogmesh::record::Input;
use fogmesh::view::query::Query;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{test_node, TestNode};
use crate::mesh::shared_spec;

const WRITERS: usize = 5;
/// Members granted writing in the first owner's dataset.
const GUESTS: [usize; 3] = [5, 6, 7];
const LOSS: f64 = 0.3;
const DUPLICATE: f64 = 0.1;
const PAGE_LOSS: f64 = 0.1;
/// Envelopes fetched per page in the simulation (small, so that ranges take several pages).
const SIM_PAGE_BYTES: usize = 2_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run did, printed beside its seed.
#[derive(Debug, Default)]
struct Tally {
    writes: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    partitions: usize,
    catchups: usize,
    pages: usize,
    pages_lost: usize,
}

struct Sim {
    rng: StdRng,
    nodes: Vec<TestNode>,
    datasets: Vec<DatasetId>,
    /// Messages on their way: (to, dataset, envelope).
    wire: Vec<(usize, DatasetId, Envelope)>,
    /// The side of each node while a partition holds (`None`: healed).
    sides: Option<Vec<bool>>,
    /// Per dataset, each acknowledged record id and the value it was last written with
    /// (`None`: deleted).
    acked: BTreeMap<DatasetId, BTreeMap<String, Option<i64>>>,
    tally: Tally,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_runs_converge_with_no_acknowledged_write_lost() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seeds: Vec<u64> = match std::env::var("FOGMESH_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("FOGMESH_SIM_SEED is a number")],
        Err(_) => (1..=env_num("FOGMESH_SIM_SEEDS", 2)).collect(),
    };
    for seed in seeds {
        let started = std::time::Instant::now();
        let tally = run(seed).await;
        eprintln!(
            "simulation seed {seed}: converged in {:.1} s: {tally:?}",
            started.elapsed().as_secs_f64()
        );
    }
}

async fn run(seed: u64) -> Tally {
    let n = env_num("FOGMESH_SIM_NODES", 20) as usize;
    let rounds = env_num("FOGMESH_SIM_ROUNDS", 30);
    let mut sim = Sim::new(seed, n).await;
    for round in 0..rounds {
        if round % 10 == 3 {
            sim.split();
        } else if round % 10 == 8 {
            sim.sides = None;
        }
        sim.write_round(round).await;
        sim.deliver_some().await;
        for _ in 0..n / 2 {
            let (a, b) = sim.pair();
            sim.catch_up(a, b, PAGE_LOSS).await;
        }
    }
    sim.heal().await;
    sim.check(seed);
    sim.tally
}

fn member_keys(t: &TestNode) -> MemberKeys {
    MemberKeys {
        org: t.node.config().org.clone(),
        author: t.node.identity().author(),
        agreement: t.node.identity().agreement_public(),
        removed: false,
        retired: Vec::new(),
    }
}

impl Sim {
    async fn new(seed: u64, n: usize) -> Self {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(test_node(&format!("org{i:02}"), i as u8 + 1).await);
        }
        let members: Vec<MemberKeys> = nodes.iter().map(member_keys).collect();
        for t in &nodes {
            t.node.set_members(members.clone()).await.expect("members");
        }
        let orgs: Vec<String> = members.iter().map(|m| m.org.clone()).collect();
        let mut datasets = Vec::new();
        for w in 0..WRITERS.min(n) {
            let readers: Vec<&str> = orgs
                .iter()
                .filter(|o| **o != orgs[w])
                .map(String::as_str)
                .collect();
            let owner = &nodes[w];
            let spec = shared_spec("cases", &readers);
            let ds = owner.node.create_dataset(&owner.admin, spec).await;
            let ds = ds.expect("dataset").id;
            if w == 0 {
                for g in GUESTS.iter().filter(|g| **g < n) {
                    let grant = GrantRequest {
                        dataset: ds.to_string(),
                        to: format!("{}/*", orgs[*g]),
                        rights: vec![Action::Read, Action::Write],
                        prefix: None,
                        expires: None,
                    };
                    owner.node.grant(&owner.admin, grant).await.expect("grant");
                }
            }
            let (meta, _) = owner.node.replica(&ds).expect("held");
            let bundle = owner.node.access_bundle(&ds).expect("bundle");
            let key = owner.node.identity().author();
            for other in nodes.iter().enumerate().filter(|(i, _)| *i != w) {
                let node = &other.1.node;
                node.adopt_dataset((*meta).clone(), key)
                    .await
                    .expect("adopt");
                node.merge_access(&ds, &bundle).await.expect("access");
            }
            datasets.push(ds);
        }
        Self {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            datasets,
            wire: Vec::new(),
            sides: None,
            acked: BTreeMap::new(),
            tally: Tally::default(),
        }
    }

    fn split(&mut self) {
        let sides = (0..self.nodes.len())
            .map(|_| self.rng.gen_bool(0.5))
            .collect();
        self.sides = Some(sides);
        self.tally.partitions += 1;
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.sides.as_ref().is_none_or(|s| s[a] == s[b])
    }

    /// Each owner writes a new record and updates or deletes one it holds; each guest of the
    /// first dataset creates a record. What is acknowledged is pushed to every other node.
    async fn write_round(&mut self, round: u64) {
        for w in 0..self.datasets.len() {
            let ds = self.datasets[w].clone();
            let mut batch = vec![(format!("w{w}-r{round}"), self.rng.gen_range(0..1000))];
            let mut delete = Vec::new();
            let held: Vec<String> = self.records(w, &ds).into_keys().collect();
            if let Some(old) = held.choose(&mut self.rng) {
                match self.rng.gen_bool(0.2) {
                    true => delete.push(old.clone()),
                    false => batch.push((old.clone(), self.rng.gen_range(0..1000))),
                }
            }
            self.write(w, &ds, batch, delete).await;
            if w == 0 {
                let n = self.nodes.len();
                for g in GUESTS.iter().filter(|g| **g < n) {
                    let mine = vec![(format!("g{g}-r{round}"), self.rng.gen_range(0..1000))];
                    self.write(*g, &ds, mine, Vec::new()).await;
                }
            }
        }
    }

    /// Node `at` writes `records` (id, value) and deletes `delete` in `ds`, and pushes the
    /// envelope.
    async fn write(
        &mut self,
        at: usize,
        ds: &DatasetId,
        records: Vec<(String, i64)>,
        delete: Vec<String>,
    ) {
        let writer = &self.nodes[at];
        let key = writer.node.identity().author();
        let before = writer.node.replica(ds).expect("held").1.get(&key);
        let batch = Batch {
            records: records
                .iter()
                .map(|(id, v)| Input {
                    id: Some(id.clone()),
                    name: format!("district-{}/{id}", v % 7),
                    data: serde_json::json!({ "v": v }),
                    time: None,
                })
                .collect(),
            delete: delete.clone(),
        };
        writer
            .node
            .publish(&writer.admin, ds, batch)
            .await
            .expect("the write is acknowledged");
        self.tally.writes += 1;
        let acked = self.acked.entry(ds.clone()).or_default();
        acked.extend(records.into_iter().map(|(id, v)| (id, Some(v))));
        acked.extend(delete.into_iter().map(|id| (id, None)));
        let (pages, _) = writer
            .node
            .envelopes_between(ds, &key, (before, before + 1), (usize::MAX, usize::MAX))
            .expect("its envelope");
        let env = Envelope::decode(&pages[0]).expect("decodes");
        for to in (0..self.nodes.len()).filter(|to| *to != at) {
            self.send(at, to, ds, &env);
        }
    }

    fn send(&mut self, from: usize, to: usize, ds: &DatasetId, env: &Envelope) {
        if !self.reachable(from, to) || self.rng.gen_bool(LOSS) {
            self.tally.lost += 1;
            return;
        }
        let copies = if self.rng.gen_bool(DUPLICATE) { 2 } else { 1 };
        self.tally.duplicated += copies - 1;
        for _ in 0..copies {
            self.wire.push((to, ds.clone(), env.clone()));
        }
    }

    /// Delivers a random part of what is on the wire, in random order.
    async fn deliver_some(&mut self) {
        self.wire.shuffle(&mut self.rng);
        let keep = self.rng.gen_range(0..=self.wire.len() / 3);
        let now: Vec<_> = self.wire.drain(keep..).collect();
        for (to, ds, env) in now {
            let node = &self.nodes[to].node;
            node.apply_envelopes(&ds, vec![env]).await.expect("apply");
            self.tally.delivered += 1;
        }
    }

    fn pair(&mut self) -> (usize, usize) {
        let n = self.nodes.len();
        loop {
            let (a, b) = (self.rng.gen_range(0..n), self.rng.gen_range(0..n));
            if a != b && self.reachable(a, b) {
                return (a, b);
            }
        }
    }

    /// Node `a` catches up with node `b` on every dataset, as the mesh does: the plan from the
    /// two frontiers, page by page; a lost page ends that dataset's catch-up (retried later).
    async fn catch_up(&mut self, a: usize, b: usize, page_loss: f64) {
        self.tally.catchups += 1;
        let remote: BTreeMap<_, _> = self.nodes[b]
            .node
            .frontiers()
            .into_iter()
            .map(|(m, f)| (m.id.clone(), f))
            .collect();
        for (meta, local) in self.nodes[a].node.frontiers() {
            let Some(theirs) = remote.get(&meta.id) else {
                continue;
            };
            let mine = &self.nodes[a].node;
            let mut plan = Catchup::new(&local, theirs, |x| mine.fork_of(&meta.id, x));
            let mut asked = plan.next();
            while let Some(range) = asked {
                let got = self.nodes[b]
                    .node
                    .envelopes_between(
                        &meta.id,
                        &range.author,
                        (range.after, range.upto),
                        (SIM_PAGE_BYTES.min(PAGE_BYTES), MAX_ENVELOPES),
                    )
                    .expect("page");
                self.tally.pages += 1;
                if self.rng.gen_bool(page_loss) {
                    self.tally.pages_lost += 1;
                    break;
                }
                let (bytes, more) = got;
                let envs: Vec<Envelope> = bytes
                    .iter()
                    .map(|b| Envelope::decode(b).expect("decodes"))
                    .collect();
                let page = Page {
                    count: envs.len(),
                    last: envs.last().map(|e| e.seq),
                    more,
                };
                let times = if self.rng.gen_bool(DUPLICATE) { 2 } else { 1 };
                for _ in 0..times {
                    let node = &self.nodes[a].node;
                    node.apply_envelopes(&meta.id, envs.clone())
                        .await
                        .expect("apply");
                }
                asked = plan.on_page(&range, page);
            }
        }
    }

    /// Everything on the wire is delivered, then every node catches up with every other
    /// (reliably) until nothing changes.
    async fn heal(&mut self) {
        self.sides = None;
        let wire = std::mem::take(&mut self.wire);
        for (to, ds, env) in wire.into_iter().rev() {
            self.nodes[to]
                .node
                .apply_envelopes(&ds, vec![env])
                .await
                .expect("apply");
        }
        let n = self.nodes.len();
        for _ in 0..3 {
            for a in 0..n {
                for b in (0..n).filter(|b| *b != a) {
                    self.catch_up(a, b, 0.0).await;
                }
            }
            if self.frontiers_agree() {
                return;
            }
        }
    }

    fn frontiers_agree(&self) -> bool {
        let all: BTreeSet<_> = self
            .nodes
            .iter()
            .map(|t| format!("{:?}", t.node.frontiers()))
            .collect();
        all.len() == 1
    }

    fn records(&self, i: usize, ds: &DatasetId) -> BTreeMap<String, (String, serde_json::Value)> {
        let t = &self.nodes[i];
        let query = Query {
            limit: 10_000,
            ..Query::default()
        };
        let rows = t.node.query(&t.admin, ds, &query).expect("query");
        rows.into_iter()
            .map(|r| (r.id, (r.name, serde_json::Value::Object(r.data))))
            .collect()
    }

    fn check(&self, seed: u64) {
        for (w, ds) in self.datasets.iter().enumerate() {
            let truth = self.records(w, ds);
            for (id, v) in &self.acked[ds] {
                let held = truth.get(id).map(|(_, d)| d["v"].clone());
                assert_eq!(
                    held,
                    v.map(|v| serde_json::json!(v)),
                    "seed {seed}: the owner of {ds} does not hold acknowledged write {id} as \
                     written (replay with FOGMESH_SIM_SEED={seed})"
                );
            }
            for i in 0..self.nodes.len() {
                let view = self.records(i, ds);

                assert!(
                    view == truth,
                    "seed {seed}: node {i} holds {} records of {ds}, the owner {}; differing: \
                     {:?} (replay with FOGMESH_SIM_SEED={seed})",
                    view.len(),
                    truth.len(),
                    truth
                        .iter()
                        .filter(|(k, v)| view.get(*k) != Some(v))
                        .map(|(k, _)| k)
                        .take(5)
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}
