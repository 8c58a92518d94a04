//! The audit trail's sinks (`[audit]`): every log entry this node holds (generation, control,
//! revert) written once, as a `proto::audit::Record`, to a rotated file and/or webhooks (D78).
//!
//! - `AuditConfig` (`[audit]`: `file`, `max_bytes` (default 100 MiB, 4 KiB..=1 TiB), `keep`
//!   (default 5, 0..=1000), and as `[alerts]` has them `queue` (default `DEFAULT_QUEUE`, 10,000
//!   here), `max_attempts` and `[[audit.webhook]]`). `validate` wants a file or a webhook.
//! - `Audit::open` opens the file (a start-up check: `StartError::Audit`) and loads the cursor
//!   (`DATA/audit.cursor`, a `proto::audit::Cursor` through `wire::encode`); `run` is the task.
//! - The task wakes when the engine publishes a view whose log summary changed (vector,
//!   generations held, reverts, compacted), asks the engine for the records of the entries the
//!   cursor lacks (`EngineHandle::audit`, at most `BATCH` at once: generations in fold order, then
//!   reverts), appends them to the file (one fsync), queues each for the webhooks
//!   (`webhook::Outbox`: a full queue drops and counts, `reason="dropped"`, and warns), then marks
//!   them in the cursor and saves it (temp file, fsync, rename). A failed file write is counted
//!   (`grapevine_audit_file_errors_total`), warned, and retried after `RETRY` without moving the
//!   cursor.
//! - Once: a record is written before the cursor that covers it is saved, so a crash in between
//!   writes it again at the next start (at least once; `id` is stable, consumers dedupe on it).
//!   Generations compacted before they were written (only while the file kept failing) and those
//!   this node learned only inside a peer's snapshot have no record here; the cursor passes them.

mod file;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grapevine_proto::audit::{Cursor, Record};
use grapevine_proto::wire;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use file::FileSink;

use crate::engine::{AuditBatch, EngineHandle};
use crate::metrics::{Metrics, WarnLimiter, reason};
use crate::webhook::{self, Delivery, Outbox, Payload, WebhookConfig};

/// Records asked of the engine at once: a batch is one walk of the log and one fsync.
const BATCH: usize = 256;
/// How long the task waits before it tries a failed file write again.
const RETRY: Duration = Duration::from_secs(1);
/// Records waiting for the webhooks unless `queue` says otherwise: larger than the alerts'
/// 1024, since a node that turns `[audit]` on writes every generation it holds at once.
const DEFAULT_QUEUE: usize = 10_000;
const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_KEEP: u32 = 5;
/// The cursor's file name in the data directory.
const CURSOR_FILE: &str = "audit.cursor";

/// `[audit]` in the node config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The file records are appended to, one JSON object a line.
    pub file: Option<PathBuf>,
    /// The size past which the file is rotated [default: 100 MiB].
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`FILE.1` newest) [default: 5].
    pub keep: Option<u32>,
    /// Records waiting for the webhooks; past it new ones are dropped and counted [default: 10000].
    pub queue: Option<usize>,
    /// Attempts per record and webhook [default: 5].
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.file.is_none() && self.webhook.is_empty() {
            return Err("expected file = \"PATH\" or at least one [[audit.webhook]], found neither".into());
        }
        match &self.file {
            Some(file) if file.as_os_str().is_empty() || file.file_name().is_none() => {
                return Err(format!("file must be the path of a file, got {file:?}"));
            }
            None if self.max_bytes.is_some() || self.keep.is_some() => {
                return Err("max_bytes and keep rotate the audit file: set file = \"PATH\" too".into());
            }
            _ => {}
        }
        if let Some(bytes) = self.max_bytes.filter(|b| !(4096..=1 << 40).contains(b)) {
            return Err(format!("max_bytes must be from 4096 to 1099511627776, got {bytes}"));
        }
        if let Some(keep) = self.keep.filter(|k| *k > 1000) {
            return Err(format!("keep must be from 0 to 1000, got {keep}"));
        }
        webhook::validate(self.queue, self.max_attempts, &self.webhook)
    }
}

impl Payload for Record {
    fn describe(&self) -> String {
        format!("audit record {}", self.id)
    }
}

/// The audit task's resources, checked at start.
pub struct Audit {
    config: AuditConfig,
    file: Option<FileSink>,
    cursor: Cursor,
    cursor_path: PathBuf,
}

