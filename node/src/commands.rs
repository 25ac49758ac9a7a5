//! Client and local commands. Each prints a human answer, or with `--json` exactly one JSON
//! document (NDJSON for streams).

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use fogmesh::config::Config;
use serde_json::{json, Value};

use crate::cli::{
    Cli, Command, CreateArgs, DatasetCmd, FlowCmd, GrantArgs, PriorityArg, PublishArgs, WatchArgs,
};
use crate::client::Client;
use crate::output;

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init(a) => init(&cli, a),
        Command::Run(a) => crate::daemon::run(&cli, a),
        Command::Id => id(&cli),
        Command::Status => status(&cli),
        Command::Invite(a) => invite(&cli, a.ttl),
        Command::Join { invitation } => join(&cli, invitation),
        Command::Peers => peers(&cli),
        Command::Member(m) => crate::members::run(&cli, m),
        Command::Key(crate::cli::KeyCmd::Rotate) => crate::members::key_rotate(&cli),
        Command::App(cmd) => crate::apps::run(&cli, cmd),
        Command::Admin(cmd) => crate::apps::admin(&cli, cmd),
        Command::Dataset(DatasetCmd::Create(a)) => dataset_create(&cli, a),
        Command::Dataset(DatasetCmd::List) => dataset_list(&cli),
        Command::Flow(FlowCmd::Add(a)) => crate::view::flow_add(&cli, a),
        Command::Flow(FlowCmd::List) => crate::view::flow_list(&cli),
        Command::Flow(FlowCmd::Remove { name }) => crate::view::flow_remove(&cli, name),
        Command::Grant(a) => grant(&cli, a),
        Command::Revoke { id } => revoke(&cli, id),
        Command::Grants => grants(&cli),
        Command::Publish(a) => publish(&cli, a),
        Command::Query(a) => crate::view::query(&cli, a),
        Command::Sql(a) => crate::view::sql(&cli, a),
        Command::Watch(a) => watch(&cli, a),
        Command::Search(a) => crate::view::search(&cli, a),
        Command::Demo(a) => crate::demo::run(&cli, a),
        Command::Audit(a) => crate::audit::run(&cli, a),
    }
}

