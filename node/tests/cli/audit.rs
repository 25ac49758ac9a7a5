//! CLI: the audit log (`fogmesh audit`, `audit verify`) and the flu demo's audit summary.

use super::*;

/// The newest NDJSON line of `rx` whose `key` is `want`, within the CLI deadline.
fn line_with(rx: &std::sync::mpsc::Receiver<String>, key: &str, want: &Value) -> Value {
    let deadline = std::time::Instant::now() + common::CLI_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("a followed entry in time");
        let v: Value = serde_json::from_str(&line).expect("NDJSON");
        if &v[key] == want {
            return v;
        }
    }
}

/// Changes entry `seq` of the audit log in the stopped node's store.
fn edit_audit_entry(home: &std::path::Path, seq: u64, field: &str, to: &str) {
    let path = home.join(fogmesh::node::home::DATA_DIR);
    let db = sled::Config::new()
        .path(path)
        .open()
        .expect("the store opens");
    let tree = db.open_tree("audit").expect("tree");
    let mut key = vec![b'e'];
    key.extend_from_slice(&seq.to_be_bytes());
    let stored = tree.get(&key).expect("get").expect("the entry is stored");
    let mut e: Value = serde_json::from_slice(&stored).expect("json");
    e[field] = to.into();
    tree.insert(key, serde_json::to_vec(&e).expect("json"))
        .expect("insert");
    db.flush().expect("flush");
}

#[test]
fn audit_lists_filters_follows_and_verify_names_an_edited_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    node.create_flu("agency", &[]);
    let app = node.cli(&[
        "app",
        "add",
        "planner",
        "--rights",
        "read:hospital/flu",
        "--json",
    ]);
    let token = one_json(&app.ok())["token"].as_str().unwrap().to_owned();
    let denied = ["publish", "hospital/flu", "--name", "d7", "--token", &token];
    assert!(node.cli(&denied).code(1).stderr.contains("403"));

    let all = one_json(&node.cli(&["audit", "--json"]).ok());
    let actions: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["dataset-create", "grant", "app-add", "write"],
        "{all}"
    );
    let refused = one_json(&node.cli(&["audit", "--refused", "--json"]).ok());
    assert_eq!(
        refused["entries"].as_array().map(Vec::len),
        Some(1),
        "{refused}"
    );
    assert_eq!(refused["entries"][0]["actor"], "hospital/planner");
    let grants = one_json(
        &node
            .cli(&["audit", "--action", "grant", "--since", "1h", "--json"])
            .ok(),
    );
    assert_eq!(
        grants["entries"][0]["detail"]
            .as_str()
            .map(|d| d.contains("agency/*")),
        Some(true)
    );
    let table = node.cli(&["audit", "--limit", "2"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and the newest two:\n{table}");
    assert!(
        lines[0].starts_with("SEQ") && lines[2].contains("refused: app planner has no write right"),
        "{table}"
    );

    // --follow prints what is kept, then each entry as it is appended.
    let mut follow = ChildGuard(
        common::fogmesh()
            .args(["audit", "--follow", "--json", "--home", s(&node.home)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = BufReader::new(follow.0.stdout.take().unwrap());
    std::thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .try_for_each(|l| tx.send(l))
    });
    assert_eq!(line_with(&rx, "seq", &json!(4))["action"], "write");
    node.cli(&["app", "add", "dashboard"]).ok();
    let added = line_with(&rx, "seq", &json!(5));
    assert_eq!(
        (added["action"].as_str(), added["actor"].as_str()),
        (Some("app-add"), Some("hospital/admin"))
    );
    drop(follow);

    let ok = node.cli(&["audit", "verify"]).ok();
    assert!(
        ok.stdout.contains("audit log intact: 5 entries"),
        "{}",
        ok.stdout
    );

    // Stopped, an entry is changed on disk: verify exits 1 and names it.
    assert!(node.stop().unwrap().success());
    edit_audit_entry(&node.home, 3, "detail", "app planner with rights [*]");
    node.restart().unwrap();
    let bad = node.cli(&["audit", "verify"]).code(1);
    assert!(bad.stderr.contains("entry 3 (edited)"), "{}", bad.stderr);
    let bad = node.cli(&["audit", "verify", "--json"]).code(1);
    let v = one_json(&bad);
    assert_eq!(
        (v["ok"].as_bool(), v["bad"]["seq"].as_u64()),
        (Some(false), Some(3)),
        "{v}"
    );
}

#[test]
fn the_flu_demo_finds_every_action_it_performed_in_the_audit_logs() {
    let mut demo = ChildGuard(
        common::fogmesh()
            .arg("demo")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = common::reader(demo.0.stdout.take().unwrap());
    let err = common::reader(demo.0.stderr.take().unwrap());
    // Five node processes: generous on a loaded 2-core machine; it takes seconds when idle.
    let status = common::wait_deadline(&mut demo.0, std::time::Duration::from_secs(600))
        .expect("the demo ends");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    // The demo checks its expected entries itself and fails when one is missing.
    assert!(status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("every action of the scenario is in the audit logs"),
        "{out}"
    );
    for org in ["hospital", "pharmacy", "drugmaker", "agency", "insurer"] {
        let summary = out
            .lines()
            .find(|l| l.contains(org) && l.contains("audit log:"))
            .unwrap_or_else(|| panic!("no audit summary of {org}:\n{out}"));
        assert!(summary.contains("chain intact"), "{summary}");
    }
    let hospital = out
        .lines()
        .find(|l| l.contains("hospital") && l.contains("audit log:"))
        .unwrap();
    for action in [
        "invite 4",
        "member-admit 4",
        "revoke 1",
        "refused: federated-aggregate 1",
    ] {
        assert!(hospital.contains(action), "{action} missing: {hospital}");
    }
}
