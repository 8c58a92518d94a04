//! The audit trail's records: one per entry of the log (a generation, a control, a revert), the
//! same for `grapevine history --format jsonl` and for the `[audit]` sinks (D78).
//!
//! A record says who made the entry (`author`, and the operator key that signed it, `signer`),
//! when (the generation's HLC wall time, `at` in RFC 3339 and `at_ms`), where (`origin`), under
//! which `policy`, and what changed: per key, its value `before` (the fold of the log as it stood
//! just before this generation: the snapshot and every generation ordered before it that is not
//! reverted) and `after`. A revert's record names its `target` and, per key of the target, the
//! value with the target and without it.
//!
//! - `RecordKind` is the kind of an entry; `kind_of(generation)` is the one place that says which
//!   kind a generation is, so a new kind of generation (governance records) is a variant and an
//!   arm there. Readers must accept kinds they do not know.
//! - `records(log, generations, reverts)` builds the records of the generations held whole in
//!   `generations` (in fold order) and then of the reverts of `reverts` (in target order), in one
//!   walk of the fold: a batch costs one pass over the log, not one per record.
//! - Secrets: a config value whose JSON Schema marks it, or one of its parts, `"writeOnly": true`
//!   or `"x-grapevine-secret": true` ([`SECRET_KEYWORD`]) is written redacted (`redact`): the
//!   marked part becomes `"<redacted sha256:HHHHHHHHHHHH>"`, 12 hex digits of the SHA-256 of the
//!   key and the part's canonical JSON, so a reader sees that it changed but not to what. A part
//!   the walk cannot place (under `patternProperties`, `if`, `not`, ...) redacts the whole value
//!   around it. The schemas of both sides apply to both sides: a key whose new schema marks a
//!   property secret does not show its old value of that property either.
//! - `Cursor`: which entries a sink has written (a version vector, the ids written beyond it, the
//!   reverts written), stored by the node through `wire::encode`.
//! - `rfc3339_ms(ms)`: `2026-12-06T14:25:54.123Z`, without a date library.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::hlc::Stamp;
use crate::log::Log;
use crate::model::{Generation, Governance, JsonText, Op, Revert, VersionVector};
use crate::name::{GenId, Key, NodeName};
use crate::policy::{Control, Policy};
use crate::signing::Signed;

/// The schema keyword of Grapevine's own that marks a value, or a part of one, secret (JSON
/// Schema's `writeOnly: true` does too).
pub const SECRET_KEYWORD: &str = "x-grapevine-secret";

/// How deep the redaction follows a schema's `$ref`s and subschemas: past it, a value whose
/// schema mentions a secret below is redacted whole (a `$ref` cycle must not loop).
const MAX_SCHEMA_DEPTH: usize = 32;

/// Hex digits of the digest in a redacted value: enough to tell two values apart, too few to
/// be a useful handle on the value itself.
const REDACTED_HEX_DIGITS: usize = 12;

/// The kind of a log entry. Open: readers must accept kinds they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A change of flags or config values.
    Generation,
    /// Rollout controls (pause, resume, promote) of other generations.
    Control,
    /// The revert of a generation.
    Revert,
    /// A change proposed for approval (D79): it applies nowhere until enacted.
    Proposal,
    /// An operator's approval of a proposal.
    Approval,
    /// An operator's rejection of a proposal.
    Rejection,
}

/// The kind of record a generation makes. An enactment of a proposal is a `generation` (it
/// changes values), naming its `proposal` and `approvers`.
pub fn kind_of(generation: &Generation) -> RecordKind {
    let change = &generation.body.change;
    match governance(generation) {
        Some(Governance::Propose { .. }) => RecordKind::Proposal,
        Some(Governance::Approve { .. }) => RecordKind::Approval,
        Some(Governance::Reject { .. }) => RecordKind::Rejection,
        Some(Governance::Enact { .. }) | None if change.ops.is_empty() && !change.controls.is_empty() => {
            RecordKind::Control
        }
        Some(Governance::Enact { .. }) | None => RecordKind::Generation,
    }
}

fn governance(generation: &Generation) -> Option<&Governance> {
    generation.body.terms.as_ref()?.governance.as_ref()
}

