//! The Grapevine peer daemon, its CLI client and the demo.
//!
//! The binary (`main.rs`) only parses the command line and calls into [`cli`]. Everything that
//! decides lives in `grapevine-proto`; this crate adapts sockets, disks, timers and HTTP to it.
//!
//! Feature `testsuite` (off by default) adds the test plumbing: `faults.rs`, the link-filter hooks
//! in `transport.rs`, the `/v1/testsuite/links` endpoints, `RunningNode::link_filter`, and the
//! config key `test_clock_skew_ms`. The workspace's `default-members` are `proto` and `node`, so
//! `cargo build` and `cargo run` at the root never turn it on; `cluster-tests` depends on
//! `grapevine-node` with `testsuite`, so any build that includes `cluster-tests` (`cargo test
//! --workspace`, `cargo build --workspace`) unifies it into the `grapevine` binary.
//!
//! **Architecture Invariant:** test plumbing stays out of the product: every use of it is behind
//! `#[cfg(feature = "testsuite")]`, and without the feature `test_clock_skew_ms` is an unknown
//! config key.

pub mod alerts;
pub mod api;
pub mod audit;
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
pub mod origin;
pub mod private;
pub mod replies;
pub mod store;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod webhook;
