//! Part 5: priorities under load. A pair A -> B holds three datasets A owns and shares with B:
//! `bulk` (priority low), `alerts` (high) and `chatter` (low). B's mesh stops while A writes the
//! catch-up's records to `bulk`; B's mesh starts again, and while B catches up A publishes
//! single-record batches to `alerts` and `chatter` in turn, each timed until B's `upsert` event.
//! Baseline, same run, same pair: the same publishes with nothing to catch up (idle).

use super::*;
use fogmesh::node::Subscription;

/// Single-record publishes per live dataset when idle.
const IDLE: usize = 100;
/// Pause between two live publishes while B catches up.
const GAP: Duration = Duration::from_millis(10);

/// What part 5 measured.
pub(super) struct PriorityRun {
    pub idle_alerts: Dist,
    pub idle_chatter: Dist,
    pub busy_alerts: Dist,
    pub busy_chatter: Dist,
    pub catchup: Duration,
    /// From B's restart until it saw A connected again.
    pub reconnect: Duration,
    pub records: usize,
    pub lost: usize,
}

fn spec(name: &str, reader: &str, priority: Priority) -> Spec {
    Spec {
        priority,
        ..shared_spec(name, &[reader], None)
    }
}

/// Creates a dataset on `a` shared with `b`; returns once `b` holds it and its key.
async fn share(a: &Member, b: &Member, name: &str, priority: Priority) -> Result<DatasetId> {
    let meta = a
        .node
        .create_dataset(&a.admin, spec(name, b.org, priority))
        .await?;
    let ds = meta.id;
    let dsr = &ds;
    wait_for("the dataset and its key at B", SETUP, || async move {
        b.holds(dsr) && b.node.stored_keys(dsr).is_ok_and(|k| !k.is_empty())
    })
    .await?;
    Ok(ds)
}

/// Publishes one record to `ds` on `a` and waits for its event at `b` (`events` subscribed to
/// `ds` there); `None` if it is not seen within `VISIBLE`.
async fn one(
    a: &Member,
    ds: &DatasetId,
    events: &mut Subscription,
    id: String,
    rng: &mut Rng,
) -> Result<Option<Duration>> {
    let t0 = Instant::now();
    a.node
        .publish(&a.admin, ds, batch(vec![record(0, Some(id.clone()), rng)]))
        .await?;
    let deadline = tokio::time::Instant::now() + VISIBLE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ev)) => {
                if matches!(&*ev, Event::Upsert { record } if record.id == id) {
                    return Ok(Some(t0.elapsed()));
                }
            }
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => bail!("B's events ended"),
            Err(_) => return Ok(None),
        }
    }
}

/// The pair's two live datasets, with B's subscriptions to them.
struct Live {
    alerts: DatasetId,
    chatter: DatasetId,
    alerts_ev: Subscription,
    chatter_ev: Subscription,
    rng: Rng,
    n: usize,
}

impl Live {
    /// One publish to each live dataset, in turn; the latencies seen (`None`: lost).
    async fn round(&mut self, a: &Member) -> Result<(Option<Duration>, Option<Duration>)> {
        self.n += 1;
        let id = format!("live-{}", self.n);
        let hi = one(
            a,
            &self.alerts,
            &mut self.alerts_ev,
            id.clone(),
            &mut self.rng,
        )
        .await?;
        let lo = one(a, &self.chatter, &mut self.chatter_ev, id, &mut self.rng).await?;
        Ok((hi, lo))
    }
}

