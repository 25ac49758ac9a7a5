//! The chain on a real sled tree: appending, verifying, and every kind of tampering named at the
//! entry where it happened; retention that keeps a pruned log verifiable.

use std::sync::Arc;

use super::log::entry_key;
use super::*;
use crate::store::Store;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

struct Fixture {
    log: Log,
    // Kept for the test's length: the store and its directory.
    store: Store,
    dir: tempfile::TempDir,
}

fn fixture(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let log = Log::open(&store, limits).expect("log");
    Fixture { log, store, dir }
}

fn event(i: u64) -> Event {
    let org = ["hospital", "pharmacy", "agency"][(i % 3) as usize];
    Event::ok(format!("{org}/app{i}"), Action::Grant)
        .dataset(format!("hospital/ds{}", i % 2))
        .detail(format!("grant number {i}"))
}

/// Appends `n` entries one minute apart from `T0`.
fn fill(log: &Log, n: u64) {
    for i in 0..n {
        log.record(event(i), T0 + i * 60_000).expect("record");
    }
}

fn stored(log: &Log, seq: u64) -> serde_json::Value {
    let v = log.tree.get(entry_key(seq)).expect("get").expect("present");
    serde_json::from_slice(&v).expect("json")
}

fn put(log: &Log, seq: u64, v: &serde_json::Value) {
    let bytes = serde_json::to_vec(v).expect("json");
    log.tree.insert(entry_key(seq), bytes).expect("insert");
}

fn remove(log: &Log, seq: u64) {
    log.tree.remove(entry_key(seq)).expect("remove");
}

#[track_caller]
fn assert_bad(log: &Log, seq: u64, problem: Problem) {
    let v = log.verify().expect("verify");
    assert!(!v.ok, "tampering not detected: {v:?}");
    let bad = v.bad.expect("a bad entry");
    assert_eq!((bad.seq, bad.problem), (seq, problem), "{}", bad.message);
}

#[test]
fn appended_entries_chain_and_verify() {
    let f = fixture(Limits::default());
    fill(&f.log, 5);
    let v = f.log.verify().expect("verify");
    assert!(v.ok, "{v:?}");
    assert_eq!((v.entries, v.first, v.head), (5, 1, Some(5)));
    let all = f.log.list(&Filter::default()).expect("list");
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(all[0].prev, hex::encode(chain::GENESIS));
    for w in all.windows(2) {
        assert_eq!(
            w[1].prev, w[0].hash,
            "entry {} links to {}",
            w[1].seq, w[0].seq
        );
    }
}

#[test]
fn an_empty_log_verifies() {
    let f = fixture(Limits::default());
    let v = f.log.verify().expect("verify");
    assert!(v.ok && v.entries == 0 && v.head.is_none(), "{v:?}");
}

#[test]
fn an_edited_entry_is_named() {
    let f = fixture(Limits::default());
    fill(&f.log, 6);
    let mut e = stored(&f.log, 3);
    e["actor"] = "insurer/pricing".into();
    put(&f.log, 3, &e);
    assert_bad(&f.log, 3, Problem::Edited);
}

#[test]
fn an_entry_rewritten_with_a_recomputed_hash_is_named() {
    let f = fixture(Limits::default());
    fill(&f.log, 6);
    let mut e: Entry = serde_json::from_value(stored(&f.log, 4)).expect("entry");
    e.event.outcome = Outcome::Refused;
    e.event.reason = Some("made up".into());
    let prev = chain::unhex(&e.prev).expect("prev");
    e.hash = hex::encode(chain::hash(&e, &prev));
    put(&f.log, 4, &serde_json::to_value(&e).expect("json"));
    // Entry 4 is consistent with itself; entry 5 no longer links to it.
    assert_bad(&f.log, 4, Problem::Edited);
}

#[test]
fn an_entry_removed_from_the_middle_is_named() {
    let f = fixture(Limits::default());
    fill(&f.log, 6);
    remove(&f.log, 3);
    assert_bad(&f.log, 3, Problem::Missing);
}

#[test]
fn the_first_entry_removed_is_named() {
    let f = fixture(Limits::default());
    fill(&f.log, 4);
    remove(&f.log, 1);
    assert_bad(&f.log, 1, Problem::Missing);
}

#[test]
fn a_truncated_tail_is_named_even_after_a_reopen_and_more_appends() {
    let f = fixture(Limits::default());
    fill(&f.log, 6);
    remove(&f.log, 6);
    remove(&f.log, 5);
    assert_bad(&f.log, 5, Problem::Truncated);
    let Fixture { log, store, dir } = f;
    drop(log);
    let log = Log::open(&store, Limits::default()).expect("reopen");
    // The chain goes on from the recorded head, so the gap stays visible.
    fill(&log, 1);
    assert_eq!(log.span(), (1, 8));
    assert_bad(&log, 5, Problem::Missing);
    drop(dir);
}

