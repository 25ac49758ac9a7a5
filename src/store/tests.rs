use super::*;
use crate::identity::Identity;

fn env(id: &Identity, ds: &DatasetId, seq: u64) -> Envelope {
    Envelope::seal(
        id,
        ds.clone(),
        seq,
        0,
        seq,
        crate::envelope::GENESIS,
        vec![seq as u8; 4],
    )
}

#[test]
fn envelopes_after_a_vector_skip_covered_history() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    let ds = DatasetId::parse("h/flu").expect("id");
    let other = DatasetId::parse("h/flu2").expect("id");
    let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
    for s in 1..=5 {
        store.put_envelope(&env(&a, &ds, s)).expect("put");
        store.put_envelope(&env(&b, &ds, s)).expect("put");
        store.put_envelope(&env(&a, &other, s)).expect("put");
    }
    let mut vv = VersionVector::new();
    vv.set(a.author(), 3);
    let mut got = vec![];
    store
        .for_each_envelope_after(&ds, &vv, |e| {
            got.push((e.author, e.seq));
            Ok(())
        })
        .expect("scan");
    let mut want: Vec<_> = (4..=5).map(|s| (a.author(), s)).collect();
    want.extend((1..=5).map(|s| (b.author(), s)));
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(store.last_seq(&ds, &b.author()).expect("seq"), 5);
    assert_eq!(
        store
            .last_seq(&ds, &Identity::from_seed([3; 32]).author())
            .expect("seq"),
        0
    );
    assert_eq!(store.envelope_count(&ds), 10);
    // Bytes: the dataset's own envelopes (keys and values), not the other dataset's.
    let one = env(&a, &ds, 1);
    let each = (keys::envelope(&ds, &one.author, 1).len() + one.encode().len()) as u64;
    assert_eq!(store.dataset_bytes(&ds), 10 * each);
}

#[test]
fn snapshots_round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    let ds = DatasetId::parse("h/flu").expect("id");
    assert!(store.snapshot(&ds).expect("get").is_none());
    let mut vv = VersionVector::new();
    vv.set(Identity::from_seed([1; 32]).author(), 7);
    store
        .put_snapshot(
            &ds,
            &Snapshot {
                vv: vv.clone(),
                doc: vec![1, 2, 3],
            },
        )
        .expect("put");
    let back = store.snapshot(&ds).expect("get").expect("some");
    assert_eq!((back.vv, back.doc), (vv, vec![1, 2, 3]));
}

#[tokio::test]
async fn concurrent_writers_share_flushes_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let ds = DatasetId::parse("h/flu").expect("id");
    {
        let store = Store::open(dir.path()).expect("open");
        let id = std::sync::Arc::new(Identity::from_seed([1; 32]));
        let mut tasks = vec![];
        for s in 1..=50u64 {
            let (store, id, ds) = (store.clone(), id.clone(), ds.clone());
            tasks.push(tokio::spawn(async move {
                store.put_envelope(&env(&id, &ds, s)).expect("put");
                store.durable().await.expect("durable");
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.envelope_count(&ds), 50);
}

#[test]
fn json_tables_insert_new_only_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    assert!(store
        .insert_new_json(Table::Apps, b"k", &1u32)
        .expect("ins"));
    assert!(!store
        .insert_new_json(Table::Apps, b"k", &2u32)
        .expect("ins"));
    assert_eq!(
        store.get_json::<u32>(Table::Apps, b"k").expect("get"),
        Some(1)
    );
    assert_eq!(store.list_json::<u32>(Table::Apps).expect("list"), vec![1]);
}

/// A page stops at its count as well as its bytes (a peer refuses a page of more envelopes than
/// its cap, however small they are); at least one envelope is served.
#[test]
fn a_page_of_envelopes_stops_at_its_count_and_its_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    let ds = DatasetId::parse("h/flu").expect("id");
    let a = Identity::from_seed([1; 32]);
    for s in 1..=30 {
        store.put_envelope(&env(&a, &ds, s)).expect("put");
    }
    let page = |range, limits| {
        let (envs, more) = store
            .envelopes_between(&ds, &a.author(), range, limits)
            .expect("page");
        (envs.len(), more)
    };
    assert_eq!(page((0, 30), (usize::MAX, 10)), (10, true));
    assert_eq!(page((20, 30), (usize::MAX, 10)), (10, false));
    assert_eq!(page((0, 30), (1, 10)), (1, true), "at least one");
    assert_eq!(page((0, 30), (usize::MAX, usize::MAX)), (30, false));
}

#[test]
fn a_snapshot_file_left_unfinished_by_a_full_disk_does_not_stop_the_store_opening() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let store = Store::open(dir.path()).expect("open");
        store.put_json(Table::Meta, b"k", &7u32).expect("put");
        store.flush_blocking().expect("flush");
    }
    // What sled 0.34 leaves when writing its snapshot fails: an empty file under the newest name.
    std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").expect("write");
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.get_json::<u32>(Table::Meta, b"k").expect("get"),
        Some(7)
    );
    assert!(!dir.path().join("snap.7FFFFFFFFFFFFFFF.generating").exists());
}

#[test]
fn a_failed_disk_refuses_writes_until_the_store_opens_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("open");
    assert!(store.writable().is_ok());
    assert!(store.failure().is_none());
    store.failure.set("No space left on device");
    assert!(matches!(store.writable(), Err(Error::DiskFailed(_))));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    assert!(matches!(
        rt.block_on(store.durable()),
        Err(Error::DiskFailed(_))
    ));
    assert!(matches!(store.flush_blocking(), Err(Error::DiskFailed(_))));
    assert!(store.disk_takes(1 << 20), "the disk itself has space");
}
