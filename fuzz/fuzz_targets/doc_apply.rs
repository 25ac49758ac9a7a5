//! Automerge changes from peers (an opened envelope's payload: `automerge::Change::from_bytes`)
//! applied to a dataset's document through the live path's guard: `Doc::missing_objects`
//! (ready changes only, as `refuse_missing_objects` does), then `Doc::apply` (or `Doc::apply_all`,
//! the restore path), which turns an Automerge panic into `Error::Panicked`. The document is a
//! fixed one with records (data/base_doc.bin, written by examples/seed.rs through `Doc::write`).
//!
//! Input: a mode byte (bit 0: apply_all instead of apply), then up to 8 u16-length-prefixed
//! changes; if none of those parse, the whole rest as one change.
//!
//! Asserts, unless Automerge panicked inside the guard (then the node rebuilds the document
//! from its store; the panic site is printed once per site): the document still reads, takes a
//! local write, saves as a snapshot does, and the saved bytes load again (`Automerge::load` and
//! `Doc::load`) to a document with the same records.
#![no_main]

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use automerge::{Automerge, Change};
use fogmesh::record::Record;
use fogmesh::view::doc::{Doc, Error, Upsert};
use libfuzzer_sys::fuzz_target;

const BASE: &[u8] = include_bytes!("../data/base_doc.bin");
const ACTOR: [u8; 32] = [9; 32];

fn base() -> &'static Automerge {
    static B: OnceLock<Automerge> = OnceLock::new();
    B.get_or_init(|| Automerge::load(BASE).expect("the base document loads"))
}

fn sorted(mut v: Vec<Record>) -> Vec<Record> {
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn note_panic(why: &str) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let at = fogmesh_fuzz::take_last_panic().unwrap_or_default();
    let site = at.lines().next().unwrap_or_default().to_owned();
    if seen.get_or_insert_with(HashSet::new).insert(site) {
        eprintln!("doc_apply: Automerge panicked inside the guard (Error::Panicked: {why}); {at}");
    }
}

/// Whether `c` is Automerge's own encoding of its operations (same hash once re-encoded).
fn canonical(c: &Change) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Change::from(c.decode()).hash() == c.hash()
    }))
    .unwrap_or(false)
}

fn snapshot(doc: &Doc) -> Vec<u8> {
    doc.automerge().save_with_options(automerge::SaveOptions {
        retain_orphans: false,
        ..Default::default()
    })
}

fn check_usable(doc: &mut Doc) {
    let before = sorted(doc.read_all());
    let _ = doc.ids();
    // Saved as a snapshot is (node/snapshot.rs): without orphans, i.e. without the changes
    // Automerge holds back. (A plain `save()` keeps their raw bytes, and a held-back change
    // whose checksum does not match its bytes, which `Change::from_bytes` accepts, then makes
    // the saved document fail to load with BadChecksum: see fuzz/regressions/doc_apply.)
    let saved = snapshot(doc);
    // Known bug (fuzz/regressions/doc_apply/delete_unknown_pred_missing_ops): a change that
    // deletes a key naming a predecessor the key does not hold applies, but a saved document has
    // no place for that delete, and fails to load (InvalidChanges(MissingOps)). Stepped around
    // with FOGMESH_FUZZ_SKIP_KNOWN only.
    // Known bug (fuzz/regressions/doc_apply/load_panics_collector_assert): likewise a put whose
    // predecessor is an op of another key; loading the saved document then panics inside
    // Automerge (op_set2/change/collector.rs: `assert!(self.data[index].is_none())`), and
    // `Doc::load` does not catch it. Also stepped around with FOGMESH_FUZZ_SKIP_KNOWN only.
    // (mismatching_heads_in_context: a change whose own encoding is canonical, re-encoded in
    // the saved document to another hash.) All one class: with FOGMESH_FUZZ_SKIP_KNOWN, any
    // snapshot that does not load, by error or panic, ends the input quietly.
    if fogmesh_fuzz::skip_known() {
        let loaded = std::panic::catch_unwind(|| Automerge::load(&saved).map(|_| ()));
        if !matches!(loaded, Ok(Ok(()))) {
            return;
        }
    }
    if let Err(e) = Automerge::load(&saved) {
        panic!("the saved document loads (automerge): {e:?}");
    }
    let mut loaded = Doc::load(&saved, &ACTOR).expect("the saved document loads (Doc)");
    assert_eq!(
        sorted(loaded.read_all()),
        before,
        "a reloaded document reads other records"
    );
    // The node keeps writing locally.
    let up = Upsert {
        id: "local".into(),
        name: "d1/after".into(),
        time: 99,
        data: serde_json::json!({"x": 1})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    doc.write(&[up], &[])
        .expect("a local write after remote changes");
    let r = doc.read("local").expect("the local write reads back");
    assert_eq!(r.time, 99);
    let saved = snapshot(doc);
    Doc::load(&saved, &ACTOR).expect("the document saved after a local write loads");
}

fuzz_target!(
    init: fogmesh_fuzz::quiet_panic_hook(),
    |data: &[u8]| fogmesh_fuzz::run_guarded(|| {
        let Some((&mode, rest)) = data.split_first() else { return };
        // Known bug (fuzz/regressions/doc_apply/change_from_bytes_panics): `Change::from_bytes`
        // itself panics on some bytes (automerge types.rs: an `unwrap` of a failed int
        // conversion), and the node calls it unguarded (src/node/replica.rs, `change_of`).
        // With FOGMESH_FUZZ_SKIP_KNOWN such input is stepped around.
        let parse = |b: &[u8]| -> Option<Change> {
            if fogmesh_fuzz::skip_known() {
                std::panic::catch_unwind(|| Change::from_bytes(b.to_vec()).ok()).ok().flatten()
            } else {
                Change::from_bytes(b.to_vec()).ok()
            }
        };
        let mut changes: Vec<Change> =
            fogmesh_fuzz::split_parts(rest, 8).into_iter().filter_map(parse).collect();
        if changes.is_empty() {
            match parse(rest) {
                Some(c) => changes.push(c),
                None => return,
            }
        }
        let mut doc = Doc::from_automerge(base().clone().with_actor(automerge::ActorId::from(&ACTOR[..])));
        let refused: Vec<usize> = doc.missing_objects(&changes, true).into_iter().map(|(i, _)| i).collect();
        let ok: Vec<Change> = changes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains(i))
            .map(|(_, c)| c)
            .collect();
        if ok.is_empty() {
            return;
        }
        // Known bug (fuzz/regressions/doc_apply/noncanonical_change_heads): a change whose bytes
        // are not Automerge's own encoding of its operations applies, but its hash (of the bytes
        // received) is not the hash of the change a saved document re-encodes, and the snapshot
        // no longer loads (MismatchingHeads). With FOGMESH_FUZZ_SKIP_KNOWN (run.sh's fuzzing
        // phase) such input is left out, so that fuzzing goes on past it. The same test would
        // refuse such a change on intake: re-encode it and compare hashes.
        if fogmesh_fuzz::skip_known() && !ok.iter().all(canonical) {
            return;
        }
        let result = if mode & 1 == 0 {
            doc.apply(ok).map(|_| ())
        } else {
            doc.apply_all(ok)
        };
        match result {
            Err(Error::Panicked(why)) => {
                note_panic(&why);
                return;
            }
            Err(_) | Ok(()) => {}
        }
        let _ = doc.waiting();
        check_usable(&mut doc);
    })
);
