//! In-process clusters for benchmarks: real nodes (QUIC, redb, HTTP) in this process, on
//! loopback ports picked by the kernel, with a fresh CA in a temp dir.
//!
//! `InProcessCluster::start(count, configure)` starts nodes `n0..` (each seeded with the first) and
//! waits until all see each other; the `spread`, `waves` and `revert` benches use it. Nodes are
//! started with `daemon::start` and stopped with `RunningNode::stop`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use grapevine_node::config::{Config, RawConfig};
use grapevine_node::daemon::{self, RunningNode};
use grapevine_node::tls;

/// Running nodes `n0`, `n1`, ... and the temp dir holding their data and certificates.
pub struct InProcessCluster {
    pub nodes: Vec<RunningNode>,
    _dir: tempfile::TempDir,
}

impl InProcessCluster {
    /// Starts `count` nodes, each seeded with the first, configured by `configure` (given the
    /// node's index, the first node, and its raw config to change), and waits until every
    /// node sees all alive.
    pub async fn start(
        count: usize,
        configure: impl Fn(usize, Option<&RunningNode>, &mut RawConfig),
    ) -> Result<InProcessCluster> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        tls::ca_init(&ca)?;
        let mut nodes: Vec<RunningNode> = Vec::new();
        for index in 0..count {
            let name = format!("n{index}");
            let root = dir.path().join(&name);
            tls::ca_issue(&ca, &name, &["127.0.0.1".parse()?], &[], &root.join("tls"))?;
            let mut raw = RawConfig {
                name: Some(name),
                listen: Some("127.0.0.1:0".into()),
                api: Some("127.0.0.1:0".into()),
                seeds: nodes.first().map(|first| vec![first.gossip_addr.to_string()]),
                data: Some(root.join("data")),
                tls: Some(root.join("tls")),
                auth: Some(crate::in_process_auth()),
                limits: Some(crate::in_process_limits()),
                ..RawConfig::default()
            };
            configure(index, nodes.first(), &mut raw);
            nodes.push(daemon::start(Config::try_from(raw)?).await?);
        }
        let cluster = InProcessCluster { nodes, _dir: dir };
        cluster.wait_formed(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    async fn wait_formed(&self, within: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        'poll: while Instant::now() < deadline {
            for node in &self.nodes {
                let url = format!("http://{}/v1/status", node.api_addr);
                let status: grapevine_node::replies::Status = http.get(url).send().await?.json().await?;
                let alive = status.alive().count();
                if alive < self.nodes.len() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
            return Ok(());
        }
        bail!("{} nodes did not form within {within:?}", self.nodes.len())
    }

    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}
