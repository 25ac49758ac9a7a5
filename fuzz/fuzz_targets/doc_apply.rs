//! Automerge changes from peers (an opened envelope's payload, parsed with
//! `fogmesh::view::doc::decode_change` as the node parses it) applied to a dataset's document
//! through the live path's guard: `Doc::refused` (ready changes only, as `refuse_unsafe` does),
//! then `Doc::apply` (or `Doc::apply_all`, the restore path), which reports a panic inside
//! Automerge or a change it holds unfaithfully as an error that makes the node rebuild the
//! document from its store. The document is a fixed one with records (data/base_doc.bin,
//! written by examples/seed.rs through `Doc::write`).
//!
//! Input: a mode byte (bit 0: apply_all instead of apply), then up to 8 u16-length-prefixed
//! changes; if none of those parse, the whole rest as one change.
//!
//! Asserts, unless the apply reported a broken document (the node then rebuilds it; the panic
//! site, if any, is printed once per site): the document still reads, takes a local write, saves
//! as a snapshot does, and the saved bytes load again (`Automerge::load` and `Doc::load`) to a
//! document with the same records. (Each of the fuzz/regressions/doc_apply reproducers broke
//! one of these before the guard.)
#![no_main]

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use automerge::{Automerge, Change};
use fogmesh::record::Record;
use fogmesh::view::doc::{decode_change, Doc, Error, Upsert};
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
    match std::panic::catch_unwind(|| Automerge::load(&saved).map(|_| ())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the saved document loads (automerge): {e:?}"),
        Err(_) => panic!("Automerge::load panicked on the saved document"),
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
        let parse = |b: &[u8]| decode_change(b.to_vec()).ok();
        let mut changes: Vec<Change> =
            fogmesh_fuzz::split_parts(rest, 8).into_iter().filter_map(parse).collect();
        if changes.is_empty() {
            match parse(rest) {
                Some(c) => changes.push(c),
                None => return,
            }
        }
        let mut doc = Doc::from_automerge(base().clone().with_actor(automerge::ActorId::from(&ACTOR[..])));
        let (refused, expanded) = doc.refused(&changes, true);
        let refused: Vec<usize> = refused.into_iter().map(|(i, _)| i).collect();
        let ok: Vec<Change> = changes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains(i))
            .map(|(_, c)| c)
            .collect();
        if ok.is_empty() {
            return;
        }
        let result = if mode & 1 == 0 {
            doc.apply_judged(ok, expanded).map(|_| ())
        } else {
            doc.apply_all(ok)
        };
        match result {
            Err(Error::Panicked(why)) => {
                note_panic(&why);
                return;
            }
            Err(e) if e.broke_document() => return,
            Err(_) | Ok(()) => {}
        }
        let _ = doc.waiting();
        check_usable(&mut doc);
    })
);
