//! The node held to outside tools, as an operator would plug it in: systemd's own checks of the
//! unit in `packaging/`, a real Prometheus server scraping `/metrics`, and the container recipe
//! in `packaging/` built and run by podman. Each test is skipped, saying why, where its tool is
//! missing (`.ci/run` installs them from Debian's packages).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, TestNode};
use serde_json::Value;

/// Whether `tool --version` runs; if not, says the test is skipped.
fn have(tool: &str, package: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED {test}: {tool} is missing (Debian package `{package}`)");
    }
    ok
}

/// The systemd unit in packaging/ passes `systemd-analyze verify` without a warning and its
/// sandboxing rates "OK" or better in `systemd-analyze security` (exposure at most 2.0 of 10).
/// Skipped, with the reason printed, where systemd-analyze is missing.
#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    if !have(
        "systemd-analyze",
        "systemd",
        "the_systemd_unit_verifies_and_is_sandboxed",
    ) {
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/fogmesh.service"
    ))
    .expect("packaging/fogmesh.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/fogmesh run --home /var/lib/fogmesh"));
    // Verified with the binary just built where `cargo install` would put it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fogmesh.service");
    let here = unit.replace("/usr/local/bin/fogmesh", env!("CARGO_BIN_EXE_fogmesh"));
    std::fs::write(&path, here).unwrap();
    let analyze = |args: &[&str]| {
        let out = Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, _, warnings) = analyze(&["verify"]);
    assert!(ok && warnings.trim().is_empty(), "{warnings}");
    let (_, report, err) = analyze(&["security", "--offline=yes"]);
    let level = report
        .lines()
        .chain(err.lines())
        .find_map(|l| {
            l.split("Overall exposure level for fogmesh.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}\n{err}"));
    eprintln!("systemd-analyze security: exposure {level} of 10");
    assert!(level <= 2.0, "exposure {level}:\n{report}");
}

/// A free loopback port (bound, then released for the tool to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET /api/v1/query?query=Q` on the Prometheus server at `port`: the result vector.
fn prom_query(port: u16, q: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let answer = ureq::get(&url)
        .query("query", q)
        .call()
        .ok()
        .and_then(|r| r.into_json::<Value>().ok());
    answer
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// A sample's value.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A real Prometheus server scrapes a running node's `/metrics` with a `metrics:*` app's token, which
/// sees no dataset through the API (its own
/// `up` is 1: the exposition parsed), and reads the figures `fogmesh status` shows: the records
/// of the dataset, the datasets owned, the store's bytes.
#[test]
fn a_prometheus_server_scrapes_the_node_and_reads_what_status_shows() {
    let test = "a_prometheus_server_scrapes_the_node_and_reads_what_status_shows";
    if !have("prometheus", "prometheus", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    node.create_flu("agency", &[]);
    let lines: String = (0..25)
        .map(|i| {
            format!(
                "{{\"name\":\"d{}/ward\",\"data\":{{\"cases\":{i}}}}}\n",
                i % 3
            )
        })
        .collect();
    node.cli_stdin(&["publish", "hospital/flu"], lines.as_bytes())
        .ok();
    node.cli(&[
        "grant",
        "hospital/flu",
        "--to",
        "agency/*",
        "--rights",
        "read",
    ])
    .ok();
    let status = node.cli(&["status", "--json"]).ok().json();
    assert_eq!(status["datasets"][0]["records"], 25, "{status}");
    assert!(status["node"]["store_bytes"].as_u64() > Some(0), "{status}");

    // Prometheus holds a token that may only scrape.
    let token = dir.path().join("prometheus.token");
    let path = token.display().to_string();
    node.cli(&[
        "app",
        "add",
        "prometheus",
        "--rights",
        "metrics:*",
        "--save-token",
        &path,
    ])
    .ok();
    let scraper = std::fs::read_to_string(&token).unwrap();
    let seen = ureq::get(&node.url("/v1/datasets"))
        .set("Authorization", &format!("Bearer {}", scraper.trim()))
        .call()
        .expect("datasets")
        .into_json::<Value>()
        .expect("json");
    assert_eq!(
        seen["datasets"],
        serde_json::json!([]),
        "the scraper sees no dataset"
    );
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fogmesh\n    \
             metrics_path: /metrics\n    authorization:\n      type: Bearer\n      \
             credentials_file: {}\n    static_configs:\n      - targets: [\"{}\"]\n",
            token.display(),
            node.addr
        ),
    )
    .unwrap();
    let server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus");
    let _server = ChildGuard(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let found = prom_query(port, "fogmesh_records");
        if !found.is_empty() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus scraped nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let up = prom_query(port, "up{job=\"fogmesh\"}");
    assert_eq!(up.iter().map(value).collect::<Vec<_>>(), [1.0], "{up:?}");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["metric"]["dataset"], "hospital/flu");
    assert_eq!(value(&records[0]), 25.0, "status said 25");
    let owned = prom_query(port, "fogmesh_datasets{role=\"owned\"}");
    assert_eq!(owned.iter().map(value).collect::<Vec<_>>(), [1.0]);
    let grants = prom_query(port, "fogmesh_grants{state=\"active\"}");
    assert_eq!(grants.iter().map(value).collect::<Vec<_>>(), [1.0]);
    let bytes = prom_query(port, "fogmesh_store_bytes");
    assert!(bytes.first().map(value) > Some(0.0), "{bytes:?}");
    let written = prom_query(port, "fogmesh_records_written_total");
    assert_eq!(written.iter().map(value).collect::<Vec<_>>(), [25.0]);
    dashboard_queries_hold(port, &node.get_text("/metrics").expect("metrics"));
}

/// Every query of the Grafana dashboard in docs/ is PromQL this Prometheus accepts (all nodes
/// selected), and names only metric families the node exposes.
fn dashboard_queries_hold(port: u16, exposition: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
        .expect("dashboard JSON");
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$instance", ".*");
            let url = format!("http://127.0.0.1:{port}/api/v1/query");
            let answer: Value = ureq::get(&url)
                .query("query", &expr)
                .call()
                .unwrap_or_else(|e| panic!("{expr}: {e}"))
                .into_json()
                .expect("JSON");
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("fogmesh_"))
            {
                let base = ["_total", "_bucket"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    families.contains(&base),
                    "{name} (in {expr}) is not exposed"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} queries");
}

/// A hard resource limit of this process (`/proc/self/limits`), if it tells.
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().nth(1)?.parse().ok()
}

