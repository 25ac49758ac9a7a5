//! Compute-to-data on the wire: what a member's app receives from an owner.

use anyhow::{bail, ensure, Context, Result};
use fogmesh::identity::Identity;
use fogmesh::mesh::proto;
use serde_json::json;

use crate::checks::{expect_bad_inputs, frame, target};
use crate::common::TestNode;
use crate::raw::{Proto, RawClient};

/// What the requester of a federated aggregate or a pushed-down search receives, byte for byte,
/// carries no record data field: a marker written into every record's data never appears in the
/// answers, which hold groups with counts and averages, or id, name, time and location.
#[test]
fn no_data_field_crosses_the_wire_in_federated_answers_or_search() -> Result<()> {
    use fogmesh::mesh::proto::{Answer, QueryRequest, QueryResponse};
    use fogmesh::view::plan::FilterSpec;
    let dir = tempfile::tempdir()?;
    let node = TestNode::init(&dir.path().join("hospital"), "hospital")?;
    node.cli(&["dataset", "create", "visits"]).ok();
    let marker = "MARKER-DATA-7f3a91";
    let lines: String = (0..12)
        .map(|i| {
            let name = format!("district-{}/ward-{}/visit", i % 2, i % 3);
            let data = json!({ "cases": i, "note": marker, "patient": format!("{marker}-{i}") });
            format!("{}\n", json!({ "name": name, "data": data }))
        })
        .collect();
    node.cli_stdin(&["publish", "hospital/visits"], lines.as_bytes())
        .ok();
    let grant = [
        "grant",
        "hospital/visits",
        "--to",
        "mallory/analyst",
        "--rights",
        "query",
    ];
    node.cli(&grant).ok();

    let mut mallory = TestNode::init(&dir.path().join("mallory"), "mallory")?;
    let invite = node.cli(&["invite", "--json"]).ok().json();
    let token = invite["token"].as_str().context("invite token")?.to_owned();
    mallory.cli(&["join", &token]).ok();
    mallory.stop()?;
    let identity = Identity::load(&mallory.home)?;
    let (peer, addr) = target(&node)?;
    let mut c = RawClient::new(identity.libp2p_keypair()?, peer, addr)?;
    c.connect()?;

    let ask = |c: &RawClient, req: &QueryRequest| {
        let answer = c.request(Proto::Query, frame(&proto::encode(req)));
        let bytes = answer.bytes().to_vec();
        (answer.message::<QueryResponse>(), bytes)
    };
    let aggregate = QueryRequest::Aggregate {
        app: "analyst".into(),
        dataset: "hospital/visits".into(),
        filter: FilterSpec::default(),
        group_by: vec!["segment:0".into()],
        aggregates: vec!["count".into(), "avg:cases".into(), "max:cases".into()],
    };
    let (got, bytes) = ask(&c, &aggregate);
    ensure!(!bytes.is_empty(), "no answer to the aggregate");
    ensure!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "a data field crossed the wire in an aggregate answer"
    );
    let QueryResponse::Answer { body, .. } = got? else {
        bail!("the aggregate was refused")
    };
    let Answer::Groups { groups, .. } = proto::decode::<Answer>("answer", &body)? else {
        bail!("not groups")
    };
    ensure!(groups.len() == 2, "{groups:?}");
    // Only what the measures need crosses: counts and sums for the average, maxima for max.
    ensure!(
        groups
            .iter()
            .all(|(_, p)| p.accs[1].min.is_none() && p.accs[1].max.is_none()),
        "{groups:?}"
    );
    ensure!(groups.iter().all(|(_, p)| p.rows == 6), "{groups:?}");

    let search = QueryRequest::Search {
        app: "analyst".into(),
        dataset: "visits".into(),
        filter: FilterSpec {
            predicates: vec!["cases>=0".into()],
            ..FilterSpec::default()
        },
        location_segment: 0,
        limit: 100,
    };
    let (got, bytes) = ask(&c, &search);
    ensure!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "a data field crossed the wire in a search answer"
    );
    let QueryResponse::Answer { body, .. } = got? else {
        bail!("the search was refused")
    };
    let Answer::Matches { matches, .. } = proto::decode::<Answer>("answer", &body)? else {
        bail!("not matches")
    };
    ensure!(matches.len() == 12, "{} matches", matches.len());
    ensure!(matches.iter().all(|m| m
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with("district-"))));

    // Control: another app of the same organization holds no grant and gets nothing.
    let other = QueryRequest::Search {
        app: "other".into(),
        dataset: "visits".into(),
        filter: FilterSpec::default(),
        location_segment: 0,
        limit: 100,
    };
    match ask(&c, &other).0? {
        QueryResponse::Refused(reason) => ensure!(reason.contains("no query grant"), "{reason}"),
        QueryResponse::Answer { .. } => bail!("an app without a grant got an answer"),
    }
    expect_bad_inputs(&node, &c.local, 0)?;
    Ok(())
}
