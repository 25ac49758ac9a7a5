//! Rosters from peers (`SyncResponse::Roster`, Hello answers; CBOR via `proto::decode`): what a
//! joining node adopts (`Roster::verified`) and what a member merges (`Roster::merge`), with
//! the governance operations and member certificates inside.
//!
//! Asserts: verifying a verified roster changes nothing (a restart rebuilds the same roster:
//! same digest, same member listing); merging the same roster twice adds nothing the second
//! time; a merged roster re-verifies to itself; the founder stays a member.
#![no_main]

use fogmesh::mesh::proto;
use fogmesh::mesh::roster::Roster;
use fogmesh_fuzz::NOW;
use libfuzzer_sys::fuzz_target;

fn listing(r: &Roster) -> String {
    serde_json::to_string(&r.list()).expect("listing serializes")
}

fuzz_target!(|data: &[u8]| {
    let Ok(theirs) = proto::decode::<Roster>("roster", data) else {
        return;
    };
    if let Ok(v) = Roster::verified(&theirs, NOW) {
        let again = Roster::verified(&v, NOW).expect("a verified roster verifies");
        assert_eq!(again.digest(), v.digest(), "verification is not idempotent");
        assert_eq!(listing(&again), listing(&v));
        assert!(v.founding().is_some());
        for m in v.iter() {
            assert!(v.by_org(&m.org).is_some());
        }
        let _ = (v.removed_keys(), v.heads(), v.dropped().len());
    }
    let mut mine = fogmesh_fuzz::roster().clone();
    let _ = mine.merge(&theirs, NOW);
    let (n, _) = mine.merge(&theirs, NOW);
    assert_eq!(n, 0, "merging one roster twice added items the second time");
    let rebuilt = Roster::verified(&mine, NOW).expect("a merged roster verifies");
    assert_eq!(
        rebuilt.digest(),
        mine.digest(),
        "a restart would rebuild another roster"
    );
    assert_eq!(listing(&rebuilt), listing(&mine));
    assert!(mine.by_org("hospital").is_some() || mine.entry("hospital").is_some());
});
