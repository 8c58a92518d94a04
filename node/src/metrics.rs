//! Prometheus metrics of one node (prometheus-client), and a limiter for repeated warnings.
//!
//! One [`Metrics`] value is shared by every task of a node; each counter is cheap to clone and
//! lock-free to increment. `GET /metrics` renders [`Metrics::render`]. Each metric is declared
//! once, in the `metrics!` invocation: its field, its exported name and its help text together.
//!
//! Every name is prefixed `grapevine_`, counters are suffixed `_total`, and a labelled metric has
//! the single label `reason` (`Reason`); a unit test checks that no name is registered twice. The
//! gauges `generations_known` and `reverts_known` are set by the engine's `publish`, `members` when
//! `/metrics` is scraped. `docs/operations.md` lists each metric, and `node/tests/deploy_files.rs`
//! checks that its table names exactly the exposed metrics with their types. `WarnLimiter` allows
//! at most one warning per key per interval, for at most `MAX_WARN_KEYS` keys: TLS handshake
//! failures per peer address, refused future stamps per origin, generation conflicts per origin,
//! refused operator signatures per reason, and a snapshot over its size limit, each at most once
//! every 30 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock;

/// The one label of the node's metric families: why or how something happened
/// (`reason="queue_full"`, `reason="refused"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

pub fn reason(reason: &'static str) -> Reason {
    Reason { reason }
}

/// A cell, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabel {
    pub cell: String,
}

/// A generation, for the per-generation gauges (a bounded set: those this node judges or
/// waits on, refilled at each scrape).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabel {
    pub generation: String,
}

/// A generation and this node's verdict on it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub generation: String,
    pub verdict: &'static str,
}

