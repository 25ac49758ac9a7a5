//! `fogmesh run`: config layering, tracing, the HTTP API, graceful shutdown with a final flush.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use fogmesh::api::MeshSlot;
use fogmesh::config::{self, Config};
use fogmesh::mesh::Mesh;
use fogmesh::Node;
use tokio::net::TcpListener;

use crate::cli::{Cli, RunArgs};

/// File in the home where a running node writes the API address it actually bound.
pub const API_ADDR_FILE: &str = "api.addr";

/// Loads the configuration: defaults < file < environment < flags.
pub fn layered_config(cli: &Cli, args: &RunArgs) -> Result<Config> {
    let path = cli.home.join(config::FILE);
    let mut cfg = Config::load(&path).with_context(|| {
        format!(
            "no usable node home at {} (run `fogmesh init` first, or pass --home)",
            cli.home.display()
        )
    })?;
    if let Ok(v) = std::env::var("FOGMESH_LISTEN") {
        cfg.listen = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(api) = cli.api {
        cfg.api = api;
    }
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Logs to stderr, filtered by RUST_LOG (default `info`); colours only on a terminal (a journal,
/// a container's log or a file gets plain text).
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the node until SIGTERM or ctrl-c; after a key rotation, or once a disk that failed
/// takes writes again, runs it again (the same process, executed anew).
pub fn run(cli: &Cli, args: &RunArgs) -> Result<()> {
    init_tracing();
    let cfg = layered_config(cli, args)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let restart = rt.block_on(serve(&cli.home, cfg));
    // Not waiting for a dataset still loading (it holds nothing its store lacks).
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let restart = restart?;
    if restart {
        return restart_self();
    }
    Ok(())
}

/// Replaces this process with a fresh run of the same command: every file, socket and lock of
/// the old run is gone, and the process id (what a supervisor watches) stays.
#[cfg(unix)]
fn restart_self() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this program to restart it")?;
    tracing::info!("restarting");
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(err).context("restarting the node (after a key rotation, or a disk failure that passed); start it again by hand")
}

#[cfg(not(unix))]
fn restart_self() -> Result<()> {
    anyhow::bail!("the keys were rotated or the disk failed: start the node again")
}

/// Serves until a signal (false), or until a key rotation or a disk that failed and takes writes
/// again asks for a restart (true). The API answers before the datasets are loaded; the mesh,
/// flows and the retention sweep start once they are ([`start_rest`]).
async fn serve(home: &Path, cfg: Config) -> Result<bool> {
    let api = cfg.api;
    let node = open_when_disk_allows(home, cfg).await?;
    let listener = TcpListener::bind(api)
        .await
        .with_context(|| format!("binding the HTTP API to {api} (is another node using it?)"))?;
    let bound = listener.local_addr()?;
    std::fs::write(home.join(API_ADDR_FILE), bound.to_string()).context("writing api.addr")?;
    tracing::info!(api = %bound, loading = ?node.loading(), "HTTP API answering");
    let slot = MeshSlot::later();
    let failed = Arc::new(tokio::sync::Notify::new());
    let starting = tokio::spawn({
        let (node, slot, failed) = (node.clone(), slot.clone(), failed.clone());
        async move {
            let started = start_rest(node, slot).await;
            if started.is_err() {
                failed.notify_one();
            }
            started
        }
    });
    let restart = node.clone();
    let disk_back = Arc::new(AtomicBool::new(false));
    let back = disk_back.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            () = restart.restart_requested() => tracing::info!("keys rotated: restarting"),
            () = restart.disk_back() => back.store(true, Ordering::Relaxed),
            () = failed.notified() => {}
        }
    };
    fogmesh::api::serve(listener, node.clone(), slot, stop).await?;
    node.stop_loading();
    let started = if starting.is_finished() {
        Some(starting.await.context("starting the node")?)
    } else {
        starting.abort();
        None
    };
    let mut outcome = Ok(());
    match started {
        Some(Ok((mesh, sweeper))) => {
            sweeper.abort();
            mesh.shutdown().await;
        }
        Some(Err(e)) => outcome = Err(e),
        None => tracing::info!("stopped while loading datasets"),
    }
    tracing::info!("shutting down: snapshotting datasets and flushing");
    node.shutdown().await?;
    let _ = std::fs::remove_file(home.join(API_ADDR_FILE));
    outcome?;
    Ok(node.restart_pending() || disk_back.load(Ordering::Relaxed))
}

/// Loads the datasets (the API answers meanwhile), then starts the mesh, resumes the
/// computation flows, sweeps once (expired grants lose their keys before sealed writes resume)
/// and marks the node started; then sweeps every `RETENTION_SWEEP`.
async fn start_rest(node: Node, slot: MeshSlot) -> Result<(Mesh, tokio::task::JoinHandle<()>)> {
    let loader = node.clone();
    tokio::task::spawn_blocking(move || loader.load_datasets())
        .await
        .context("loading the datasets")?
        .context("loading the datasets")?;
    let net = fogmesh::mesh::net_config(node.config())?;
    let mesh = Mesh::start(node.clone(), net)
        .await
        .context("starting the mesh (are the listen addresses free?)")?;
    slot.set(mesh.clone());
    let info = node.info();
    tracing::info!(org = %info.org, mesh = %info.mesh, peer_id = %info.peer_id, "fogmesh node running");
    match node.resume_flows() {
        Ok(0) => {}
        Ok(n) => tracing::info!(flows = n, "computation flows resumed"),
        Err(e) => tracing::warn!(error = %e, "computation flows not resumed"),
    }
    sweep(&node).await;
    node.mark_started();
    Ok((mesh, tokio::spawn(sweep_retention(node))))
}

/// Opens the node in `home`; while its disk is too full for the store to open, says so and tries
/// again every [`fogmesh::node::DISK_CHECK`].
async fn open_when_disk_allows(home: &Path, cfg: Config) -> Result<Node> {
    use fogmesh::{Error, Unavailable};
    loop {
        let (home2, cfg2) = (home.to_owned(), cfg.clone());
        let opened = tokio::task::spawn_blocking(move || Node::start_home(&home2, cfg2))
            .await
            .context("opening the node")?;
        match opened {
            Err(Error::Unavailable(Unavailable::DiskFailed(why))) => {
                tracing::warn!(%why, home = %home.display(), "the node's disk takes no writes: free space; trying again shortly");
                tokio::time::sleep(fogmesh::node::DISK_CHECK).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Sweeps every `RETENTION_SWEEP` after the first (which the start runs), for as long as the
/// node runs.
async fn sweep_retention(node: Node) {
    let every = fogmesh::node::RETENTION_SWEEP;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        sweep(&node).await;
    }
}

/// Applies every owned dataset's age limit, revokes expired grants (so the expired grantee gets
/// no new key) and prunes the audit log past its retention.
async fn sweep(node: &Node) {
    match node.enforce_retention().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "retention deleted expired records"),
        Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
    }
    match node.expire_grants().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(grants = n, "expired grants revoked; keys rotated"),
        Err(e) => tracing::warn!(error = %e, "grant expiry sweep failed"),
    }
    match node.prune_audit().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "audit entries past retention pruned"),
        Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