#[test]
fn an_entry_that_does_not_decode_is_named_and_left_out_of_listings() {
    let f = fixture(Limits::default());
    fill(&f.log, 3);
    f.log
        .tree
        .insert(entry_key(2), &b"{nope"[..])
        .expect("insert");
    assert_bad(&f.log, 2, Problem::Corrupt);
    let listed = f.log.list(&Filter::default()).expect("list");
    assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn a_changed_head_is_detected() {
    let f = fixture(Limits::default());
    fill(&f.log, 3);
    let head = serde_json::json!({"seq": 3, "hash": hex::encode([7u8; 32])});
    f.log
        .tree
        .insert(b"h", serde_json::to_vec(&head).expect("json"))
        .expect("insert");
    assert_bad(&f.log, 3, Problem::Edited);
}

#[test]
fn pruning_by_count_keeps_the_newest_and_still_verifies() {
    let f = fixture(Limits {
        max_entries: 4,
        max_age_days: 365,
    });
    fill(&f.log, 10);
    let v = f.log.verify().expect("verify");
    assert!(v.ok, "{v:?}");
    assert_eq!((v.entries, v.first, v.head), (4, 7, Some(10)));
    // Tampering with what is left is still found.
    remove(&f.log, 8);
    assert_bad(&f.log, 8, Problem::Missing);
}

#[test]
fn removing_the_first_kept_entry_after_pruning_is_named() {
    let f = fixture(Limits {
        max_entries: 4,
        max_age_days: 365,
    });
    fill(&f.log, 10);
    remove(&f.log, 7);
    assert_bad(&f.log, 7, Problem::Missing);
}

#[test]
fn pruning_by_age_removes_old_entries_and_still_verifies() {
    let f = fixture(Limits {
        max_entries: 1_000,
        max_age_days: 1,
    });
    for i in 0..6 {
        f.log.record(event(i), T0 + i * DAY).expect("record");
    }
    // At T0 + 5.5 days, entries older than T0 + 4.5 days go: 0..=4 (seq 1..=5).
    let removed = f.log.prune(T0 + 5 * DAY + DAY / 2).expect("prune");
    assert_eq!(removed, 5);
    let v = f.log.verify().expect("verify");
    assert!(v.ok, "{v:?}");
    assert_eq!((v.entries, v.first), (1, 6));
    // Everything old: the log is empty, anchored at the head, and goes on from there.
    assert_eq!(f.log.prune(T0 + 30 * DAY).expect("prune"), 1);
    let v = f.log.verify().expect("verify");
    assert!(v.ok && v.entries == 0 && v.first == 7, "{v:?}");
    f.log.record(event(9), T0 + 30 * DAY).expect("record");
    let v = f.log.verify().expect("verify");
    assert!(v.ok && v.entries == 1 && v.head == Some(7), "{v:?}");
}

#[test]
fn a_lowered_count_limit_is_reached_by_prune() {
    let f = fixture(Limits::default());
    fill(&f.log, 300);
    let Fixture { log, store, dir } = f;
    drop(log);
    let limits = Limits {
        max_entries: 10,
        max_age_days: 365,
    };
    let log = Log::open(&store, limits).expect("reopen");
    assert_eq!(log.prune(T0).expect("prune"), 290);
    let v = log.verify().expect("verify");
    assert!(v.ok && v.entries == 10 && v.first == 291, "{v:?}");
    drop(dir);
}

#[test]
fn fields_are_capped_at_character_boundaries() {
    let f = fixture(Limits::default());
    let long = "é".repeat(2_000);
    let ev = Event::refused(long.clone(), Action::Read, long.clone())
        .dataset(long.clone())
        .detail(long);
    let Recorded::Appended(e) = f.log.record(ev, T0).expect("record") else {
        panic!("a first refusal is logged");
    };
    let e = &e.event;
    assert!(e.actor.len() <= NAME_CAP && e.actor.starts_with('é'));
    assert!(e.dataset.as_deref().is_some_and(|d| d.len() <= NAME_CAP));
    assert!(e.reason.as_deref().is_some_and(|r| r.len() <= REASON_CAP));
    assert!(e.detail.len() <= DETAIL_CAP && e.detail.len() > DETAIL_CAP - 2);
    assert!(f.log.verify().expect("verify").ok);
}

#[test]
fn concurrent_appends_make_one_gapless_chain() {
    let f = fixture(Limits::default());
    let log = Arc::new(f.log);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.record(event(t * 100 + i), T0).expect("record");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let v = log.verify().expect("verify");
    assert!(v.ok && v.entries == 400, "{v:?}");
}

#[test]
fn times_never_go_backwards() {
    let f = fixture(Limits::default());
    f.log.record(event(0), T0).expect("record");
    f.log.record(event(1), T0 - 5_000).expect("record");
    let all = f.log.list(&Filter::default()).expect("list");
    assert_eq!(all[1].time, T0);
}

#[test]
fn listings_filter_by_time_org_action_dataset_and_page() {
    let f = fixture(Limits::default());
    fill(&f.log, 30);
    f.log
        .record(
            Event::refused("insurer/pricing", Action::Read, "no grant"),
            T0 + 31 * 60_000,
        )
        .expect("record");
    let list = |filter: Filter| f.log.list(&filter).expect("list");
    let seqs = |v: Vec<Entry>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    let window = Filter {
        since: Some(T0 + 10 * 60_000),
        until: Some(T0 + 13 * 60_000),
        ..Filter::default()
    };
    assert_eq!(seqs(list(window)), [11, 12, 13]);
    let pharmacy = Filter {
        org: Some("pharmacy".into()),
        limit: Some(2),
        ..Filter::default()
    };
    // The newest two, oldest first.
    assert_eq!(seqs(list(pharmacy)), [26, 29]);
    let refused = Filter {
        action: Some(Action::Read),
        ..Filter::default()
    };
    let r = list(refused);
    assert_eq!(seqs(r.clone()), [31]);
    assert_eq!(r[0].event.outcome, Outcome::Refused);
    let ds = Filter {
        dataset: Some("hospital/ds1".into()),
        after: Some(20),
        limit: Some(3),
        ..Filter::default()
    };
    // Paging forward from seq 20: the oldest three after it.
    assert_eq!(seqs(list(ds)), [22, 24, 26]);
    assert_eq!(list(Filter::default()).len(), DEFAULT_LIST.min(31));
}

#[test]
fn followers_get_each_new_entry() {
    let f = fixture(Limits::default());
    let mut rx = f.log.subscribe();
    fill(&f.log, 2);
    assert_eq!(rx.try_recv().expect("first").seq, 1);
    assert_eq!(rx.try_recv().expect("second").seq, 2);
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_flood_of_refusals_is_bounded_per_organization_and_reported() {
    let f = fixture(Limits::default());
    let refuse = |org: &str, t: u64| {
        f.log
            .record(Event::refused(format!("{org}/x"), Action::Read, "no"), t)
            .expect("record")
    };
    let logged = (0..200)
        .filter(|_| matches!(refuse("insurer", T0), Recorded::Appended(_)))
        .count();
    assert_eq!(logged, REFUSALS_PER_MINUTE as usize);
    assert!(matches!(refuse("pharmacy", T0), Recorded::Appended(_)));
    let Recorded::Appended(next) = refuse("insurer", T0 + 60_000) else {
        panic!("a new minute logs again");
    };
    assert!(
        next.event.detail.starts_with("140 earlier refusals"),
        "{}",
        next.event.detail
    );
    // What is done (not refused) is always logged.
    assert!(matches!(
        f.log.record(event(1), T0).expect("record"),
        Recorded::Appended(_)
    ));
}

#[test]
fn actions_round_trip_through_their_names() {
    for a in Action::ALL {
        assert_eq!(Action::parse(a.as_str()), Some(a));
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(json, format!("\"{}\"", a.as_str()));
    }
    assert_eq!(Action::parse("Grant"), None);
}

#[test]
fn a_crash_between_the_steps_of_an_append_or_a_prune_is_mended_on_open() {
    let limits = Limits {
        max_entries: 4,
        max_age_days: 365,
    };
    let f = fixture(limits);
    fill(&f.log, 4);
    let early: Vec<_> = (1..=2).map(|seq| stored(&f.log, seq)).collect();
    fill(&f.log, 2);
    let head = f.log.tree.get(b"h").expect("get").expect("head");
    fill(&f.log, 1);
    // The crash came after the last entry was appended and the anchor moved, before the head
    // moved and the old entries went.
    f.log.tree.insert(b"h", head).expect("insert");
    for (seq, v) in (1..).zip(&early) {
        put(&f.log, seq, v);
    }
    assert!(!f.log.verify().expect("verify").ok);
    let Fixture { log, store, dir } = f;
    drop(log);
    let log = Log::open(&store, limits).expect("reopen");
    let v = log.verify().expect("verify");
    assert!(v.ok, "{v:?}");
    assert_eq!((v.first, v.head, v.entries), (4, Some(7), 4), "{v:?}");
    // Two entries past the head are not a step cut short: verification names them.
    let head = log.tree.get(b"h").expect("get").expect("head");
    fill(&log, 2);
    log.tree.insert(b"h", head).expect("insert");
    drop(log);
    let log = Log::open(&store, limits).expect("reopen");
    assert_bad(&log, 8, Problem::Corrupt);
    drop(dir);
}

#[test]
fn a_verification_beside_appends_and_pruning_finds_nothing_wrong() {
    let limits = Limits {
        max_entries: 50,
        max_age_days: 365,
    };
    let f = Arc::new(fixture(limits));
    let writer = {
        let f = f.clone();
        std::thread::spawn(move || fill(&f.log, 2_000))
    };
    let mut checks = 0;
    while !writer.is_finished() {
        let v = f.log.verify().expect("verify");
        assert!(v.ok, "{v:?}");
        checks += 1;
    }
    writer.join().expect("writer");
    assert!(checks > 0);
    assert!(f.log.verify().expect("verify").ok);
}
