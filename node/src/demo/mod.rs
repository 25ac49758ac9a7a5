//! `fogmesh demo`: walkthroughs on real node processes on loopback, printing a timeline.
//!
//! By default the flu outbreak across five organizations ([`flu`]); `--lost-child` a pushed-down
//! search across eight camera nodes ([`lost_child`]); `--single` runs one organization's node
//! alone ([`single`]).

mod audit;
mod flu;
mod lost_child;
mod procs;
mod removal;
mod single;

use anyhow::Result;

use crate::cli::{Cli, DemoArgs};

/// Runs the chosen demo.
pub fn run(cli: &Cli, a: &DemoArgs) -> Result<()> {
    if a.single {
        single::run(cli, a)
    } else if a.lost_child {
        lost_child::run(a)
    } else {
        flu::run(a)
    }
}
