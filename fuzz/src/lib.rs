//! Shared fixtures of the fuzz targets (fuzz_targets/*.rs) and of the seed generator
//! (examples/seed.rs): fixed identities, a small roster, sample records, and a panic guard for
//! targets whose library code catches panics itself.
//!
//! Everything here is deterministic (keys from fixed seeds, fixed clocks), so a reproducer found
//! once crashes the same way every time.

use std::cell::RefCell;
use std::sync::OnceLock;

use fogmesh::identity::Identity;
use fogmesh::mesh::govern::{Action, Role};
use fogmesh::mesh::roster::{Member, Roster};
use fogmesh::naming::DatasetId;
use fogmesh::record::Record;
use serde_json::json;

/// The clock every target uses (ms): 2027-01-15.
pub const NOW: u64 = 1_800_000_000_000;
/// The mesh of the fixture roster.
pub const MESH: &str = "flu";

/// Identity number `n` (seed `[n; 32]`): 1 is the founder/dataset owner "hospital", 2 the admin
/// "pharmacy", 3 the member "insurer", 4 a stranger.
pub fn id(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

/// The organization of identity `n`.
pub fn org(n: u8) -> &'static str {
    match n {
        1 => "hospital",
        2 => "pharmacy",
        3 => "insurer",
        _ => "stranger",
    }
}

/// The dataset every target speaks of.
pub fn ds() -> DatasetId {
    DatasetId::parse("hospital/flu").expect("valid")
}

/// Member entry of identity `n`.
pub fn member(n: u8) -> Member {
    let addr = format!("/ip4/10.0.0.{n}/tcp/7071");
    Member::of(&id(n), MESH, org(n), vec![addr], NOW - 1_000).expect("member")
}

fn build_roster() -> Roster {
    let founder = id(1);
    let mut r = Roster::found(member(1), &founder).expect("found");
    for (n, role) in [(2u8, Role::Admin), (3, Role::Member)] {
        let action = Action::Admit {
            member: member(n),
            role,
            invitation: format!("{:064x}", n),
        };
        r.sign_and_apply(action, &founder, NOW - 500)
            .expect("admit");
    }
    r
}

/// The fixture roster: hospital (founder), pharmacy (admin), insurer (member). Built once.
pub fn roster() -> &'static Roster {
    static R: OnceLock<Roster> = OnceLock::new();
    R.get_or_init(build_roster)
}

/// A few records of various shapes, to run queries against.
pub fn records() -> &'static [Record] {
    static R: OnceLock<Vec<Record>> = OnceLock::new();
    R.get_or_init(|| {
        let rec = |id: &str, name: &str, time: u64, data: serde_json::Value| Record {
            id: id.into(),
            name: name.into(),
            time,
            data: data.as_object().cloned().unwrap_or_default(),
        };
        vec![
            rec(
                "a",
                "d7/ward-3",
                10,
                json!({"cases": 3, "sym": "fever", "loc": {"x": 1}}),
            ),
            rec(
                "b",
                "d7/ward-4",
                20,
                json!({"cases": 8, "sym": "cough", "r": 2.5}),
            ),
            rec(
                "c",
                "d70/ward-1",
                30,
                json!({"cases": 5, "tags": ["a", "b"], "ok": true}),
            ),
            rec(
                "d",
                "d8",
                40,
                json!({"sym": "fever", "cases": -1, "big": u64::MAX}),
            ),
            rec(
                "e",
                "d8/x/y/z",
                86_400_000,
                json!({"cases": 1.0, "n": null, "loc": {"x": "1"}}),
            ),
        ]
    })
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// For targets whose library code catches panics on purpose (`Doc::apply` guards Automerge with
/// `catch_unwind`): libfuzzer-sys's hook aborts on *every* panic, caught or not, so it is replaced
/// by one that only records the panic. [`run_guarded`] then aborts (with the message) only for a
/// panic that escapes the target's body.
pub fn quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let bt = if std::env::var_os("RUST_BACKTRACE").is_some() {
            format!("\n{}", std::backtrace::Backtrace::force_capture())
        } else {
            String::new()
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("panicked at {at}:\n{msg}{bt}")));
    }));
}

/// The last panic [`quiet_panic_hook`] recorded on this thread (location and message).
pub fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

/// Runs `f`; a panic that escapes it is printed and aborts the process (a crash for libFuzzer).
pub fn run_guarded(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        let msg = LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_default();
        eprintln!("uncaught panic in the fuzz target: {msg}");
        std::process::abort();
    }
}

/// Splits fuzz input into length-prefixed parts (u16 big-endian length, then bytes; a short
/// tail is the last part), so one input can carry several items.
pub fn split_parts(mut data: &[u8], max_parts: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < max_parts {
        if data.len() < 2 {
            out.push(data);
            break;
        }
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// The inverse of [`split_parts`] (for the seed generator).
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}
