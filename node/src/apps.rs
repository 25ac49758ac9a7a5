//! `fogmesh app ...` and `fogmesh admin ...`: apps, their rights and tokens, and the admin token.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cli::{AdminCmd, AppCmd, Cli, SaveToken};
use crate::client::{Client, TokenSource};
use crate::commands::{output_value, urlencode};
use crate::output;

/// Runs an `app` subcommand.
pub fn run(cli: &Cli, cmd: &AppCmd) -> Result<()> {
    match cmd {
        AppCmd::Add { name, rights, save } => add(cli, name, rights, save),
        AppCmd::List => list(cli),
        AppCmd::Remove { name } => remove(cli, name),
        AppCmd::Rotate { name, save } => rotate(cli, name, save),
        AppCmd::Rights { name, rights } => set_rights(cli, name, rights),
    }
}

/// Runs an `admin` subcommand.
pub fn admin(cli: &Cli, cmd: &AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::RotateToken => rotate_admin(cli),
    }
}

fn app_path(name: &str) -> String {
    format!("/v1/apps/{}", urlencode(name))
}

fn add(cli: &Cli, name: &str, rights: &[String], save: &SaveToken) -> Result<()> {
    let v = Client::from_cli(cli)?.post("/v1/apps", &json!({ "name": name, "rights": rights }))?;
    let v = keep_token(v, save)?;
    if cli.json {
        output::json(&v);
    } else {
        println!(
            "app {name} registered with rights: {}",
            output_value(&v["rights"])
        );
        print_token(&v);
    }
    Ok(())
}

/// With `--save-token PATH`, moves the answer's token into that file: the answer then names the
/// file instead.
fn keep_token(mut v: Value, save: &SaveToken) -> Result<Value> {
    let Some(path) = &save.save_token else {
        return Ok(v);
    };
    let token = v["token"].as_str().context("the node answered no token")?;
    write_token_file(path, token)?;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("token");
        obj.insert("token_file".into(), json!(path));
    }
    Ok(v)
}

/// Writes `token` to `path`, mode 0600, replacing the file in one rename.
fn write_token_file(path: &Path, token: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    writeln!(f, "{token}")
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn print_token(v: &Value) {
    match (v["token"].as_str(), v["token_file"].as_str()) {
        (Some(t), _) => println!("token (shown once, keep it secret): {t}"),
        (None, Some(f)) => println!("token saved in {f} (mode 0600)"),
        (None, None) => println!("token: ?"),
    }
}

fn list(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/apps")?;
    if cli.json {
        output::json(&v);
    } else {
        output::table(
            &["name", "admin", "rights", "token_id"],
            v["apps"].as_array().map_or(&[][..], |a| a),
        );
    }
    Ok(())
}

fn remove(cli: &Cli, name: &str) -> Result<()> {
    let v = Client::from_cli(cli)?.delete(&app_path(name))?;
    if cli.json {
        output::json(&v);
    } else {
        println!("app {name} removed: its token is refused and its event streams have ended");
    }
    Ok(())
}

fn rotate(cli: &Cli, name: &str, save: &SaveToken) -> Result<()> {
    let path = format!("{}/rotate", app_path(name));
    let v = Client::from_cli(cli)?.post(&path, &json!({}))?;
    let v = keep_token(v, save)?;
    if cli.json {
        output::json(&v);
    } else {
        println!("app {name} has a new token; the old one is refused from now on");
        print_token(&v);
    }
    Ok(())
}

fn set_rights(cli: &Cli, name: &str, rights: &[String]) -> Result<()> {
    let path = format!("{}/rights", app_path(name));
    let v = Client::from_cli(cli)?.put(&path, &json!({ "rights": rights }))?;
    if cli.json {
        output::json(&v);
    } else {
        let now = match output_value(&v["rights"]) {
            r if r.is_empty() => "none (only grants)".to_owned(),
            r => r,
        };
        println!("app {name} now has rights: {now}");
    }
    Ok(())
}

fn rotate_admin(cli: &Cli) -> Result<()> {
    let c = Client::from_cli(cli)?;
    let v = c.post("/v1/admin/rotate-token", &json!({}))?;
    if cli.json {
        output::json(&v);
        return Ok(());
    }
    println!("admin token rotated; the old one is refused from now on");
    let file = v["token_file"].as_str();
    if let Some(f) = file {
        println!("the node stored the new token in {f} (mode 0600)");
    }
    // Shown only when the token this command used came from elsewhere, which is now stale.
    let from_home = matches!(c.token_source(), TokenSource::Home(_));
    if file.is_none() || !from_home {
        print_token(&v);
    }
    Ok(())
}
