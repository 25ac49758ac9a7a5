//! A catch-up apply on a real node making way for a live apply of higher priority.

use std::time::Duration;

use serde_json::json;

use super::home;
use super::lanes::CHUNK_BYTES;
use super::{Batch, Delivery, Node};
use crate::config::Config;
use crate::dataset::Priority;
use crate::envelope::Envelope;
use crate::identity::Identity;

async fn node(dir: &std::path::Path, org: &str, seed: u8) -> (Node, crate::apps::App) {
    let config = Config {
        org: org.into(),
        mesh: "m".into(),
        ..Config::default()
    };
    home::init_with(dir, config.clone(), Identity::from_seed([seed; 32]))
        .await
        .expect("init");
    let node = Node::open_home(dir, config).expect("open");
    let admin = node
        .authenticate(&home::admin_token(dir).expect("token"))
        .expect("admin");
    (node, admin)
}

/// A batch of about `bytes` of record data.
fn big_batch(tag: usize, bytes: usize) -> Batch {
    let records: Vec<_> = (0..20)
        .map(|i| json!({"name": format!("w/{tag}/{i}"), "data": {"blob": "x".repeat(bytes / 20)}}))
        .collect();
    serde_json::from_value(json!({ "records": records })).expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_catch_up_waits_between_chunks_while_a_high_priority_push_applies() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, admin) = node(da.path(), "hospital", 1).await;
    let (b, _) = node(db.path(), "pharmacy", 2).await;
    let spec = json!({"name": "bulk", "visibility": "shared", "readers": ["pharmacy"],
        "encrypted": false, "priority": "low"});
    let meta = a
        .create_dataset(&admin, serde_json::from_value(spec).unwrap())
        .await
        .expect("create");
    // Three envelopes of about 200 KB: two chunks.
    for tag in 0..3 {
        a.publish(&admin, &meta.id, big_batch(tag, CHUNK_BYTES * 2 / 5))
            .await
            .expect("publish");
    }
    let author = a.identity().author();
    let (encoded, _) = a
        .envelopes_between(&meta.id, &author, (0, 3), (usize::MAX, 10))
        .expect("envelopes");
    let envs: Vec<Envelope> = encoded
        .iter()
        .map(|e| Envelope::decode(e).unwrap())
        .collect();
    assert_eq!(envs.len(), 3);
    assert_eq!(super::lanes::chunks(envs.clone()).len(), 2, "two chunks");
    assert!(b.adopt_dataset(meta.clone(), author).await.expect("adopt"));

    // The wait ends when the live apply does, however slow this machine is right now.
    *b.inner.lanes.max_way.lock().unwrap() = Some(Duration::from_secs(120));
    let live = b.inner.lanes.live(Priority::High);
    let (b2, id) = (b.clone(), meta.id.clone());
    let catch_up = tokio::spawn(async move {
        b2.apply_envelopes_checked(&id, envs, Delivery::CatchUp)
            .await
    });
    let yields = || b.inner.metrics.catchup_yields.get();
    let t0 = std::time::Instant::now();
    while yields() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the catch-up never made way"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!catch_up.is_finished(), "the second chunk did not wait");
    let held = |b: &Node| b.held(&meta.id).unwrap().with_records(|r| r.len());
    assert_eq!(
        held(&b),
        40,
        "the first chunk's two envelopes applied, readable meanwhile"
    );
    drop(live);
    let (fresh, invalid) = catch_up.await.unwrap().expect("catch-up");
    assert_eq!((fresh.len(), invalid.len()), (3, 0));
    assert_eq!(held(&b), 60);
    assert_eq!(yields(), 1);
}
