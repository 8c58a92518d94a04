//! `grapevine`: parse the command line, then hand over to `cli::run`.
//!
//! For client commands (everything but `node` and `demo`) it first restores SIGPIPE's default
//! disposition (`libc::signal`), so `grapevine history | head` ends quietly instead of panicking in
//! `println!`. The daemon and the demo keep Rust's default (ignored).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = grapevine_node::cli::Cli::parse();
    if !matches!(cli.command, grapevine_node::cli::Command::Node(_) | grapevine_node::cli::Command::Demo { .. }) {
        // A client command piped into `head` should end quietly when the pipe closes, as Unix
        // tools do, not panic in `println!`. The daemon keeps Rust's default (SIGPIPE ignored).
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    grapevine_node::cli::run(cli)
}
