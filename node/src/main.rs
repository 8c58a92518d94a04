//! `grapevine`: parse the command line, then hand over to `cli::run`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = grapevine_node::cli::Cli::parse();
    grapevine_node::cli::run(cli)
}
