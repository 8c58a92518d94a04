//! In-process clusters for benchmarks: real nodes (QUIC, redb, HTTP) in this process, on
//! loopback ports picked by the kernel, with a fresh CA in a temp dir.
//!
//! `InProcessCluster::start(count, configure)` starts nodes `n0..` (each seeded with the first of
//! its cell, unless `configure` sets seeds) and waits until each sees every node of its cell;
//! the `spread`, `waves` and `revert` benches use it. Nodes are
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
    /// Starts `count` nodes, configured by `configure` (given the node's index, the first node,
    /// and its raw config to change), each seeded with the first node of its cell unless
    /// `configure` set seeds, and waits until every node sees all of its cell alive.
    pub async fn start(
        count: usize,
        configure: impl Fn(usize, Option<&RunningNode>, &mut RawConfig),
    ) -> Result<InProcessCluster> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        tls::ca_init(&ca)?;
        let mut nodes: Vec<RunningNode> = Vec::new();
        let mut cells: Vec<Option<String>> = Vec::new();
        for index in 0..count {
            let name = format!("n{index}");
            let root = dir.path().join(&name);
            tls::ca_issue(&ca, &name, &["127.0.0.1".parse()?], &[], &root.join("tls"))?;
            let mut raw = RawConfig {
                name: Some(name),
                listen: Some("127.0.0.1:0".into()),
                api: Some("127.0.0.1:0".into()),
                data: Some(root.join("data")),
                tls: Some(root.join("tls")),
                auth: Some(crate::in_process_auth()),
                limits: Some(crate::in_process_limits()),
                ..RawConfig::default()
            };
            configure(index, nodes.first(), &mut raw);
            if raw.seeds.is_none() {
                let first_of_cell = cells.iter().position(|cell| *cell == raw.cell);
                raw.seeds = first_of_cell.map(|first| vec![nodes[first].gossip_addr.to_string()]);
            }
            cells.push(raw.cell.clone());
            nodes.push(daemon::start(Config::try_from(raw)?).await?);
        }
        let cluster = InProcessCluster { nodes, _dir: dir };
        cluster.wait_formed(&cells, Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    /// Waits until each node sees as many alive as its cell has nodes (`cells`: each node's).
    async fn wait_formed(&self, cells: &[Option<String>], within: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        'poll: while Instant::now() < deadline {
            for (node, cell) in self.nodes.iter().zip(cells) {
                let url = format!("http://{}/v1/status", node.api_addr);
                let status: grapevine_node::replies::Status = http.get(url).send().await?.json().await?;
                let alive = status.alive().count();
                if alive < cells.iter().filter(|c| *c == cell).count() {
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
