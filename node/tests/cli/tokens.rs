//! CLI: app and admin tokens: token files and `FOGMESH_TOKEN`, `app rotate`, `admin rotate-token`.

use super::*;

/// Runs `fogmesh ARGS --home HOME` against `node` with `FOGMESH_TOKEN=token` in the environment.
fn cli_with_env_token(node: &TestNode, args: &[&str], token: &str) -> common::Out {
    let mut cmd = common::fogmesh();
    cmd.args(args)
        .args(["--home", s(&node.home)])
        .env("FOGMESH_TOKEN", token);
    let line = format!("FOGMESH_TOKEN=... fogmesh {}", args.join(" "));
    common::run_command(cmd, line, None)
}

/// A running node in `dir` holding the dataset `hospital/flu`, and the token of its app `reader`
/// that may read it.
fn node_with_reader(dir: &std::path::Path) -> (TestNode, String) {
    let node = TestNode::init(&dir.join("h"), "hospital").expect("node");
    node.cli(&["dataset", "create", "flu"]).ok();
    let add = [
        "app",
        "add",
        "reader",
        "--rights",
        "read:hospital/flu",
        "--json",
    ];
    let app = one_json(&node.cli(&add).ok());
    let token = app["token"].as_str().expect("token shown once").to_owned();
    (node, token)
}

/// Writes `text` to a new file `name` in `dir`, mode 0600.
fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    }
    path
}

#[test]
fn a_token_file_or_fogmesh_token_authenticates_and_bad_token_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (node, token) = node_with_reader(dir.path());
    let token = token.as_str();
    let file = secret_file(dir.path(), "reader.token", &format!("{token}\n"));

    // As the app, not the admin: listing apps is refused, reading is not.
    let read = ["query", "hospital/flu", "--json"];
    let by_file = node
        .cli(&[&read[..], &["--token-file", s(&file)]].concat())
        .ok();
    assert_eq!(one_json(&by_file)["count"], 0);
    assert!(
        by_file.stderr.is_empty(),
        "no warning for a 0600 file: {}",
        by_file.stderr
    );
    let denied = node.cli(&["app", "list", "--token-file", s(&file)]).code(1);
    assert!(denied.stderr.contains("403"), "{}", denied.stderr);
    let by_env = cli_with_env_token(&node, &read, token).ok();
    assert_eq!(one_json(&by_env)["count"], 0);
    let denied = cli_with_env_token(&node, &["app", "list"], token).code(1);
    assert!(denied.stderr.contains("403"), "{}", denied.stderr);
    // On the command line it still works, with a warning that `ps` shows it.
    let flag = node.cli(&[&read[..], &["--token", token]].concat()).ok();
    assert!(
        flag.stderr.contains("visible to other users"),
        "{}",
        flag.stderr
    );

    let empty = secret_file(dir.path(), "empty.token", " \n");
    let missing = dir.path().join("missing.token");
    let two = secret_file(dir.path(), "two.token", "fm_a fm_b\n");
    for (path, says) in [
        (&empty, "is empty"),
        (&missing, "cannot read the token file"),
        (&two, "must hold only the token"),
    ] {
        let out = node
            .cli(&[&read[..], &["--token-file", s(path)]].concat())
            .code(1);
        assert!(
            out.stderr.contains(says),
            "{}: {}",
            path.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains(s(path)),
            "names the file: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    let both = cli_with_env_token(
        &node,
        &[&read[..], &["--token-file", s(&file)]].concat(),
        token,
    )
    .code(1);
    assert!(both.stderr.contains("use one"), "{}", both.stderr);
}

#[test]
fn app_rotate_prints_a_working_token_and_ends_the_old_tokens_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (node, old) = node_with_reader(dir.path());
    let mut cmd = common::fogmesh();
    cmd.args(["watch", "hospital/flu", "--home"])
        .arg(&node.home)
        .env("FOGMESH_TOKEN", &old)
        .stdout(Stdio::null());
    let (mut watch, stderr) = start_watch(cmd);

    let rotated = node.cli(&["app", "rotate", "reader"]).ok();
    let new = rotated
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("token (shown once, keep it secret): "))
        .unwrap_or_else(|| panic!("no token printed: {}", rotated.stdout))
        .to_owned();
    assert_ne!(new, old);
    let status = common::wait_deadline(&mut watch.0, std::time::Duration::from_secs(10))
        .expect("watch ends once its token is rotated");
    assert_eq!(status.code(), Some(1));
    let rest = common::reader(stderr.into_inner()).join().unwrap();
    assert!(
        rest.contains("ended the event stream") && rest.contains("401"),
        "{rest}"
    );

    let refused = cli_with_env_token(&node, &["query", "hospital/flu"], &old).code(1);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    cli_with_env_token(&node, &["query", "hospital/flu"], &new).ok();

    // --save-token keeps the next one off the terminal, in a 0600 file for --token-file.
    let saved = dir.path().join("reader.token");
    let out = node
        .cli(&["app", "rotate", "reader", "--save-token", s(&saved)])
        .ok();
    assert!(!out.stdout.contains("fm_"), "{}", out.stdout);
    #[cfg(unix)]
    assert_eq!(mode(&saved), 0o600);
    let refused = cli_with_env_token(&node, &["query", "hospital/flu"], &new).code(1);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let query = ["query", "hospital/flu", "--token-file", s(&saved)];
    node.cli(&query).ok();

    node.cli(&["app", "remove", "reader"]).ok();
    let refused = node.cli(&query).code(1);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let admin = node.cli(&["app", "remove", "admin"]).code(1);
    assert!(
        admin.stderr.contains("409") && admin.stderr.contains("admin app"),
        "{}",
        admin.stderr
    );
}

#[test]
fn admin_rotate_token_keeps_local_commands_working_and_refuses_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::init(&dir.path().join("h"), "hospital").unwrap();
    let old = node.token.clone();
    let out = node.cli(&["admin", "rotate-token"]).ok();
    assert!(out.stdout.contains("admin.token"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("fm_"),
        "the home's file holds it; not printed: {}",
        out.stdout
    );
    let file = std::fs::read_to_string(node.home.join("admin.token")).unwrap();
    assert_ne!(file.trim(), old);
    #[cfg(unix)]
    assert_eq!(mode(&node.home.join("admin.token")), 0o600);
    let st = one_json(&node.cli(&["status", "--json"]).ok());
    assert_eq!(st["node"]["org"], "hospital", "the CLI reads the new token");
    let refused = cli_with_env_token(&node, &["status"], &old).code(1);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    // From a copy of the token elsewhere, the new one is printed: the copy is stale.
    let copy = secret_file(dir.path(), "admin-copy.token", &file);
    let out = node
        .cli(&["admin", "rotate-token", "--token-file", s(&copy)])
        .ok();
    let newest = std::fs::read_to_string(node.home.join("admin.token")).unwrap();
    assert!(out.stdout.contains(newest.trim()), "{}", out.stdout);
}
