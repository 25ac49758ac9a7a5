//! Process-level tests of the `fogmesh` binary: `init`, `id`, the client commands against a real
//! `fogmesh run` child on loopback, exit codes, `--json` output and graceful shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{run_cli, s, ChildGuard, TestNode};
use serde_json::{json, Value};

/// Parses stdout as exactly one JSON document (fails on trailing text).
#[track_caller]
fn one_json(out: &common::Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` printed no single JSON document ({e}):\n{}",
            out.cmdline, out.stdout
        )
    })
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_creates_secret_files_and_a_documented_config_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let out = run_cli(&common::init_args(s(&home), "hospital"), None).ok();
    assert!(out.stdout.contains("peer id: 12D3KooW"), "{}", out.stdout);
    #[cfg(unix)]
    for f in ["identity.key", "x25519.key", "admin.token"] {
        assert_eq!(mode(&home.join(f)), 0o600, "{f}");
    }
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    for field in [
        "org",
        "mesh",
        "listen",
        "api",
        "snapshot_every",
        "max_body_bytes",
    ] {
        let line = config
            .lines()
            .position(|l| l.starts_with(&format!("{field} =")))
            .unwrap_or_else(|| panic!("config.toml lacks {field}:\n{config}"));
        let above = config.lines().nth(line.saturating_sub(1)).unwrap_or("");
        assert!(
            above.starts_with('#'),
            "{field} is not documented:\n{config}"
        );
    }
    let again = run_cli(&common::init_args(s(&home), "pharmacy"), None).code(1);
    assert!(
        again.stderr.contains("refusing to overwrite"),
        "{}",
        again.stderr
    );
    let config_after = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert_eq!(config, config_after, "a refused init changed the home");
}

#[test]
fn id_prints_the_identity_in_text_and_as_one_json_document() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let init = run_cli(&common::init_args(s(&home), "clinic"), None).ok();
    let v = one_json(&run_cli(&["id", "--home", s(&home), "--json"], None).ok());
    assert_eq!(v["org"], "clinic");
    let peer = v["peer_id"].as_str().unwrap();
    assert!(
        init.stdout.contains(peer),
        "init and id disagree: {}",
        init.stdout
    );
    assert_eq!(v["listen"], json!(["/ip4/127.0.0.1/tcp/0"]));
    assert_eq!(v["agreement_key"].as_str().unwrap().len(), 64);
    let text = run_cli(&["id", "--home", s(&home)], None).ok();
    assert!(text.stdout.contains(peer), "{}", text.stdout);
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let out = run_cli(&["publish"], None).code(2);
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
    let out = run_cli(&["no-such-command"], None).code(2);
    assert!(!out.stderr.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none");
    let out = run_cli(&["id", "--home", s(&missing)], None).code(1);
    assert!(out.stderr.contains("no usable node home"), "{}", out.stderr);
}

#[test]
fn client_commands_say_clearly_when_the_node_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    run_cli(&common::init_args(s(&home), "hospital"), None).ok();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let api = port.to_string();
    for args in [
        vec!["status"],
        vec!["dataset", "list"],
        vec!["query", "hospital/flu"],
        vec!["publish", "hospital/flu", "--name", "d7"],
    ] {
        let mut all = args.clone();
        all.extend(["--home", s(&home), "--api", &api, "--json"]);
        let out = run_cli(&all, None).code(1);
        assert!(
            out.stderr.contains("cannot reach the fogmesh node"),
            "{}",
            out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "stdout must stay empty on error: {}",
            out.stdout
        );
    }
}

#[test]
fn the_client_commands_drive_a_running_node_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();

    let ds = one_json(&node.create_flu("agency", &["--json"]));
    assert_eq!(
        (ds["id"].as_str(), ds["visibility"].as_str()),
        (Some("hospital/flu"), Some("shared"))
    );
    let app = one_json(
        &node
            .cli(&[
                "app",
                "add",
                "planner",
                "--rights",
                "read:hospital/flu",
                "--json",
            ])
            .ok(),
    );
    let token = app["token"].as_str().expect("token shown once").to_owned();
    assert!(token.starts_with("fm_"), "{app}");

    let one = node
        .cli(&[
            "publish",
            "hospital/flu",
            "--name",
            "d7/ward-3",
            "--data",
            r#"{"cases":3}"#,
            "--time",
            "1000",
            "--json",
        ])
        .ok();
    assert_eq!(one_json(&one)["ids"].as_array().map(Vec::len), Some(1));
    let ndjson: String = (0..1200)
        .map(|i| format!("{{\"id\":\"r{i}\",\"name\":\"d8/ward-{}\",\"time\":{},\"data\":{{\"cases\":{i}}}}}\n", i % 4, 2000 + i))
        .collect();
    let many = node
        .cli_stdin(
            &["publish", "hospital/flu", "--batch", "500", "--json"],
            ndjson.as_bytes(),
        )
        .ok();
    assert_eq!(one_json(&many)["ids"].as_array().map(Vec::len), Some(1200));

    let q = one_json(
        &node
            .cli(&[
                "query",
                "hospital/flu",
                "--name-prefix",
                "d8/ward-1",
                "--where",
                "cases>=1000",
                "--json",
            ])
            .ok(),
    );
    let ids: Vec<&str> = q["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1001..1200).step_by(4).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want);
    let ndjson = |more: &[&str]| {
        let mut args = vec!["query", "hospital/flu", "--format", "ndjson"];
        args.extend(more);
        node.cli(&args).ok()
    };
    let nd = ndjson(&["--limit", "3", "--order", "desc"]);
    let lines: Vec<Value> = nd
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        [json!("r1199"), json!("r1198"), json!("r1197")]
    );
    // Into a pipe (not a terminal): no progress drawn, one summary line.
    let more: String = (0..600)
        .map(|i| {
            format!(
                "{{\"id\":\"m{i}\",\"name\":\"d9/x\",\"time\":{},\"data\":{{}}}}\n",
                5000 + i
            )
        })
        .collect();
    let quiet = node
        .cli_stdin(
            &["publish", "hospital/flu", "--batch", "100"],
            more.as_bytes(),
        )
        .ok();
    assert_eq!(quiet.stderr, "published 600 records\n");
    // Past the 10,000 of one JSON page, rows of one dataset stream as NDJSON.
    let all = ndjson(&["--limit", "1000000"]);
    assert_eq!(all.lines().len(), 1801, "{}", all.stderr);
    // Into `head`, which closes the pipe after one line: the CLI ends quietly, no panic.
    let err = dir.path().join("stderr");
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} query hospital/flu --format ndjson --limit 1000000 --home {} 2>{} | head -1",
            common::bin(),
            s(&node.home),
            s(&err)
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
    let err = std::fs::read_to_string(&err).unwrap();
    assert!(err.is_empty(), "{err}");
    let table = node
        .cli(&["query", "hospital/flu", "--name-prefix", "d7"])
        .ok();
    assert!(
        table.stdout.contains("d7/ward-3") && table.stdout.contains(r#"{"cases":3}"#),
        "{}",
        table.stdout
    );

    let st = one_json(&node.cli(&["status", "--json"]).ok());
    assert_eq!(st["node"]["org"], "hospital");
    assert_eq!(st["datasets"][0]["records"], 1801, "{st}");

    // The app's token reaches what its rights name and nothing more.
    let read = node
        .cli(&[
            "query",
            "hospital/flu",
            "--limit",
            "1",
            "--json",
            "--token",
            &token,
        ])
        .ok();
    assert_eq!(one_json(&read)["records"].as_array().map(Vec::len), Some(1));
    let denied = node
        .cli(&["publish", "hospital/flu", "--name", "x", "--token", &token])
        .code(1);
    assert!(denied.stderr.contains("403"), "{}", denied.stderr);

    // SIGTERM shuts down gracefully (exit 0) and nothing acknowledged is lost.
    let status = node.stop().unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        node.log_tail()
    );
    node.restart().unwrap();
    let st = one_json(&node.cli(&["status", "--json"]).ok());
    assert_eq!(st["datasets"][0]["records"], 1801, "{st}");
}

/// Spawns a `fogmesh watch` command and waits for the line on stderr that says its subscription is
/// live; returns the child and the rest of its stderr.
fn start_watch(
    mut cmd: std::process::Command,
) -> (ChildGuard, BufReader<std::process::ChildStderr>) {
    let mut watch = ChildGuard(cmd.stderr(Stdio::piped()).spawn().expect("spawn watch"));
    let mut stderr = BufReader::new(watch.0.stderr.take().expect("stderr is piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read stderr");
    assert!(line.starts_with("watching hospital/flu"), "{line}");
    (watch, stderr)
}

#[test]
fn watch_streams_one_ndjson_line_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    node.cli(&["dataset", "create", "flu"]).ok();
    let mut cmd = common::fogmesh();
    cmd.args(["watch", "hospital/flu", "--count", "2", "--json", "--home"])
        .arg(&node.home)
        .stdout(Stdio::piped());
    let (mut watch, _stderr) = start_watch(cmd);
    let stdout = common::reader(watch.0.stdout.take().unwrap());
    for data in [r#"{"cases":1}"#, r#"{"cases":2}"#] {
        let args = [
            "publish",
            "hospital/flu",
            "--name",
            "d7",
            "--id",
            "w1",
            "--data",
            data,
        ];
        node.cli(&args).ok();
    }
    let status = common::wait_deadline(&mut watch.0, common::CLI_DEADLINE)
        .expect("watch ends after --count");
    assert!(status.success());
    let text = stdout.join().unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[1]["kind"], "upsert");
    assert_eq!(events[1]["record"]["data"]["cases"], 2);
}

#[test]
fn invite_and_join_on_the_command_line_make_two_members_that_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let hospital = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    let pharmacy = TestNode::init(&dir.path().join("p"), "pharmacy").unwrap();
    let token = hospital.cli(&["invite", "--ttl", "60"]).ok().stdout;
    let token = token.trim();
    assert!(token.starts_with("fm-invite-"), "{token}");
    let joined = one_json(&pharmacy.cli(&["join", token, "--json"]).ok());
    assert_eq!(joined["members"], json!(["hospital", "pharmacy"]));
    // A member of a mesh cannot join again.
    let again = pharmacy.cli(&["join", token]).code(1);
    assert!(
        again.stderr.contains("already a member"),
        "{}",
        again.stderr
    );
    let deadline = std::time::Instant::now() + common::CLI_DEADLINE;
    loop {
        let peers = one_json(&hospital.cli(&["peers", "--json"]).ok());
        let up = peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["org"] == "pharmacy" && p["up"] == true);
        if up {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{peers}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = one_json(&pharmacy.cli(&["status", "--json"]).ok());
    assert_eq!(status["mesh"]["members"], json!(["hospital", "pharmacy"]));

    // Roles: the founder is the admin; the pharmacy may not invite or remove.
    let roles = |n: &TestNode| -> Vec<(String, String, String)> {
        let v = one_json(&n.cli(&["member", "list", "--json"]).ok());
        let list = v["members"].as_array().unwrap().iter();
        list.map(|m| {
            let f = |k: &str| m[k].as_str().unwrap().to_owned();
            (f("org"), f("role"), f("state"))
        })
        .collect()
    };
    let both_active = [("hospital", "admin"), ("pharmacy", "member")]
        .map(|(o, r)| (o.to_owned(), r.to_owned(), "active".to_owned()));
    assert_eq!(roles(&pharmacy), both_active);
    let table = hospital.cli(&["member", "list"]).ok().stdout;
    assert!(
        table.contains("admin") && table.contains("pharmacy"),
        "{table}"
    );
    let refused = pharmacy.cli(&["invite"]).code(1);
    assert!(
        refused.stderr.contains("admins of the mesh"),
        "{}",
        refused.stderr
    );
    let refused = pharmacy.cli(&["member", "remove", "hospital"]).code(1);
    assert!(refused.stderr.contains("403"), "{}", refused.stderr);
    let own = hospital.cli(&["member", "remove", "hospital"]).code(1);
    assert!(own.stderr.contains("another admin"), "{}", own.stderr);
    let unknown = hospital.cli(&["member", "remove", "nobody"]).code(1);
    assert!(unknown.stderr.contains("404"), "{}", unknown.stderr);
    hospital
        .cli(&["member", "role", "pharmacy", "superuser"])
        .code(2);
    hospital.cli(&["member", "role", "pharmacy", "admin"]).ok();
    hospital.cli(&["member", "remove", "pharmacy"]).ok();
    let removed = hospital.cli(&["member", "remove", "pharmacy"]).code(1);
    assert!(
        removed.stderr.contains("already removed"),
        "{}",
        removed.stderr
    );
    let after = roles(&hospital);
    assert_eq!(
        after[1],
        ("pharmacy".into(), "admin".into(), "removed".into())
    );
}

#[test]
fn query_asks_the_shared_view_for_aggregates_over_two_datasets_and_for_ordered_rows() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    for (name, lines) in [
        (
            "flu",
            [
                r#"{"id":"a","name":"d7/w1","time":1000,"data":{"cases":3}}"#,
                r#"{"id":"b","name":"d7/w2","time":2000,"data":{"cases":8}}"#,
                r#"{"id":"c","name":"d8/w1","time":3000,"data":{"cases":5}}"#,
            ],
        ),
        (
            "beds",
            [
                r#"{"id":"x","name":"d7/w3","time":1500,"data":{"cases":7}}"#,
                r#"{"id":"y","name":"d9","time":2500,"data":{"cases":1}}"#,
                r#"{"id":"z","name":"d8/w2","time":3500,"data":{"beds":2}}"#,
            ],
        ),
    ] {
        node.cli(&["dataset", "create", name]).ok();
        let ndjson = lines.join("\n") + "\n";
        let ds = format!("hospital/{name}");
        let out = node
            .cli_stdin(&["publish", &ds, "--json"], ndjson.as_bytes())
            .ok();
        assert_eq!(one_json(&out)["ids"].as_array().map(Vec::len), Some(3));
    }

    let agg = one_json(
        &node
            .cli(&[
                "query",
                "hospital/flu",
                "hospital/beds",
                "--agg",
                "count,avg:cases",
                "--group-by",
                "segment:0",
                "--json",
            ])
            .ok(),
    );
    let groups = agg["groups"].as_array().expect("groups");
    let got: Vec<(&str, u64, Option<f64>)> = groups
        .iter()
        .map(|g| {
            let seg = g["segment:0"].as_str().expect("segment:0");
            (
                seg,
                g["count"].as_u64().expect("count"),
                g["avg:cases"].as_f64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("d7", 3, Some(6.0)),
            ("d8", 2, Some(5.0)),
            ("d9", 1, Some(1.0))
        ],
        "{agg}"
    );
    let sources: Vec<(&Value, &Value)> = agg["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| (&s["dataset"], &s["status"]))
        .collect();
    assert_eq!(
        sources,
        [
            (&json!("hospital/flu"), &json!("local")),
            (&json!("hospital/beds"), &json!("local"))
        ],
        "{agg}"
    );

    let rows = one_json(
        &node
            .cli(&[
                "query",
                "hospital/flu",
                "--select",
                "name,cases",
                "--order-by",
                "-cases",
                "--limit",
                "2",
                "--json",
            ])
            .ok(),
    );
    assert_eq!(
        rows,
        json!({"count": 2, "rows": [
            {"name": "d7/w2", "cases": 8},
            {"name": "d8/w1", "cases": 5},
        ]})
    );

    // A malformed query exits 1 and names the part at fault.
    let bad = node
        .cli(&["query", "hospital/flu", "--agg", "median:cases", "--json"])
        .code(1);
    assert!(bad.stderr.contains("aggregates[0]"), "{}", bad.stderr);
    assert!(bad.stdout.is_empty(), "{}", bad.stdout);

    sql_asks_the_same_view(&node);
}

/// `fogmesh sql` over the datasets of the test above: groups named, ordered and limited as the
/// statement says; rows streamed as NDJSON; a table with the statement's columns; `--explain`
/// without a node; a part outside the dialect named, exit 1.
fn sql_asks_the_same_view(node: &TestNode) {
    let grouped = "SELECT segment(0) AS d, count(*) AS n, avg(cases) FROM hospital.flu, \
                   \"hospital/beds\" GROUP BY d ORDER BY n DESC LIMIT 2";
    let v = one_json(&node.cli(&["sql", grouped, "--json"]).ok());
    assert_eq!(v["columns"], json!(["d", "n", "avg(cases)"]), "{v}");
    assert_eq!(
        v["rows"],
        json!([{"d": "d7", "n": 3, "avg(cases)": 6.0}, {"d": "d8", "n": 2, "avg(cases)": 5.0}])
    );
    let table = node.cli(&["sql", grouped]).ok();
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["D", "N", "AVG(CASES)"], "{}", table.stdout);

    let rows = "SELECT id FROM hospital.flu WHERE cases > 4 OR NOT cases >= 2 ORDER BY id";
    let nd = node.cli(&["sql", "--format", "ndjson", rows]).ok();
    assert_eq!(
        nd.lines(),
        [r#"{"id":"b"}"#, r#"{"id":"c"}"#],
        "{}",
        nd.stdout
    );

    let explained = one_json(&run_cli(&["sql", "--explain", rows], None).ok());
    assert_eq!(
        explained["query"]["where"],
        json!([{"or": ["cases>4", {"not": "cases>=2"}]}])
    );

    let bad = node
        .cli(&[
            "sql",
            "SELECT * FROM hospital.flu JOIN hospital.beds ON a = b",
        ])
        .code(1);
    assert!(bad.stderr.contains("sql: JOIN: "), "{}", bad.stderr);
    assert!(bad.stdout.is_empty(), "{}", bad.stdout);
}

#[path = "cli/tokens.rs"]
mod tokens;

#[path = "cli/audit.rs"]
mod audit;