/// One audit record (serialized as one JSON object, one line in a file).
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// The entry's id: `origin.seq`, or `origin.seq/revert`. Stable: consumers dedupe on it.
    pub id: String,
    pub kind: RecordKind,
    /// The node that wrote this record.
    pub node: String,
    /// The generation's content hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The generation's HLC wall time (its origin's clock), RFC 3339; for a revert, when this
    /// node stored it, if it did since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// The whole HLC stamp, `wall_ms.logical`: the fold order with `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hlc: Option<String>,
    /// The node that accepted the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Who submitted it, as the client named itself (or the signing operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The operator key that signed the change (the proposer's, for a proposal and its
    /// enactment; the voter's, for an approval or a rejection), and the root that delegated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    /// An enactment's: the approvers' keys, beside the proposer's `signer`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Signer>,
    /// An approval's, rejection's or enactment's: the proposal it votes on or carries out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// A scheduled change's (or proposal's) start, RFC 3339: no wave opens before it (D80).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// The rollout policy of a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// What changed, per key.
    pub changes: Vec<KeyChange>,
    /// What a control generation controls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<ControlRecord>,
    /// A generation's: whether it was reverted when the record was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted: Option<bool>,
    /// A revert's: the generation it undoes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A revert's: the members that wrote it and why (`quorum`, `rollback`, `revocation`), as
    /// gossip showed them when the record was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted_by: Option<BTreeMap<String, String>>,
    /// A revert's: the reason, when this node wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who signed a change.
#[derive(Clone, Debug, Serialize)]
pub struct Signer {
    pub operator: String,
    pub key: String,
    pub root: String,
}

impl Signer {
    fn of(signed: &Signed) -> Signer {
        Signer {
            operator: signed.delegation.operator.to_string(),
            key: signed.delegation.key.to_string(),
            root: signed.delegation.root.to_string(),
        }
    }
}

/// One key's value before and after an entry (`null`: the key was not set).
#[derive(Clone, Debug, Serialize)]
pub struct KeyChange {
    pub key: String,
    /// `flag` or `config`.
    pub kind: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// True when its schema marks the value, or a part of it, secret: redacted parts show a
    /// digest only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// One control of a control generation.
#[derive(Clone, Debug, Serialize)]
pub struct ControlRecord {
    /// `pause`, `resume` or `promote`.
    pub action: &'static str,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through_wave: Option<u32>,
}

impl From<&Control> for ControlRecord {
    fn from(control: &Control) -> Self {
        let (action, through_wave) = match control {
            Control::Pause { .. } => ("pause", None),
            Control::Resume { .. } => ("resume", None),
            Control::Promote { through_wave, .. } => ("promote", Some(*through_wave)),
        };
        ControlRecord { action, target: control.target().to_string(), through_wave }
    }
}

/// Which entries a sink has written, so that each is written once across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every generation this vector covers is written (or was compacted before it could be).
    pub through: VersionVector,
    /// Generations written beyond `through` (they arrived out of order).
    pub beyond: BTreeSet<GenId>,
    /// Targets of the reverts written.
    pub reverts: BTreeSet<GenId>,
}

impl Cursor {
    pub fn covers(&self, id: &GenId) -> bool {
        self.through.covers(id) || self.beyond.contains(id)
    }

    /// Marks a generation written, folding the ids that became contiguous into `through`.
    pub fn mark(&mut self, id: &GenId) {
        if !self.through.covers(id) {
            self.beyond.insert(id.clone());
        }
        self.settle(&id.origin.clone());
    }

    /// Counts everything `compacted` covers as done: those generations are no longer held whole,
    /// so no record of them can be written any more.
    pub fn pass(&mut self, compacted: &VersionVector) {
        self.through.merge(compacted);
        let origins: Vec<_> = compacted.iter().map(|(origin, _)| origin.clone()).collect();
        for origin in origins {
            self.settle(&origin);
        }
    }

    fn settle(&mut self, origin: &NodeName) {
        let mut next = GenId { origin: origin.clone(), seq: self.through.get(origin) + 1 };
        while self.beyond.remove(&next) {
            self.through.raise(next.origin.clone(), next.seq);
            next.seq += 1;
        }
        let through = &self.through;
        self.beyond.retain(|id| !through.covers(id));
    }
}

/// A value as it stands in the fold at some point: its write, and the schema that came with it.
#[derive(Clone, Copy)]
struct Held<'a> {
    value: &'a JsonText,
    schema: Option<&'a JsonText>,
    order: (Stamp, &'a GenId),
}

type Slot<'a> = (&'static str, &'a Key);

fn held<'a>(op: &'a Op, order: (Stamp, &'a GenId)) -> (Slot<'a>, Held<'a>) {
    let (value, schema) = match op {
        Op::SetFlag { definition, .. } => (definition, None),
        Op::PutConfig { value, schema, .. } => (value, schema.as_ref()),
    };
    ((op.kind(), op.key()), Held { value, schema, order })
}

