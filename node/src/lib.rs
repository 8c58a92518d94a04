//! The Grapevine peer daemon, its CLI client and the demo.
//!
//! The binary (`main.rs`) only parses the command line and calls into [`cli`]. Everything that
//! decides lives in `grapevine-proto`; this crate adapts sockets, disks, timers and HTTP to it.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod command;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
#[cfg(feature = "testsuite")]
pub mod faults;
pub mod files;
pub mod flagd;
pub mod gossip;
pub mod health;
pub mod metrics;
pub mod private;
pub mod store;
pub mod sync;
pub mod tls;
pub mod transport;