fn init(cli: &Cli, a: &crate::cli::InitArgs) -> Result<()> {
    let mut cfg = Config {
        org: a.org.clone(),
        mesh: a.mesh.clone(),
        ..Config::default()
    };
    if !a.listen.is_empty() {
        cfg.listen = a.listen.clone();
    }
    cfg.bootstrap = a.bootstrap.clone();
    cfg.relays = a.relays.clone();
    cfg.relay.serve = a.serve_relay;
    cfg.mdns = !a.no_mdns;
    if let Some(api) = cli.api {
        cfg.api = api;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let created = rt.block_on(fogmesh::node::home::init(&cli.home, cfg))?;
    if cli.json {
        output::json(
            &json!({ "home": cli.home, "peer_id": created.peer_id, "admin_token_file": created.admin_token_file }),
        );
    } else {
        println!("initialized node home {}", cli.home.display());
        println!("peer id: {}", created.peer_id);
        println!("admin token: {} (mode 0600)", created.admin_token_file);
        println!("next: fogmesh run --home {}", cli.home.display());
    }
    Ok(())
}

fn id(cli: &Cli) -> Result<()> {
    let cfg = Config::load(&cli.home.join(fogmesh::config::FILE))
        .with_context(|| format!("no usable node home at {}", cli.home.display()))?;
    let ident = fogmesh::identity::Identity::load(&cli.home)?;
    let v = json!({
        "org": cfg.org, "mesh": cfg.mesh, "peer_id": ident.peer_id()?.to_string(),
        "author": ident.author().to_string(), "agreement_key": hex::encode(ident.agreement_public()),
        "api": cfg.api.to_string(), "listen": cfg.listen,
    });
    if cli.json {
        output::json(&v);
    } else {
        for k in [
            "org",
            "mesh",
            "peer_id",
            "author",
            "agreement_key",
            "api",
            "listen",
        ] {
            println!("{k:<14} {}", output_value(&v[k]));
        }
    }
    Ok(())
}

pub(crate) fn output_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(output_value).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn status(cli: &Cli) -> Result<()> {
    let c = Client::from_cli(cli)?;
    let node = c.get("/v1/node")?;
    let datasets = c.get("/v1/datasets")?;
    // While the node loads its datasets its mesh has not started: tell that, without waiting.
    let loading = node.get("loading").cloned();
    let (mesh, peers) = match &loading {
        Some(_) => (json!({}), json!({})),
        None => (c.get("/v1/mesh")?, c.get("/v1/peers")?),
    };
    if cli.json {
        output::json(&json!({
            "node": node, "mesh": mesh, "peers": peers["peers"], "datasets": datasets["datasets"],
        }));
        return Ok(());
    }
    println!(
        "node   {} in mesh {} (fogmesh {})",
        node["org"].as_str().unwrap_or("?"),
        node["mesh"].as_str().unwrap_or("?"),
        node["version"].as_str().unwrap_or("?")
    );
    println!("peer   {}", node["peer_id"].as_str().unwrap_or("?"));
    println!("api    http://{}", node["api"].as_str().unwrap_or("?"));
    if let Some(why) = node["disk_failed"].as_str() {
        println!(
            "DISK FAILED ({why}): writes are refused and nothing more is acknowledged; reads go \
             on. Free space in the node's home: the node restarts itself once its disk takes \
             writes again"
        );
    }
    let mib = |v: &Value| {
        v.as_u64()
            .map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
    };
    println!(
        "store  {} on disk; memory {} resident",
        mib(&node["store_bytes"]),
        mib(&node["memory_bytes"])
    );
    if let Some(l) = loading {
        println!(
            "LOADING datasets after the start: {} of {} loaded (each answers once loaded; the \
             mesh starts once all are)",
            l["loaded"], l["total"]
        );
    }
    println!("mesh   members: {}", output_value(&mesh["members"]));
    if let Some(reach) = mesh["reachability"].as_str() {
        let relayed: Vec<&str> = mesh["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| a.contains("/p2p-circuit"))
            .collect();
        match relayed.is_empty() {
            true => println!("reach  {reach} (AutoNAT)"),
            false => println!(
                "reach  {reach} (AutoNAT); relayed at {}",
                relayed.join(", ")
            ),
        }
    }
    println!();
    print_peers(&peers);
    for e in mesh["equivocations"].as_array().into_iter().flatten() {
        println!(
            "EQUIVOCATION {} (key {}) signed two histories of {} at change {}: its changes there \
             from that one on are set aside; remove the member or rotate its key",
            e["org"].as_str().unwrap_or("an unknown key"),
            e["author"].as_str().unwrap_or("?"),
            e["dataset"].as_str().unwrap_or("?"),
            e["seq"]
        );
    }
    for p in mesh["catching_up"].as_array().into_iter().flatten() {
        println!(
            "catching up {} from {}: {} of {} envelopes",
            p["dataset"].as_str().unwrap_or("?"),
            p["from"].as_str().unwrap_or("?"),
            p["fetched"],
            p["missing"]
        );
    }
    println!();
    let rows = datasets["datasets"].as_array().cloned().unwrap_or_default();
    output::table(
        &[
            "id",
            "visibility",
            "priority",
            "records",
            "envelopes",
            "bytes",
        ],
        &rows,
    );
    Ok(())
}

fn print_peers(v: &Value) {
    let rows: Vec<Value> = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "org": p["org"], "state": if p["up"] == true { "up" } else { "down" },
                "connection": p["connection"].as_str().unwrap_or_default(),
                "last seen": p["last_seen_ms"].as_u64().map(ago).unwrap_or_default(),
                "rtt ms": p["rtt_ms"].as_f64().map(|r| format!("{r:.2}")).unwrap_or_default(),
                "peer": p["peer"], "addresses": output_value(&p["addrs"]),
            })
        })
        .collect();
    output::table(
        &[
            "org",
            "state",
            "connection",
            "last seen",
            "rtt ms",
            "peer",
            "addresses",
        ],
        &rows,
    );
}