/// Runs part 5 with `s.catchup` records to catch up.
pub(super) async fn run(s: &Sizes) -> Result<PriorityRun> {
    let (a, mut b, bulk) = pair_with(50, "bulk", Priority::Low).await?;
    let alerts = share(&a, &b, "alerts", Priority::High).await?;
    let chatter = share(&a, &b, "chatter", Priority::Low).await?;
    let mut live = Live {
        alerts_ev: b.node.subscribe(&b.admin, &alerts)?,
        chatter_ev: b.node.subscribe(&b.admin, &chatter)?,
        alerts,
        chatter,
        rng: Rng(0x5EED_0000_0000_0005),
        n: 0,
    };
    let (mut idle_hi, mut idle_lo, mut lost) = (Vec::new(), Vec::new(), 0);
    for k in 0..IDLE + 10 {
        let (hi, lo) = live.round(&a).await?;
        if k >= 10 {
            lost += usize::from(hi.is_none()) + usize::from(lo.is_none());
            idle_hi.extend(hi);
            idle_lo.extend(lo);
        }
    }
    b.stop().await;
    write_records(&a, &bulk, 0, s.catchup).await?;
    // Counted from B's events: a look at the dataset would wait for the page being applied.
    let mut bulk_ev = b.node.subscribe(&b.admin, &bulk)?;
    let t0 = Instant::now();
    b.start().await?;
    let want = s.catchup;
    let counter = tokio::spawn(async move {
        let mut seen = 0;
        while seen < want {
            match bulk_ev.recv().await {
                Ok(e) => seen += usize::from(matches!(&*e, Event::Upsert { .. })),
                Err(RecvError::Lagged(n)) => seen += n as usize,
                Err(RecvError::Closed) => break,
            }
        }
        t0.elapsed()
    });
    let (mut busy_hi, mut busy_lo) = (Vec::new(), Vec::new());
    let a_peer = a.peer;
    while !b.sees_up(&a_peer).await {
        tokio::time::sleep(Duration::from_millis(2)).await;
        ensure!(t0.elapsed() < SETUP, "B did not reconnect to A");
    }
    let reconnect = t0.elapsed();
    while !counter.is_finished() {
        ensure!(t0.elapsed() < STALL, "B did not catch up within {STALL:?}");
        let (hi, lo) = live.round(&a).await?;
        lost += usize::from(hi.is_none()) + usize::from(lo.is_none());
        busy_hi.extend(hi);
        busy_lo.extend(lo);
        tokio::time::sleep(GAP).await;
    }
    let catchup = counter.await?;
    ensure!(
        b.records(&bulk) == want,
        "B holds {} of {want} records",
        b.records(&bulk)
    );
    a.shutdown().await;
    b.shutdown().await;
    Ok(PriorityRun {
        idle_alerts: Dist::new(idle_hi),
        idle_chatter: Dist::new(idle_lo),
        busy_alerts: Dist::new(busy_hi),
        busy_chatter: Dist::new(busy_lo),
        catchup,
        reconnect,
        records: s.catchup,
        lost,
    })
}

/// A pair whose founding dataset `name` has `priority`.
async fn pair_with(
    seed: u8,
    name: &str,
    priority: Priority,
) -> Result<(Member, Member, DatasetId)> {
    let (a, b, _founding) = pair(seed, "founding").await?;
    let ds = share(&a, &b, name, priority).await?;
    Ok((a, b, ds))
}

/// Prints part 5.
pub(super) fn print(r: &PriorityRun) {
    println!("  idle (nothing to catch up), single-record writes, visible at B:");
    println!("    alerts  (high): {}", r.idle_alerts.line());
    println!("    chatter (low):  {}", r.idle_chatter.line());
    println!(
        "  while B catches up {} records of bulk (low) ({:.2} s from B's restart, connected \
         after {:.2} s):",
        thousands(r.records as u64),
        r.catchup.as_secs_f64(),
        r.reconnect.as_secs_f64()
    );
    println!("    alerts  (high): {}", r.busy_alerts.line());
    println!("    chatter (low):  {}", r.busy_chatter.line());
    let ratio =
        |busy: &Dist, idle: &Dist| busy.p99().as_secs_f64() / idle.p99().as_secs_f64().max(1e-9);
    let hi = ratio(&r.busy_alerts, &r.idle_alerts);
    println!(
        "  alerts p99 busy / idle: {hi:.2}x (target <= 2x: {})   chatter: {:.2}x   lost: {}",
        verdict(hi <= 2.0),
        ratio(&r.busy_chatter, &r.idle_chatter),
        r.lost
    );
}