/// `podman` with the options every container of the test takes: runc (crun refuses this kind of
/// machine's mixed cgroup v1/v2 mounts), limits within the host's hard limits (podman's default
/// of 1,048,576 open files is above them), the host's network (loopback only).
fn podman(args: &[&str]) -> Command {
    let nofile = hard_limit("Max open files").unwrap_or(1024).min(65_536);
    let nproc = hard_limit("Max processes").unwrap_or(4096).min(32_768);
    let mut cmd = Command::new("podman");
    let (verb, rest) = args.split_first().expect("a podman verb");
    cmd.arg(verb);
    if *verb == "run" {
        cmd.args(["--runtime", "runc", "--network", "host"])
            .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
            .arg(format!("--ulimit=nproc={nproc}:{nproc}"));
    }
    cmd.args(rest);
    cmd
}

/// Runs a podman command to success, returning its stdout.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args).output().expect("podman");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Removes the named container, or image, when the test ends, however it ends.
struct Podman(&'static str, String);

impl Drop for Podman {
    fn drop(&mut self) {
        let (verb, name) = (self.0, &self.1);
        let _ = Command::new("podman")
            .args([verb, "--force", name])
            .output();
    }
}

/// The container recipe in packaging/ builds without a daemon (podman; the base image made from
/// Debian's packages by mmdebstrap, as on a host that reaches no image registry) and runs a node:
/// `init` and `run` in the image as its unprivileged user, the API answers on the host's loopback,
/// the CLI works inside, the log is plain text, and a stop is clean (exit 0, state flushed).
/// Skipped, with the reason printed, where podman, runc or mmdebstrap is missing.
#[test]
fn the_container_image_builds_and_runs_a_node() {
    let test = "the_container_image_builds_and_runs_a_node";
    for (tool, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("mmdebstrap", "mmdebstrap"),
    ] {
        if !have(tool, package, test) {
            return;
        }
    }
    let tag = "localhost/fogmesh-test:tools";
    let _image = Podman("rmi", tag.to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/container.sh");
    let built = Command::new(script)
        .args(["--binary", env!("CARGO_BIN_EXE_fogmesh"), "--tag", tag])
        .arg("--debootstrap")
        .output()
        .expect("packaging/container.sh");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let user = podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", tag]);
    assert_eq!(user.trim(), "10001:10001", "the image runs as its own user");

    let dir = tempfile::tempdir().unwrap();
    if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(10001), Some(10001)) {
        eprintln!("SKIPPED {test}: the node's home must belong to the image's user 10001 ({e})");
        return;
    }
    let volume = format!("{}:/var/lib/fogmesh", dir.path().display());
    let api = format!("127.0.0.1:{}", free_port());
    let home = "/var/lib/fogmesh";
    podman_ok(&[
        "run",
        "--rm",
        "-v",
        &volume,
        tag,
        "init",
        "--home",
        home,
        "--org",
        "hospital",
        "--mesh",
        "boxed",
        "--api",
        &api,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
    ]);
    let container = Podman("rm", format!("fogmesh-tools-{}", std::process::id()));
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &container.1,
        "-v",
        &volume,
        tag,
    ]);

    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let url = format!("http://{api}/v1/node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let answer = ureq::get(&url)
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .call()
            .ok()
            .and_then(|r| r.into_json::<Value>().ok());
        if let Some(v) = answer {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the node in the container never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(node["org"], "hospital", "{node}");
    let status = podman_ok(&["exec", &container.1, "fogmesh", "status", "--home", home]);
    assert!(status.contains("hospital in mesh boxed"), "{status}");

    podman_ok(&["stop", "--time", "30", &container.1]);
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container.1]);
    assert_eq!(code.trim(), "0", "a stop is clean");
    let out = podman(&["logs", &container.1])
        .output()
        .expect("podman logs");
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("node state flushed"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colours in a container's log:\n{log}"
    );
}