fn ago(ms: u64) -> String {
    let now = fogmesh::hlc::wall_millis();
    format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

fn peers(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/peers")?;
    if cli.json {
        output::json(&v);
    } else {
        print_peers(&v);
    }
    Ok(())
}

fn invite(cli: &Cli, ttl: u64) -> Result<()> {
    let v = Client::from_cli(cli)?.post("/v1/invites", &json!({ "ttl_secs": ttl }))?;
    if cli.json {
        output::json(&v);
    } else {
        println!("{}", v["token"].as_str().unwrap_or("?"));
        eprintln!("one-time invitation; on the new node run: fogmesh join TOKEN");
    }
    Ok(())
}

fn join(cli: &Cli, token: &str) -> Result<()> {
    let v = Client::from_cli(cli)?.post("/v1/join", &json!({ "token": token }))?;
    if cli.json {
        output::json(&v);
    } else {
        println!(
            "joined mesh {} (members: {})",
            v["mesh"].as_str().unwrap_or("?"),
            output_value(&v["members"])
        );
    }
    Ok(())
}

fn dataset_create(cli: &Cli, a: &CreateArgs) -> Result<()> {
    let schema: Option<Value> = match &a.schema {
        Some(s) => Some(serde_json::from_str(s).context("--schema must be JSON")?),
        None => None,
    };
    let priority = match a.priority {
        PriorityArg::Low => "low",
        PriorityArg::Normal => "normal",
        PriorityArg::High => "high",
    };
    let spec = json!({
        "name": a.name, "visibility": if a.shared { "shared" } else { "private" },
        "priority": priority, "readers": a.readers, "schema": schema,
        "retention": { "max_age_days": a.retention_days, "max_records": a.max_records },
    });
    let mut spec = spec;
    if a.clear {
        spec["encrypted"] = json!(false);
    }
    let v = Client::from_cli(cli)?.post("/v1/datasets", &spec)?;
    if cli.json {
        output::json(&v);
    } else {
        println!(
            "dataset {} created ({})",
            v["id"].as_str().unwrap_or("?"),
            v["visibility"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn grant(cli: &Cli, a: &GrantArgs) -> Result<()> {
    let body = json!({
        "dataset": a.dataset, "to": a.to, "rights": a.rights,
        "expires": a.expires, "prefix": a.prefix,
    });
    let v = Client::from_cli(cli)?.post("/v1/grants", &body)?;
    if cli.json {
        output::json(&v);
    } else {
        println!(
            "grant {} issued: {} may {} on {}{} (key epoch {})",
            v["id"].as_str().unwrap_or("?"),
            v["grantee"].as_str().unwrap_or("?"),
            output_value(&v["rights"]),
            v["dataset"].as_str().unwrap_or("?"),
            v["not_after"]
                .as_u64()
                .map(|t| format!(", until {t} ms"))
                .unwrap_or_default(),
            v["epoch"]
        );
    }
    Ok(())
}

fn revoke(cli: &Cli, id: &str) -> Result<()> {
    let path = format!("/v1/grants/{}", urlencode(id));
    let v = Client::from_cli(cli)?.delete(&path)?;
    if cli.json {
        output::json(&v);
    } else {
        let r = &v["revocation"];
        println!(
            "grant {id} revoked: {} gets nothing written from key epoch {} on",
            r["grantee"].as_str().unwrap_or("?"),
            r["epoch"]
        );
    }
    Ok(())
}

fn grants(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/grants")?;
    if cli.json {
        output::json(&v);
    } else {
        output::table(
            &["id", "dataset", "grantee", "rights", "state", "epoch"],
            v["grants"].as_array().map_or(&[][..], |a| a),
        );
    }
    Ok(())
}

pub(crate) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn dataset_list(cli: &Cli) -> Result<()> {
    let v = Client::from_cli(cli)?.get("/v1/datasets")?;
    if cli.json {
        output::json(&v);
    } else {
        let rows = v["datasets"].as_array().map_or(&[][..], |a| a);
        output::table(
            &["id", "visibility", "priority", "readers", "records"],
            rows,
        );
    }
    Ok(())
}

pub(crate) fn records_path(dataset: &str) -> Result<String> {
    let id = fogmesh::naming::DatasetId::parse(dataset)?;
    Ok(format!("/v1/datasets/{}/{}", id.owner(), id.name()))
}

fn publish(cli: &Cli, a: &PublishArgs) -> Result<()> {
    let c = Client::from_cli(cli)?;
    let path = format!("{}/records", records_path(&a.dataset)?);
    if let Some(name) = &a.name {
        let data: Value = serde_json::from_str(a.data.as_deref().unwrap_or("{}"))
            .context("--data must be a JSON object")?;
        let rec = json!({ "name": name, "data": data, "time": a.time, "id": a.id });
        let v = c.post(&path, &json!({ "records": [rec] }))?;
        return print_ids(cli, &v, 1);
    }
    publish_stdin(
        cli,
        &c,
        &path,
        a.batch.clamp(1, fogmesh::record::BATCH_MAX_RECORDS),
    )
}

fn print_ids(cli: &Cli, v: &Value, n: usize) -> Result<()> {
    if cli.json {
        output::json(v);
    } else if n == 1 {
        println!("{}", v["ids"][0].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// Progress of a long publish: a live count and rate on a terminal, drawn on stderr; nothing
/// when stderr is a pipe or a file (the summary line at the end says it all).
fn publish_progress() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} published {human_pos} records ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn publish_stdin(cli: &Cli, c: &Client, path: &str, batch: usize) -> Result<()> {
    let mut ids = Vec::new();
    let progress = publish_progress();
    let sent = send_lines(c, path, batch, &mut ids, &progress);
    // Cleared before any error is printed, so the error is not drawn over.
    progress.finish_and_clear();
    sent?;
    if cli.json {
        output::json(&json!({ "ids": ids }));
    } else {
        eprintln!("published {}", records(ids.len()));
    }
    Ok(())
}

/// Sends stdin's NDJSON records in batches of `batch`, collecting the ids acknowledged.
fn send_lines(
    c: &Client,
    path: &str,
    batch: usize,
    ids: &mut Vec<Value>,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    let mut pending = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Value = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not JSON", n + 1))?;
        pending.push(rec);
        if pending.len() == batch {
            send_batch(c, path, &mut pending, ids)?;
            progress.set_position(ids.len() as u64);
        }
    }
    if !pending.is_empty() {
        send_batch(c, path, &mut pending, ids)?;
    }
    Ok(())
}

fn send_batch(
    c: &Client,
    path: &str,
    pending: &mut Vec<Value>,
    ids: &mut Vec<Value>,
) -> Result<()> {
    let recs = std::mem::take(pending);
    let v = c
        .post(path, &json!({ "records": recs }))
        .with_context(|| format!("after {} records were acknowledged", ids.len()))?;
    ids.extend(v["ids"].as_array().cloned().unwrap_or_default());
    Ok(())
}

fn watch(cli: &Cli, a: &WatchArgs) -> Result<()> {
    let c = Client::from_cli(cli)?;
    let reader = c.stream(&format!("{}/events", records_path(&a.dataset)?))?;
    // On stderr in every mode: it tells a script the subscription is live.
    eprintln!("watching {} (ctrl-c to stop)", a.dataset);
    let (mut event, mut seen) = (String::new(), 0usize);
    for line in reader.lines() {
        let line = line.context("reading the event stream")?;
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            print_event(cli, &event, d.trim());
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
    }
    // Say why, when the node will: a rotated or removed token, a lost right.
    match c.get(&records_path(&a.dataset)?) {
        Ok(_) => bail!("the node closed the event stream"),
        Err(e) => Err(e.context("the node ended the event stream")),
    }
}

fn print_event(cli: &Cli, event: &str, data: &str) {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    if cli.json {
        output::ndjson(&v);
        return;
    }
    match event {
        "upsert" => {
            let r = &v["record"];
            println!(
                "upsert {} {} {} {}",
                r["id"].as_str().unwrap_or("?"),
                r["time"],
                r["name"].as_str().unwrap_or("?"),
                r["data"]
            );
        }
        "delete" => println!("delete {}", v["id"].as_str().unwrap_or("?")),
        other => println!("{other} {data}"),
    }
}

/// "1 record", "2 records".
pub(crate) fn records(n: usize) -> String {
    if n == 1 {
        "1 record".into()
    } else {
        format!("{n} records")
    }
}
