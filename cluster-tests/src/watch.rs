//! What applications that follow their config see: every event of the applied-state watch
//! (`GET /v1/watch`) of some nodes, with the instant it arrived. Benchmarks stop their clocks
//! here, when a node *serves* a change (or stops serving a reverted value), not when its log
//! holds it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One event of one node's watch stream.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// The index of the node, in the order given to [`WatchRecorder::start`].
    pub node: usize,
    pub key: String,
    /// The new applied value, `null` when the key is gone.
    pub value: Value,
    /// `change` or `revert`.
    pub cause: String,
    pub at: Instant,
}

/// A task per node reading its watch stream into one shared list.
pub struct WatchRecorder {
    events: Arc<Mutex<Vec<WatchEvent>>>,
    readers: tokio::task::JoinSet<()>,
    nodes: usize,
}

impl WatchRecorder {
    /// Opens `GET /v1/watch?prefix=PREFIX` on every API (`http://HOST:PORT`) and records from then on.
    pub async fn start(apis: &[String], prefix: &str) -> Result<WatchRecorder> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut readers = tokio::task::JoinSet::new();
        let http = crate::http_client();
        for (node, api) in apis.iter().enumerate() {
            let response = http.get(format!("{api}/v1/watch")).query(&[("prefix", prefix)]).send().await?;
            let response = response.error_for_status().with_context(|| format!("the watch of {api}"))?;
            readers.spawn(read(node, response, events.clone()));
        }
        Ok(WatchRecorder { events, readers, nodes: apis.len() })
    }

    /// When each node first showed an event on `key` that `wanted` accepts, waiting up to
    /// `within` for every node.
    pub async fn arrivals(
        &self,
        key: &str,
        wanted: impl Fn(&WatchEvent) -> bool,
        within: Duration,
    ) -> Result<Vec<Instant>> {
        self.arrivals_on(&(0..self.nodes).collect::<Vec<_>>(), key, wanted, within).await
    }

    /// [`WatchRecorder::arrivals`] on the nodes `nodes` only.
    pub async fn arrivals_on(
        &self,
        nodes: &[usize],
        key: &str,
        wanted: impl Fn(&WatchEvent) -> bool,
        within: Duration,
    ) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<Option<Instant>> = {
                let events = self.events.lock().expect("events lock");
                let first = |node: usize| events.iter().find(|e| e.node == node && e.key == key && wanted(e));
                nodes.iter().map(|&node| first(node).map(|e| e.at)).collect()
            };
            if found.iter().all(Option::is_some) {
                return Ok(found.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                let missing: Vec<usize> =
                    nodes.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
                bail!("no watch event for {key} from nodes {missing:?} within {} ms", within.as_millis());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The nodes that showed an event on `key` that `wanted` accepts.
    pub fn nodes_with(&self, key: &str, wanted: impl Fn(&WatchEvent) -> bool) -> Vec<usize> {
        let events = self.events.lock().expect("events lock");
        let mut nodes: Vec<usize> = events.iter().filter(|e| e.key == key && wanted(e)).map(|e| e.node).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    pub fn stop(mut self) {
        self.readers.abort_all();
    }
}

/// Reads one stream's events until it ends, stamping each as it arrives.
async fn read(node: usize, mut response: reqwest::Response, events: Arc<Mutex<Vec<WatchEvent>>>) {
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|line| line.strip_prefix("data:")) else { continue };
            let Ok(data) = serde_json::from_str::<Value>(data.trim()) else { continue };
            let Some(key) = data["key"].as_str() else { continue };
            let cause = data["cause"].as_str().unwrap_or_default().to_owned();
            let event = WatchEvent { node, key: key.to_owned(), value: data["value"].clone(), cause, at };
            events.lock().expect("events lock").push(event);
        }
    }
}
