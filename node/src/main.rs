//! `fogmesh`: the node daemon and its CLI client. A thin binary over the `fogmesh` library.

mod audit;
mod cli;
mod client;
mod commands;
mod daemon;
mod demo;
mod output;
mod view;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