/// The records of the generations `generations` names that `log` holds whole, in fold order, then
/// those of the reverts of `reverts`, in target order. `node` is the node writing them. Revert
/// records leave `reverted_by`, `reason` and `at` to the caller, who knows who wrote them.
pub fn records(log: &Log, node: &str, generations: &BTreeSet<GenId>, reverts: &[GenId]) -> Vec<Record> {
    let mut snapshot: Vec<_> = log.base().writes().collect();
    snapshot.sort_by(|a, b| (a.hlc, &a.generation).cmp(&(b.hlc, &b.generation)));
    let mut snapshot = snapshot.into_iter().peekable();
    let mut current: HashMap<Slot<'_>, Held<'_>> = HashMap::new();
    let mut left = generations.iter().filter(|id| log.get(id).is_some()).count();
    let mut out = Vec::new();
    for generation in log.in_fold_order() {
        if left == 0 && reverts.is_empty() {
            break;
        }
        while let Some(write) = snapshot.next_if(|w| (w.hlc, &w.generation) < generation.order_key()) {
            let (slot, value) = held(&write.op, (write.hlc, &write.generation));
            current.insert(slot, value);
        }
        if generations.contains(generation.id()) {
            out.push(generation_record(log, node, generation, &current));
            left -= 1;
        }
        if !log.is_reverted(generation.id()) {
            for op in &generation.body.change.ops {
                let (slot, value) = held(op, generation.order_key());
                current.insert(slot, value);
            }
        }
    }
    for write in snapshot {
        let (slot, value) = held(&write.op, (write.hlc, &write.generation));
        current.insert(slot, value);
    }
    out.extend(reverts.iter().map(|target| revert_record(log, node, target, &current)));
    out
}

fn generation_record(log: &Log, node: &str, generation: &Generation, before: &HashMap<Slot<'_>, Held<'_>>) -> Record {
    let body = &generation.body;
    let terms = body.terms.as_deref();
    // A proposal's changes are those it would make if enacted, against the values now.
    let change = match governance(generation) {
        Some(Governance::Propose { change, .. }) => change,
        _ => &body.change,
    };
    let proposal = match governance(generation) {
        Some(Governance::Approve { proposal, .. } | Governance::Reject { proposal, .. }) => Some(proposal),
        Some(Governance::Enact { proposal, .. }) => Some(proposal),
        Some(Governance::Propose { .. }) | None => None,
    };
    let changes = change
        .ops
        .iter()
        .map(|op| {
            let (slot, after) = held(op, generation.order_key());
            key_change(op, before.get(&slot).copied(), Some(after))
        })
        .collect();
    let kind = kind_of(generation);
    Record {
        id: body.id.to_string(),
        kind,
        node: node.to_owned(),
        hash: Some(generation.hash.to_string()),
        at: Some(rfc3339_ms(body.hlc.wall_ms)),
        at_ms: Some(body.hlc.wall_ms),
        hlc: Some(body.hlc.to_string()),
        origin: Some(body.id.origin.to_string()),
        author: body.author.as_ref().map(ToString::to_string),
        signer: body.signed.as_deref().map(Signer::of),
        approvers: terms.map_or_else(Vec::new, |terms| terms.approvals.iter().map(Signer::of).collect()),
        proposal: proposal.map(ToString::to_string),
        start_at: terms.and_then(|terms| terms.start_at_ms).map(rfc3339_ms),
        policy: matches!(kind, RecordKind::Generation | RecordKind::Proposal).then(|| change.policy.clone()),
        changes,
        controls: body.change.controls.iter().map(ControlRecord::from).collect(),
        reverted: Some(log.is_reverted(&body.id)),
        target: None,
        reverted_by: None,
        reason: None,
    }
}

/// A revert's record: per key of its target (when held whole), the value with the target (the
/// target's own when it was the latest write) and without it (the fold as it stands).
fn revert_record(log: &Log, node: &str, target: &GenId, now: &HashMap<Slot<'_>, Held<'_>>) -> Record {
    let changes = log.get(target).map_or_else(Vec::new, |generation| {
        let ops = generation.body.change.ops.iter();
        ops.map(|op| {
            let (slot, theirs) = held(op, generation.order_key());
            let after = now.get(&slot).copied();
            let before = match after {
                Some(after) if after.order > theirs.order => after,
                _ => theirs,
            };
            key_change(op, Some(before), after)
        })
        .collect()
    });
    Record {
        id: Revert::of(target).to_string(),
        kind: RecordKind::Revert,
        node: node.to_owned(),
        hash: None,
        at: None,
        at_ms: None,
        hlc: None,
        origin: None,
        author: None,
        signer: None,
        approvers: Vec::new(),
        proposal: None,
        start_at: None,
        policy: None,
        changes,
        controls: Vec::new(),
        reverted: None,
        target: Some(target.to_string()),
        reverted_by: None,
        reason: None,
    }
}

fn key_change(op: &Op, before: Option<Held<'_>>, after: Option<Held<'_>>) -> KeyChange {
    let schemas: Vec<Value> =
        [before, after].iter().flatten().filter_map(|held| held.schema).map(JsonText::to_value).collect();
    let mut secret = false;
    let mut shown = |held: Option<Held<'_>>| {
        held.map(|held| {
            let (value, redacted) = redact(op.key(), &held.value.to_value(), &schemas);
            secret |= redacted;
            value
        })
    };
    let (before, after) = (shown(before), shown(after));
    KeyChange { key: op.key().to_string(), kind: op.kind(), before, after, secret }
}

