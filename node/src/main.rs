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
    if cli.command.writes_to_a_pipe_only() {
        // `fogmesh query ... | head` ends quietly when head does, like any Unix tool, instead
        // of panicking on the closed pipe. Not for the node or the demo: they write to sockets.
        sigpipe::reset();
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