impl Audit {
    /// Opens the file and reads the cursor from the data directory.
    pub fn open(config: &AuditConfig, data: &Path) -> Result<Audit, String> {
        let file = match &config.file {
            Some(path) => {
                let (max_bytes, keep) =
                    (config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES), config.keep.unwrap_or(DEFAULT_KEEP));
                let sink = FileSink::open(path, max_bytes, keep);
                Some(sink.map_err(|error| format!("audit file {}: {error}", path.display()))?)
            }
            None => None,
        };
        let cursor_path = data.join(CURSOR_FILE);
        let cursor = match std::fs::read(&cursor_path) {
            Ok(bytes) => wire::decode(&bytes, "audit cursor").unwrap_or_else(|error| {
                warn!(path = %cursor_path.display(), %error, "unreadable audit cursor; writing every entry held again");
                Cursor::default()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Cursor::default(),
            Err(error) => return Err(format!("audit cursor {}: {error}", cursor_path.display())),
        };
        Ok(Audit { config: config.clone(), file, cursor, cursor_path })
    }
}

/// Writes every entry of the log the cursor lacks, as they come, until `shutdown`.
pub async fn run(audit: Audit, engine: EngineHandle, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let Audit { config, mut file, mut cursor, cursor_path } = audit;
    let delivery = Delivery {
        queue: config.queue.unwrap_or(DEFAULT_QUEUE),
        max_attempts: config.max_attempts.unwrap_or(webhook::DEFAULT_MAX_ATTEMPTS),
        webhooks: config.webhook.clone(),
    };
    let (outbox, delivery_task) = Outbox::new(delivery, metrics.audit_webhook_deliveries.clone(), shutdown.clone());
    if let Some(task) = delivery_task {
        tokio::spawn(task);
    }
    let warnings = WarnLimiter::new(Duration::from_secs(30));
    let mut views = engine.watch();
    let mut seen = None;
    loop {
        let summary = {
            let view = views.borrow_and_update();
            (view.version_vector.clone(), view.generations, view.reverted.len(), view.compacted)
        };
        if seen.as_ref() != Some(&summary) {
            match write_pending(&engine, &mut file, &outbox, &mut cursor, &cursor_path, &metrics, &warnings).await {
                Ok(true) => continue, // a full batch: there may be more
                Ok(false) => seen = Some(summary),
                Err(error) => {
                    metrics.audit_file_errors.inc();
                    if warnings.allow("audit file") {
                        warn!(%error, "could not write the audit trail; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
        }
    }
}

/// Writes one batch; true when it was full (more may be waiting).
async fn write_pending(
    engine: &EngineHandle,
    file: &mut Option<FileSink>,
    outbox: &Outbox<Record>,
    cursor: &mut Cursor,
    cursor_path: &Path,
    metrics: &Metrics,
    warnings: &WarnLimiter,
) -> Result<bool, String> {
    let Some(AuditBatch { records, generations, reverts, compacted }) =
        engine.audit(Arc::new(cursor.clone()), BATCH).await
    else {
        return Ok(false); // the engine stopped: the node is shutting down
    };
    let full = records.len() >= BATCH;
    if !records.is_empty() {
        if let Some(sink) = file.take() {
            // Through a `Value`, whose object keys are sorted: a record prints the same line
            // here and in `history --format jsonl`.
            let line = |r: &Record| serde_json::to_value(r).and_then(|v| serde_json::to_vec(&v));
            let lines: Vec<Vec<u8>> = records.iter().map(|r| line(r).expect("a record always serializes")).collect();
            let (sink, written) = tokio::task::spawn_blocking(move || {
                let mut sink = sink;
                let written = sink.append(&lines);
                (sink, written)
            })
            .await
            .expect("audit file task panicked");
            *file = Some(sink);
            written.map_err(|error| error.to_string())?;
            metrics.audit_records.get_or_create(&reason("file")).inc_by(records.len() as u64);
        }
        if outbox.is_active() {
            for record in records {
                let id = record.id.clone();
                if outbox.send(record) {
                    metrics.audit_records.get_or_create(&reason("webhook")).inc();
                } else if warnings.allow("audit webhook queue") {
                    warn!(record = %id, "audit webhook queue full; dropping records (counted in grapevine_audit_webhook_deliveries_total{{reason=\"dropped\"}})");
                }
            }
        }
    }
    for id in &generations {
        cursor.mark(id);
    }
    cursor.reverts.extend(reverts);
    cursor.pass(&compacted);
    save_cursor(cursor, cursor_path)
        .await
        .map_err(|error| format!("audit cursor {}: {error}", cursor_path.display()))?;
    if full {
        info!(records = BATCH, "audit trail catching up");
    }
    Ok(full)
}

/// Saves the cursor whole: a temp file, fsynced, renamed over the old one.
async fn save_cursor(cursor: &Cursor, path: &Path) -> std::io::Result<()> {
    let (bytes, path) = (wire::encode(cursor), path.to_owned());
    tokio::task::spawn_blocking(move || {
        let temp = path.with_extension("cursor.tmp");
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })
    .await
    .expect("audit cursor task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> AuditConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_bad_audit_section_says_what_it_expected() {
        assert!(config("").validate().unwrap_err().contains("found neither"));
        assert!(
            config("max_bytes = 5000\n[[webhook]]\nurl = \"http://x/\"").validate().unwrap_err().contains("set file")
        );
        assert!(config("file = \"/tmp/a\"\nmax_bytes = 10").validate().unwrap_err().contains("got 10"));
        assert!(config("file = \"/tmp/a\"\nkeep = 1001").validate().unwrap_err().contains("got 1001"));
        assert!(config("[[webhook]]\nurl = \"ftp://x/\"").validate().unwrap_err().contains("http or https"));
        assert!(config("file = \"/var/log/grapevine/audit.jsonl\"").validate().is_ok());
        assert!(toml::from_str::<AuditConfig>("fil = \"x\"").unwrap_err().to_string().contains("unknown field"));
    }

    #[tokio::test]
    async fn the_cursor_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursor = Cursor::default();
        cursor.mark(&"n1.1".parse().unwrap());
        cursor.reverts.insert("n1.1".parse().unwrap());
        save_cursor(&cursor, &dir.path().join(CURSOR_FILE)).await.unwrap();
        let audit = Audit::open(&config("[[webhook]]\nurl = \"http://x/\""), dir.path()).unwrap();
        assert_eq!(audit.cursor, cursor);
        std::fs::write(dir.path().join(CURSOR_FILE), b"garbage").unwrap();
        assert_eq!(
            Audit::open(&config("[[webhook]]\nurl = \"http://x/\""), dir.path()).unwrap().cursor,
            Cursor::default()
        );
    }
}