/// `value` with every part that one of `schemas` marks secret replaced by its digest; true when
/// something was redacted.
pub fn redact(key: &Key, value: &Value, schemas: &[Value]) -> (Value, bool) {
    // The parts to redact are found on the value as given, for each schema, then replaced
    // outermost first: a part redacted by one schema is not redacted again by another.
    let mut parts = Vec::new();
    for schema in schemas {
        secret_parts(value, String::new(), schema, schema, 0, &mut parts);
    }
    parts.sort_by_key(String::len);
    let mut kept: Vec<String> = Vec::new();
    for part in parts {
        let inside = |outer: &String| part == *outer || part.starts_with(&format!("{outer}/"));
        if !kept.iter().any(inside) {
            kept.push(part);
        }
    }
    let mut shown = value.clone();
    for part in &kept {
        if let (Some(slot), Some(original)) = (shown.pointer_mut(part), value.pointer(part)) {
            *slot = redacted(key, original);
        }
    }
    (shown, !kept.is_empty())
}

/// The text that stands for a secret value: a short digest of the key and the value.
pub fn redacted(key: &Key, value: &Value) -> Value {
    let mut hasher = Sha256::new();
    hasher.update(key.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_string(value).expect("a Value always serializes").as_bytes());
    let digest = hex::encode(hasher.finalize());
    Value::String(format!("<redacted sha256:{}>", &digest[..REDACTED_HEX_DIGITS]))
}

fn marks_secret(schema: &Value) -> bool {
    schema.get("writeOnly") == Some(&Value::Bool(true)) || schema.get(SECRET_KEYWORD) == Some(&Value::Bool(true))
}

/// True when a secret mark appears anywhere in `schema`.
fn mentions_secret(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => marks_secret(schema) || map.values().any(mentions_secret),
        Value::Array(items) => items.iter().any(mentions_secret),
        _ => false,
    }
}

/// The keywords the walk follows, and those that only hold definitions reached through `$ref`.
const WALKED: &[&str] =
    &["properties", "additionalProperties", "items", "prefixItems", "allOf", "anyOf", "oneOf", "$ref"];
const DEFINITIONS: &[&str] = &["$defs", "definitions"];

/// Adds to `out` the JSON pointer (below `path`) of every part of `value` that `schema` marks
/// secret. `root` is the whole schema, for `$ref`s.
fn secret_parts(value: &Value, path: String, schema: &Value, root: &Value, depth: usize, out: &mut Vec<String>) {
    let Value::Object(map) = schema else { return };
    let deep = depth >= MAX_SCHEMA_DEPTH;
    // A secret under a keyword the walk does not place (or too deep to follow) redacts the
    // whole value around it.
    let unplaced = map.iter().any(|(k, sub)| {
        (deep || !WALKED.contains(&k.as_str())) && !DEFINITIONS.contains(&k.as_str()) && mentions_secret(sub)
    });
    if marks_secret(schema) || unplaced {
        out.push(path);
        return;
    }
    if deep {
        return;
    }
    let mut walk = |value: &Value, path: String, sub: &Value| secret_parts(value, path, sub, root, depth + 1, out);
    if let Some(target) =
        map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')).and_then(|p| root.pointer(p))
    {
        // A reference the walk cannot follow cannot hide a secret it knows of.
        walk(value, path.clone(), target);
    }
    for keyword in ["allOf", "anyOf", "oneOf"] {
        for sub in map.get(keyword).and_then(Value::as_array).into_iter().flatten() {
            walk(value, path.clone(), sub);
        }
    }
    let below = |name: &str| format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
    if let Value::Object(fields) = value {
        let properties = map.get("properties").and_then(Value::as_object);
        for (name, field) in fields {
            match (properties.and_then(|p| p.get(name)), map.get("additionalProperties")) {
                (Some(sub), _) | (None, Some(sub)) => walk(field, below(name), sub),
                (None, None) => {}
            }
        }
    }
    if let Value::Array(items) = value {
        let positional = map.get("prefixItems").or_else(|| map.get("items")).and_then(Value::as_array);
        for (index, item) in items.iter().enumerate() {
            match (positional.and_then(|schemas| schemas.get(index)), map.get("items")) {
                (Some(sub), _) => walk(item, below(&index.to_string()), sub),
                (None, Some(sub)) if sub.is_object() => walk(item, below(&index.to_string()), sub),
                _ => {}
            }
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339_ms(ms: u64) -> String {
    let (seconds, millis) = (ms / 1000, ms % 1000);
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests;
