//! Webhook delivery, shared by the alerts (`[alerts]`) and the audit trail (`[audit]`): JSON
//! items POSTed to every configured webhook, with retries, from a bounded queue that never makes
//! the caller wait.
//!
//! - `WebhookConfig` (`url`, http or https; `timeout_ms`, default 5000) and `validate` (`queue`
//!   1..=100000, `max_attempts` 1..=20, each URL), shared by both sections.
//! - `Outbox<T>`: `Outbox::new` returns the handle and, with webhooks, the delivery task;
//!   `Outbox::send` queues an item without waiting, and when `queue` items wait already drops it,
//!   counts it (`reason="dropped"` in the outbox's counter family) and answers false.
//! - The delivery task posts each item to every webhook on its own, at most
//!   `MAX_CONCURRENT_DELIVERIES` (16) at once, waiting [`FIRST_BACKOFF`] (500 ms), then twice as
//!   long each time up to `MAX_BACKOFF` (30 s), between attempts, up to `max_attempts`; outcomes
//!   are counted as `delivered`, `retried` and `failed` (warned). It ends at shutdown, dropping
//!   what is queued or in flight.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::{Reason, reason};

/// Waits before the second attempt; each later one waits twice as long, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deliveries in flight at once (each item to each webhook is one).
const MAX_CONCURRENT_DELIVERIES: usize = 16;
/// Items waiting for delivery, unless the section says otherwise.
pub const DEFAULT_QUEUE: usize = 1024;
/// Attempts per item and webhook, unless the section says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A webhook: items are POSTed to it as JSON.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// How long one attempt may take [default: 5000].
    pub timeout_ms: Option<u64>,
}

/// Checks a section's `queue`, `max_attempts` and webhook URLs.
pub fn validate(queue: Option<usize>, max_attempts: Option<u32>, webhooks: &[WebhookConfig]) -> Result<(), String> {
    if let Some(queue) = queue.filter(|q| !(1..=100_000).contains(q)) {
        return Err(format!("queue must be from 1 to 100000, got {queue}"));
    }
    if let Some(attempts) = max_attempts.filter(|a| !(1..=20).contains(a)) {
        return Err(format!("max_attempts must be from 1 to 20, got {attempts}"));
    }
    for webhook in webhooks {
        let parsed = reqwest::Url::parse(&webhook.url).map_err(|e| format!("webhook url {:?}: {e}", webhook.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("webhook url must be http or https, got {:?}", webhook.url));
        }
    }
    Ok(())
}

/// What an outbox delivers: JSON, named in log lines by `describe`.
pub trait Payload: Serialize + Send + Sync + 'static {
    /// A few words that identify the item in a log line (`generation n1.4`).
    fn describe(&self) -> String;
}

/// How an outbox delivers.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub queue: usize,
    pub max_attempts: u32,
    pub webhooks: Vec<WebhookConfig>,
}

/// A handle to queue items for the webhooks; cheap to clone.
pub struct Outbox<T> {
    queue: Option<mpsc::Sender<Arc<T>>>,
    outcomes: Family<Reason, Counter>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox { queue: self.queue.clone(), outcomes: self.outcomes.clone() }
    }
}

impl<T: Payload> Outbox<T> {
    /// The outbox and the task that delivers its items (`None` without webhooks). Outcomes are
    /// counted in `outcomes`, by `reason`.
    pub fn new(
        delivery: Delivery,
        outcomes: Family<Reason, Counter>,
        shutdown: CancellationToken,
    ) -> (Outbox<T>, Option<impl std::future::Future<Output = ()> + use<T>>) {
        if delivery.webhooks.is_empty() {
            return (Outbox { queue: None, outcomes }, None);
        }
        let (sender, receiver) = mpsc::channel(delivery.queue);
        let task = deliver(delivery, receiver, outcomes.clone(), shutdown);
        (Outbox { queue: Some(sender), outcomes }, Some(task))
    }

    /// An outbox that queues into `sender`, for tests of a full queue.
    #[cfg(test)]
    pub fn with_queue(sender: mpsc::Sender<Arc<T>>, outcomes: Family<Reason, Counter>) -> Outbox<T> {
        Outbox { queue: Some(sender), outcomes }
    }

    /// Whether any webhook is configured.
    pub fn is_active(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `item` for every webhook without waiting; false (and counted) when the queue is
    /// full. Without webhooks, nothing is queued and the answer is true.
    pub fn send(&self, item: T) -> bool {
        let Some(queue) = &self.queue else { return true };
        if queue.try_send(Arc::new(item)).is_err() {
            self.outcomes.get_or_create(&reason("dropped")).inc();
            return false;
        }
        true
    }
}

async fn deliver<T: Payload>(
    delivery: Delivery,
    mut queue: mpsc::Receiver<Arc<T>>,
    outcomes: Family<Reason, Counter>,
    shutdown: CancellationToken,
) {
    let http = reqwest::Client::new();
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES));
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = queue.recv() => match item { Some(item) => item, None => return },
        };
        for webhook in &delivery.webhooks {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (http, outcomes, webhook, item) = (http.clone(), outcomes.clone(), webhook.clone(), item.clone());
            let (shutdown, attempts) = (shutdown.clone(), delivery.max_attempts);
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = post_with_retries(&http, &webhook, &*item, attempts, &outcomes) => {}
                }
                drop(permit);
            });
        }
    }
}

async fn post_with_retries<T: Payload>(
    http: &reqwest::Client,
    webhook: &WebhookConfig,
    item: &T,
    attempts: u32,
    outcomes: &Family<Reason, Counter>,
) {
    let timeout = Duration::from_millis(webhook.timeout_ms.unwrap_or(5_000));
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=attempts {
        let outcome = http.post(&webhook.url).timeout(timeout).json(item).send().await;
        let error = match outcome {
            Ok(response) if response.status().is_success() => {
                outcomes.get_or_create(&reason("delivered")).inc();
                return;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        if attempt == attempts {
            outcomes.get_or_create(&reason("failed")).inc();
            warn!(url = %webhook.url, item = %item.describe(), attempts, %error, "webhook delivery failed; giving up");
            return;
        }
        outcomes.get_or_create(&reason("retried")).inc();
        debug!(url = %webhook.url, item = %item.describe(), attempt, %error, "webhook delivery failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_webhook_urls_and_ranges_are_refused() {
        let hooks = |url: &str| vec![WebhookConfig { url: url.into(), timeout_ms: None }];
        assert!(validate(None, None, &hooks("not a url")).is_err());
        assert!(validate(None, None, &hooks("ftp://x/y")).unwrap_err().contains("http or https"));
        assert!(validate(None, None, &hooks("https://hooks.example.com/grapevine")).is_ok());
        assert_eq!(validate(Some(0), None, &[]).unwrap_err(), "queue must be from 1 to 100000, got 0");
        assert_eq!(validate(None, Some(21), &[]).unwrap_err(), "max_attempts must be from 1 to 20, got 21");
    }
}
