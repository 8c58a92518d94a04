//! Alerts: each anomaly this node reports and each revert it writes is counted, and posted as
//! JSON to the webhooks of the node's `[alerts]` config, with retries and a bounded queue.
//!
//! The node that raises an event alerts on it: the node that judged a generation anomalous,
//! the node that wrote a revert (two nodes on both sides of a partition may both write the same
//! revert, and both alert). Nodes that merely receive a revert log and count it, but do not
//! post it, so one revert does not page anyone once per host.
//!
//! Delivery never blocks the caller: alerts wait in a queue of [`AlertsConfig::queue`] and are
//! dropped (and counted) when it is full. Each is posted to every webhook until one answer is
//! 2xx, up to `max_attempts` times with exponential backoff (`webhook.rs`, shared with the audit
//! trail's webhooks).
//!
//! - `AlertsConfig` (`[alerts]`: `queue`, default 1024, 1..=100000; `max_attempts`, default 5,
//!   1..=20; `[[alerts.webhook]]` `url`, http or https, and `timeout_ms`, default 5000: a
//!   `webhook::WebhookConfig`), `AlertKind` (`anomaly`, `revert`), `Alert` (the JSON body) and `Alerts` (a
//!   cheap-to-clone handle).
//! - `Alerts::raise` counts the alert (`grapevine_alerts_total{reason=kind}`) and queues it without
//!   waiting; with the queue full it is dropped and counted
//!   (`grapevine_webhook_deliveries_total{reason="dropped"}`). Without webhooks nothing is queued
//!   and no delivery task runs.
//! - The delivery task (`webhook::Outbox`) posts each alert to every webhook on its own, at most 16
//!   at once, with retries (`grapevine_webhook_deliveries_total{reason}`). It ends at shutdown,
//!   dropping what is queued or in flight.
//!
//! Tests: a webhook that fails twice gets the alert on the third attempt, a full queue drops and
//! counts, and bad webhook URLs are refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, reason};
pub use crate::webhook::WebhookConfig;
use crate::webhook::{self, Delivery, Outbox, Payload};

/// `[alerts]` in the node config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Alerts waiting for delivery; past it new alerts are dropped and counted [default: 1024].
    pub queue: Option<usize>,
    /// Attempts per alert and webhook [default: 5].
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
}

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), String> {
        webhook::validate(self.queue, self.max_attempts, &self.webhook)
    }
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// This node judged a generation anomalous.
    Anomaly,
    /// This node wrote the revert of a generation.
    Revert,
    /// A peer holds other content under a generation id this node holds: two processes wrote
    /// under one name (`generation` names the id; the content this node holds is kept).
    Conflict,
    /// Another process is live under this node's name (`generation` is empty).
    Namesake,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::Anomaly => "anomaly",
            AlertKind::Revert => "revert",
            AlertKind::Conflict => "conflict",
            AlertKind::Namesake => "namesake",
        }
    }
}

/// The JSON body posted to webhooks.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// The node that raised it.
    pub node: String,
    pub generation: String,
    /// For a revert: `quorum` or `rollback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'static str>,
    pub reason: String,
    /// Nodes that report the generation anomalous, as the raising node sees them.
    pub reporting_nodes: Vec<String>,
    /// KPIs by node, as `requests:errors:latency_ms:intervals` windows (see `docs/protocol.md`).
    pub kpis: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch, on the raising node's clock.
    pub at_ms: u64,
}

impl Payload for Alert {
    fn describe(&self) -> String {
        format!("{} alert on {}", self.kind.as_str(), self.generation)
    }
}

/// A handle to raise alerts; cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    outbox: Outbox<Alert>,
    metrics: Arc<Metrics>,
}

impl Alerts {
    /// Alerts and the task that delivers them (`None` without webhooks).
    pub fn new(
        config: &AlertsConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Alerts, Option<impl std::future::Future<Output = ()> + use<>>) {
        let delivery = Delivery {
            queue: config.queue.unwrap_or(webhook::DEFAULT_QUEUE),
            max_attempts: config.max_attempts.unwrap_or(webhook::DEFAULT_MAX_ATTEMPTS),
            webhooks: config.webhook.clone(),
        };
        let (outbox, task) = Outbox::new(delivery, metrics.webhook_deliveries.clone(), shutdown);
        (Alerts { outbox, metrics }, task)
    }

    /// Counts the alert and queues it for the webhooks; never waits.
    pub fn raise(&self, alert: Alert) {
        self.metrics.alerts.get_or_create(&reason(alert.kind.as_str())).inc();
        self.outbox.send(alert);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;
    use crate::clock;
    use std::time::Duration;

    fn alert(generation: &str) -> Alert {
        Alert {
            kind: AlertKind::Revert,
            node: "n1".into(),
            generation: generation.into(),
            trigger: Some("quorum"),
            reason: "1 of 1 nodes that applied it report it anomalous (n2), 1 needed".into(),
            reporting_nodes: vec!["n2".into()],
            kpis: BTreeMap::from([("n2".into(), "100:40::0".into())]),
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_webhook_that_fails_twice_gets_the_alert_on_the_third_attempt() {
        let calls = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (calls.clone(), received.clone());
        let app = axum::Router::new().route(
            "/hook",
            post(move |Json(body): Json<serde_json::Value>| async move {
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.lock().unwrap().push(body);
                StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config =
            AlertsConfig { webhook: vec![WebhookConfig { url, timeout_ms: Some(1_000) }], ..AlertsConfig::default() };
        config.validate().unwrap();
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (alerts, task) = Alerts::new(&config, metrics.clone(), shutdown.clone());
        tokio::spawn(task.unwrap());
        alerts.raise(alert("n1.4"));
        let deadline = clock::now() + Duration::from_secs(10);
        while received.lock().unwrap().is_empty() && clock::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let body = received.lock().unwrap()[0].clone();
        assert_eq!(body["generation"], "n1.4");
        assert_eq!(body["kind"], "revert");
        assert_eq!(body["reporting_nodes"][0], "n2");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // The sender counts the delivery once the answer is back, a moment after the hook saw it.
        let delivered = "grapevine_webhook_deliveries_total{reason=\"delivered\"} 1";
        while !metrics.render().contains(delivered) && clock::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let text = metrics.render();
        assert!(text.contains("grapevine_webhook_deliveries_total{reason=\"retried\"} 2"), "{text}");
        assert!(text.contains(delivered), "{text}");
        shutdown.cancel();
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::new());
        let (sender, _receiver) = tokio::sync::mpsc::channel(1);
        let outbox = Outbox::with_queue(sender, metrics.webhook_deliveries.clone());
        let alerts = Alerts { outbox, metrics: metrics.clone() };
        alerts.raise(alert("n1.1"));
        alerts.raise(alert("n1.2"));
        let text = metrics.render();
        assert!(text.contains("grapevine_webhook_deliveries_total{reason=\"dropped\"} 1"), "{text}");
        assert!(text.contains("grapevine_alerts_total{reason=\"revert\"} 2"), "{text}");
    }

    #[test]
    fn bad_webhook_urls_are_refused() {
        let config = |url: &str| AlertsConfig {
            webhook: vec![WebhookConfig { url: url.into(), timeout_ms: None }],
            ..AlertsConfig::default()
        };
        assert!(config("not a url").validate().is_err());
        assert!(config("ftp://x/y").validate().unwrap_err().contains("http or https"));
        assert!(config("https://hooks.example.com/grapevine").validate().is_ok());
    }
}