/// Declares each metric once, so a field cannot go unregistered or a name drift from its field:
/// the field of [`Metrics`] (doc comment, name, type and, when not `Default::default()`, the
/// value it starts from), then after `=>` the name and help text it is exported under. It
/// generates the struct and `Metrics::new`, which registers the metrics in the order declared
/// (the order of the exposition).
macro_rules! metrics {
    (@new) => { Default::default() };
    (@new $new:expr) => { $new };
    ($(
        $(#[$meta:meta])*
        $vis:vis $field:ident: $type:ty $(= $new:expr)? => $name:literal, $help:literal;
    )*) => {
        /// Every metric of a node.
        pub struct Metrics {
            registry: Registry,
            $($(#[$meta])* $vis $field: $type,)*
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("grapevine");
                $(
                    let $field: $type = metrics!(@new $($new)?);
                    registry.register($name, $help, $field.clone());
                )*
                Metrics { registry, $($field),* }
            }
        }
    };
}

metrics! {
    /// Gossip messages received from peers and handed to chitchat.
    pub gossip_received: Counter
        => "gossip_messages_received", "Gossip messages received from peers";
    /// Gossip messages sent to peers.
    pub gossip_sent: Counter
        => "gossip_messages_sent", "Gossip messages sent to peers";
    /// Gossip messages dropped, by reason (`queue_full`, `inbox_full`, `malformed`, `send_failed`,
    /// `link_filter`).
    pub gossip_dropped: Family<Reason, Counter>
        => "gossip_messages_dropped", "Gossip messages dropped, by reason";
    /// Bytes of gossip sent and received.
    pub gossip_bytes: Family<Reason, Counter>
        => "gossip_bytes", "Gossip bytes, by direction";
    /// TLS handshakes that failed, in either direction (a peer outside the CA, or a bad cert).
    pub tls_handshake_failures: Counter
        => "tls_handshake_failures", "Failed TLS handshakes with peers";
    /// Reloads of changed certificate files, by outcome (`ok`, `failed`).
    pub tls_reloads: Family<Reason, Counter>
        => "tls_reloads", "Reloads of changed certificate files, by outcome";
    /// Log-sync pulls made, by outcome.
    pub sync_pulls: Family<Reason, Counter>
        => "sync_pulls", "Log-sync pulls made, by outcome";
    /// Anti-entropy probes (pulls made with no peer known ahead), by outcome.
    pub sync_probes: Family<Reason, Counter>
        => "sync_probes", "Anti-entropy probes (pulls with no peer known ahead), by outcome: found, none, failed";
    /// Log-sync pulls served to peers, by outcome.
    pub sync_served: Family<Reason, Counter>
        => "sync_served", "Log-sync pulls served, by outcome";
    /// Eager pushes sent, by outcome (`ok`, `failed`, `malformed`, `skipped_busy`).
    pub sync_pushes: Family<Reason, Counter>
        => "sync_pushes", "Eager pushes sent, by outcome";
    /// Eager pushes received, by outcome.
    pub sync_pushes_received: Family<Reason, Counter>
        => "sync_pushes_received", "Eager pushes received, by outcome";
    /// Push jobs dropped because the pusher's queue was full.
    pub push_jobs_dropped: Counter
        => "push_jobs_dropped", "Push jobs dropped on a full queue";
    /// Generations not sent to a peer because its older wire format cannot hold them.
    pub sync_format_withheld: Counter
        => "sync_format_withheld",
           "Generations not sent to a peer whose older wire format cannot hold them (upgrade it)";
    /// API requests refused: `unauthenticated` (401) or `forbidden` (403).
    pub api_auth_refusals: Family<Reason, Counter>
        => "api_auth_refusals", "API requests refused: unauthenticated (401) or forbidden (403)";
    /// API requests answered 429, by class (`admin`, `applications`).
    pub api_rate_limited: Family<Reason, Counter>
        => "api_rate_limited", "API requests over their client's rate, by class (admin, applications): answered 429";
    /// API connections answered 503 because the node had its limit open.
    pub api_connections_refused: Counter
        => "api_connections_refused",
           "API connections answered 503 because the node had its limit open ([limits] api_connections)";
    /// Peer connections refused: `too_many` (the node's limit), `per_peer` (one certificate's).
    pub peer_connections_refused: Family<Reason, Counter>
        => "peer_connections_refused",
           "Peer connections refused: too_many (the node's limit) or per_peer (one certificate's limit)";
    /// Generations received by log sync and stored.
    pub sync_generations_stored: Counter
        => "sync_generations_stored", "Generations stored from log sync";
    /// Malformed traffic from peers (frames, requests, generations) dropped, by kind.
    pub peer_malformed: Family<Reason, Counter>
        => "peer_malformed", "Malformed traffic from peers dropped, by kind";
    /// Changes submitted through the admin API, by outcome (`accepted`, `refused`, `failed`).
    pub changes: Family<Reason, Counter>
        => "changes", "Changes submitted to this node, by outcome";
    /// Generations in the local log.
    pub generations_known: Gauge
        => "generations_known", "Generations in the local log";
    /// Generations folded into the snapshot by compaction.
    pub generations_compacted: Counter
        => "generations_compacted", "Generations folded into the snapshot";
    /// Generations released to (applied on) this node by their rollout gate.
    pub generations_applied: Counter
        => "generations_applied", "Generations applied here by their rollout gate";
    /// Members of the cluster in this node's view, by state (`alive`, `dead`).
    pub members: Family<Reason, Gauge>
        => "members", "Cluster members in this node's view, by state";
    /// This node's cell (the label); 1 when it is one of the cell's representatives, else 0.
    pub cell_representative: Family<CellLabel, Gauge>
        => "cell_representative", "1 when this node is one of its cell's representatives (the label names the cell)";
    /// Generations received with the same id as a stored one but other content.
    pub generation_conflicts: Counter
        => "generation_conflicts", "Generations with a known id but other content";
    /// Generations and snapshots refused because a clock stamp was beyond the maximum offset.
    pub clock_offset_refusals: Counter
        => "clock_offset_refusals", "Generations and snapshots refused for a clock stamp beyond the maximum offset";
    /// Reverts this node learned, by how (`quorum`: it saw the anomaly quorum and wrote it;
    /// `rollback`: an operator asked it; `received`: from a peer).
    pub reverts: Family<Reason, Counter>
        => "reverts", "Reverts learned, by how: quorum, rollback, revocation, received";
    /// Reverts held in the log (grow-only).
    pub reverts_known: Gauge
        => "reverts_known", "Reverts held in the log";
    /// Generations this node judged anomalous (each one reported once).
    pub anomaly_reports: Counter
        => "anomaly_reports", "Generations this node judged anomalous";
    /// Peers' signed gossip values (reports, KPIs) refused, by reason (`unsigned`,
    /// `bad_signature`, `no_certificate`, `untrusted_certificate`, `wrong_name`).
    pub forged_reports: Family<Reason, Counter>
        => "forged_reports", "Peers' reports and KPIs refused for a missing or bad signature or certificate, by reason";
    /// Gossip members left out of membership, by reason (`wrong_name`: the certificate of the
    /// connection at the member's address names another node), each member counted once.
    pub members_refused: Family<Reason, Counter>
        => "members_refused",
           "Gossip members left out of membership, by reason: wrong_name (a connection's certificate names another node)";
    /// Other processes seen live under this node's own name (a second certificate for it).
    pub live_namesakes: Counter
        => "live_namesakes", "Other processes seen live under this node's own name";
    /// Peers' generations and snapshots refused for a missing or bad operator signature, by
    /// reason (`unsigned`, `unknown_root`, `bad_signature`, ...: [`SigningError::reason`]).
    ///
    /// [`SigningError::reason`]: grapevine_proto::signing::SigningError::reason
    pub unsigned_changes: Family<Reason, Counter>
        => "unsigned_changes_refused",
           "Peers' generations and snapshot writes refused for a missing or bad operator signature, by reason";
    /// Peers' generations refused because their origin did not prove it made them, by reason
    /// (`unsigned`: no proof; `untrusted_certificate`, `wrong_name`, `bad_signature`), each
    /// distinct generation counted once.
    pub unproven_origins: Family<Reason, Counter>
        => "unproven_origins_refused",
           "Peers' generations refused because their origin's certificate does not prove it made them, by reason";
    /// Alerts raised by this node, by kind (`anomaly`, `revert`).
    pub alerts: Family<Reason, Counter>
        => "alerts", "Alerts raised, by kind";
    /// Webhook deliveries, by outcome (`delivered`, `retried`, `failed`, `dropped`).
    pub webhook_deliveries: Family<Reason, Counter>
        => "webhook_deliveries", "Webhook deliveries, by outcome";
    /// Audit records written, by sink (`file`: appended to the file; `webhook`: queued).
    pub audit_records: Family<Reason, Counter>
        => "audit_records", "Audit records written, by sink";
    /// Failed writes of the audit file or its cursor (each retried).
    pub audit_file_errors: Counter
        => "audit_file_errors", "Failed writes of the audit file or its cursor, each retried";
    /// Audit webhook deliveries, by outcome (`delivered`, `retried`, `failed`, `dropped`).
    pub audit_webhook_deliveries: Family<Reason, Counter>
        => "audit_webhook_deliveries", "Audit webhook deliveries, by outcome";
    /// Generations held here whose wave is not open yet (waiting on a gate).
    pub generations_waiting: Gauge
        => "generations_waiting", "Generations held here whose wave is not open yet";
    /// Seconds from a generation's stamp (its origin's wall clock) to this node, by stage
    /// (`stored`: received from a peer; `applied`: released here).
    pub propagation: Family<Reason, Histogram, fn() -> Histogram> = Family::new_with_constructor(propagation_histogram)
        => "propagation_seconds", "Seconds from a generation's stamp to this node, by stage";
    /// Generations live peers hold that this node lacks (summed over origins), at scrape time.
    pub log_behind: Gauge
        => "log_behind_generations", "Generations live peers hold that this node lacks";
    /// How far this node's clock runs ahead of the median of its peers' (negative: behind).
    pub clock_ahead: Gauge
        => "clock_ahead_milliseconds",
           "How far this node's clock runs ahead of the median of its peers' (negative: behind); past max_clock_offset_ms it takes no changes";
    /// This node's verdict on each generation it judges: 1 for the current verdict.
    pub generation_verdict: Family<VerdictLabel, Gauge>
        => "generation_verdict", "This node's verdict on each generation it judges (1 for the current one)";
    /// For each generation waiting here for its wave: the waves open in this node's view...
    pub rollout_open_waves: Family<GenerationLabel, Gauge>
        => "rollout_open_waves", "Waves open in this node's view, for each generation waiting here for its wave";
    /// ...and its waves in all.
    pub rollout_waves: Family<GenerationLabel, Gauge>
        => "rollout_waves", "Waves of each generation waiting here for its wave";
    /// OFREP requests, by HTTP status (`200`, `304`, `400`, `404`).
    pub ofrep_requests: Family<Reason, Counter>
        => "ofrep_requests", "OFREP requests, by HTTP status";
    /// Seconds to evaluate one OFREP request (single or bulk), HTTP excluded.
    pub ofrep_evaluation: Histogram = Histogram::new(exponential_buckets(0.000_000_5, 2.0, 20))
        => "ofrep_evaluation_seconds", "Seconds to evaluate one OFREP request";
    /// Flag evaluations answered without their result (`timeout`: past their budget; `busy`:
    /// every permit of costly evaluations taken).
    pub evaluations_over_budget: Family<Reason, Counter>
        => "evaluations_over_budget",
           "Flag evaluations answered without their result: past their budget (timeout) or with every permit of costly evaluations taken (busy)";
    /// Requests whose evaluations ran on the blocking pool, within a budget (`api::budget`).
    pub costly_evaluations: Counter
        => "costly_evaluations",
           "Requests whose flag evaluations ran off the request's task, within a budget: costly rules on a large context";
    /// Rendered files, by outcome (`ok`, `render_failed`, `empty_refused`, `check_failed`,
    /// `reload_failed`).
    pub file_renders: Family<Reason, Counter>
        => "file_renders", "Rendered files, by outcome";
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Buckets from 0.5 ms to about 65 s.
fn propagation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Most distinct keys a [`WarnLimiter`] remembers; past it, it forgets them all (and may let
/// one extra warning through) rather than grow.
const MAX_WARN_KEYS: usize = 1024;

/// Lets a warning with a given key through at most once per interval, so a fault that recurs
/// every gossip round (a partition, a rogue peer) does not flood the log.
pub struct WarnLimiter {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl WarnLimiter {
    pub fn new(interval: Duration) -> Self {
        WarnLimiter { interval, last: Mutex::new(HashMap::new()) }
    }

    /// True when a warning for `key` may be logged now.
    pub fn allow(&self, key: &str) -> bool {
        let now = clock::now();
        let mut last = self.last.lock().expect("warn limiter lock poisoned");
        if last.len() >= MAX_WARN_KEYS {
            last.clear();
        }
        match last.get(key) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_each_metric() {
        let metrics = Metrics::new();
        metrics.gossip_dropped.get_or_create(&reason("queue_full")).inc();
        let text = metrics.render();
        assert!(text.contains("grapevine_gossip_messages_dropped_total{reason=\"queue_full\"} 1"), "{text}");
        assert!(text.contains("# TYPE grapevine_tls_handshake_failures counter"), "{text}");
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let count = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), count, "a metric is registered twice:\n{text}");
    }

    #[test]
    fn repeated_warnings_are_limited_per_key() {
        let limiter = WarnLimiter::new(Duration::from_secs(60));
        assert!(limiter.allow("a"));
        assert!(!limiter.allow("a"));
        assert!(limiter.allow("b"));
    }
}
