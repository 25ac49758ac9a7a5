//! `fogmesh`: the node daemon and its CLI client. A thin binary over the `fogmesh` library.

mod apps;
mod audit;
mod cli;
mod client;
mod commands;
mod daemon;
mod demo;
mod help;
mod members;
mod output;
mod view;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::from_args();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
