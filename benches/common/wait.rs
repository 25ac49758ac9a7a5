//! Waiting on a condition with a deadline, shared by the benchmarks that run meshes.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `cond` every 10 ms until it holds; fails after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
