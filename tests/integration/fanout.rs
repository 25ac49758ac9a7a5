//! Fan-out along trees in a large mesh, in one process on loopback: `n` members, five of them
//! writers each owning a sealed dataset shared with every member; a burst of single-record
//! writes from the five at once; one member stopped in the middle of the burst (its mesh
//! aborted, with whatever it had queued to pass on) and started again. Checked: every member ends
//! with every record, the restarted one among them; members passed envelopes on; and no writer
//! sent a copy to each member (its pushes stay within twice `fanout` per record).
//!
//! CI runs 12 members and 1,000 writes. The full run, 50 members and 10,000 writes:
//!
//! ```text
//! cargo test --release --test integration fanout -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use fogmesh::mesh::tree::FANOUT;
use fogmesh::naming::DatasetId;

use crate::mesh::{batch, member, open, shared, wait_within, Member};

const WRITERS: usize = 5;

fn org(i: usize) -> &'static str {
    Box::leak(format!("org{i:02}").into_boxed_str())
}

/// Records of `ds` held by `m` (0 when it does not hold the dataset).
fn records(m: &Member, ds: &DatasetId) -> usize {
    m.node
        .datasets(&m.admin)
        .iter()
        .find(|d| d.meta.id == *ds)
        .map_or(0, |d| d.records)
}

/// Members joining at once. Eight at once sometimes failed in a release build ("connection
/// closed before the response" at the joiner; not investigated yet): one after another.
const JOIN_AT_ONCE: usize = 1;

/// `n` members: the first founds the mesh, the others join by invitation, several at once.
async fn spawn(n: usize, limit: Duration) -> Vec<Member> {
    let mut all = vec![member(org(0), 1).await];
    let ids: Vec<usize> = (1..n).collect();
    for group in ids.chunks(JOIN_AT_ONCE) {
        let first = &all[0];
        let joiners = group.iter().map(|&i| async move {
            let (token, _) = first
                .mesh
                .invite(Duration::from_secs(600))
                .await
                .expect("invite");
            let m = member(org(i), (i % 250) as u8 + 2).await;
            m.mesh.join(&token).await.expect("join");
            m
        });
        all.extend(futures::future::join_all(joiners).await);
    }
    for m in &all {
        wait_within("the full roster everywhere", limit, || async move {
            m.mesh.status().await.expect("status").members.len() == n
        })
        .await;
    }
    all
}

async fn run(n: usize, writes: usize, limit: Duration) {
    let started = Instant::now();
    let mut nodes = spawn(n, limit).await;
    let orgs: Vec<&str> = nodes.iter().map(|m| m.org).collect();
    let mut datasets = Vec::new();
    for (i, w) in nodes.iter().take(WRITERS).enumerate() {
        let readers: Vec<&str> = orgs.iter().copied().filter(|o| *o != w.org).collect();
        datasets.push(shared(w, &format!("burst-{i}"), &readers).await);
    }
    for m in &nodes {
        let datasets = &datasets;
        wait_within(
            "every dataset and its key everywhere",
            limit,
            || async move {
                datasets.iter().all(|ds| {
                    m.node.datasets(&m.admin).iter().any(|d| d.meta.id == *ds)
                        && m.node.stored_keys(ds).is_ok_and(|k| !k.is_empty())
                })
            },
        )
        .await;
    }
    let setup = started.elapsed();
    let own = |m: &Member| {
        let metrics = m.node.metrics();
        metrics.pushes.get() - metrics.pushes_forwarded.get()
    };
    let pushes_before: Vec<u64> = nodes.iter().map(own).collect();

    // The burst, and a member (not a writer) stopped half-way through it.
    let per_writer = writes / WRITERS;
    let burst = Instant::now();
    let victim = nodes.pop().expect("a member");
    let (victim_org, victim_dir) = (victim.org, victim.dir);
    let writers = nodes
        .iter()
        .take(WRITERS)
        .zip(&datasets)
        .map(|(w, ds)| async move {
            for k in 0..per_writer {
                let b = batch(w.org, k, 1);
                w.node.publish(&w.admin, ds, b).await.expect("publish");
            }
        });
    let stop_and_restart = async {
        let w = &nodes[0];
        let ds = &datasets[0];
        wait_within("half of the first writer's burst", limit, || async move {
            records(w, ds) >= per_writer / 2
        })
        .await;
        victim.mesh.shutdown().await;
        victim.node.shutdown().await.expect("shutdown");
        drop((victim.node, victim.mesh, victim.admin));
        tokio::time::sleep(Duration::from_secs(2)).await;
        open(victim_dir, victim_org).await
    };
    let (_, back) = tokio::join!(futures::future::join_all(writers), stop_and_restart);
    let written = burst.elapsed();
    nodes.push(back);

    for m in &nodes {
        let datasets = &datasets;
        wait_within("every record at every member", limit, || async move {
            datasets.iter().all(|ds| records(m, ds) == per_writer)
        })
        .await;
    }
    let converged = burst.elapsed();
    let fanout = u64::from(FANOUT);
    let mut forwarded = 0;
    for (i, m) in nodes.iter().enumerate() {
        let metrics = m.node.metrics();
        forwarded += metrics.pushes_forwarded.get();
        if i < WRITERS {
            let pushes = own(m) - pushes_before[i];
            // `fanout` copies of each of its own envelopes, and more: to the members of the
            // stopped one's subtrees, to the children of a child busy with 32 pushes in flight or
            // slow to answer (5 s) in the burst (3.2-3.5 per record alone, 4.5 once beside the
            // other integration tests), and the first push of each dataset to each member. Direct
            // push would be `n - 1` (11) per record.
            let most = 2 * fanout * per_writer as u64 + 4 * n as u64;
            println!(
                "writer {}: {pushes} pushes for {per_writer} records ({:.2} per record), \
                 {} taken over",
                m.org,
                pushes as f64 / per_writer as f64,
                metrics.pushes_taken_over.get()
            );
            assert!(
                pushes <= most,
                "writer {} pushed {pushes} times for {per_writer} records: not a tree",
                m.org
            );
        }
    }
    // Along a tree of `n` members every envelope is passed on `n - 1 - FANOUT` times (all but the
    // writer's own pushes); half of that, with the stopped member and its subtrees, is the least.
    let least = (n as u64 - 1 - fanout) * writes as u64 / 2;
    assert!(
        forwarded >= least,
        "members passed {forwarded} envelopes on; a tree needs about {}",
        2 * least
    );
    println!(
        "{n} members, {writes} writes from {WRITERS} writers: set up in {:.1} s, written in \
         {:.1} s, everywhere (the restarted member too) {:.1} s after the first write; \
         {forwarded} pushes of envelopes passed on",
        setup.as_secs_f64(),
        written.as_secs_f64(),
        converged.as_secs_f64()
    );
    for m in nodes {
        m.mesh.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_from_five_writers_reaches_all_12_members_and_a_restarted_one() {
    run(12, 1_000, Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "50 members and 10,000 writes: minutes; run with --release -- --ignored"]
async fn a_burst_from_five_writers_reaches_all_50_members_and_a_restarted_one() {
    run(50, 10_000, Duration::from_secs(900)).await;
}
