//! The CLI's client side: requests to a node's HTTP API and how their answers are printed.
//!
//! Input the node would refuse is checked here first where that is cheap (JSON syntax, size),
//! with the same messages, so a bad value never leaves the machine; the node checks again.
//!
//! `Client` holds a `Connection` and `REQUEST_TIMEOUT`, made from the command's `args::ClientArgs`;
//! `with_client` runs a command with one on a runtime of its own (`runtime`). `CliError` is
//! `Refused`, `Failed`, `Usage` or `Unreachable` (exit codes 1, 1, 2, 3; clap's own usage errors
//! also exit 2).
//!
//! - One function per client command: `flag_set`, `flag_get`, `config_put`, `config_get`, `apply`,
//!   `status` and `backup` (`Client::download`: streams the body to `FILE.partial`, fsyncs,
//!   renames; never overwrites); those on rollouts and the log (`rollout status`, `history`,
//!   `rollback`, ...) are in `rollouts.rs`, and proposals in `proposals.rs`. Each formats the
//!   command's text and `--json` output. `refusal` maps a non-2xx answer to the `CliError` of its
//!   exit code. `report_accepted` prints an accepted change, or a dry run's id, diff (values cut
//!   at `DIFF_VALUE_CHARS`, 160) and waves. `flag_get` and `config_get` add `?desired=true` for
//!   `--desired` (`read_query`); `status` shows the number of reverts held.
//! - Answers are read into the reply types of `replies`, the ones the node answers with,
//!   through `Client::request_as`, which returns an `Answer`: the reply, and the JSON as the node
//!   sent it, which `--json` prints.
//! - `flag_set` and `config_put` always send `wait_replicas` and `timeout_ms`, plus the policy
//!   options given (`ChangeArgs::query`, through `Client::request_with`).
//! - `key_path` checks a key and puts it in the URL as one path segment, `/` encoded as `%2F`. JSON
//!   given on the command line is checked with `JsonText::try_from`, which gives the same messages
//!   the node would.
//! - `Client::request_with` turns an error answer into a message: the JSON `error` field, else the
//!   plain-text body (axum's own 413 and 400 rejections), else `the node answered <status>` (axum's
//!   empty 405). 4xx becomes `Refused` (413 prefixed `request body is larger than the node accepts:
//!   `), 504 `Failed` with the node's message as is (the change is durable; the wait for replicas
//!   timed out), any other 5xx `Failed` (`node error (<status>): ...`), and a transport error
//!   `Unreachable`.
//! - `Client::change` is the change request of every command: with a signer, `?prepare=true`, sign,
//!   `POST /v1/changes` (see `signing.rs`); `revoke_key` serves `key revoke`.

use std::path::Path;
use std::time::Duration;

use grapevine_proto::{Author, JsonText, NodeName};

use crate::api::AUTHOR_HEADER;
use crate::replies::{ChangeReply, ConfigValue, DryRun, ErrorReply, FlagEvaluation};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod args;
mod connection;
pub mod credentials;
pub mod proposals;
mod rollouts;
pub mod signing;
mod status;
pub mod wait;
use args::{ChangeArgs, ClientArgs};
use connection::Connection;
pub use rollouts::{history, history_records, rollback, rollout_control, rollout_status};
pub use signing::{FlagIntent, Intent, StartIntent};
pub use status::status;

/// How long the CLI waits for a node to answer. A change is acknowledged once durable on the
/// node, which takes milliseconds; anything near this means the node is unwell.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed command, by exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The request was refused: validation, conflict or not found (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The node or the command failed in a way that is not the user's input (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The node could not be reached (exit 3).
    #[error("{0}")]
    Unreachable(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) | CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
        }
    }
}

/// A runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

/// Runs `f` with a client of the node `args` name, on a runtime of its own.
pub fn with_client<F, Fut>(args: &ClientArgs, f: F) -> Result<(), CliError>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let client = Client::new(args)?;
    runtime()?.block_on(f(client))
}

/// A connection to one node's API.
pub struct Client {
    connection: Connection,
    pub json: bool,
    /// The operator key file that signs this invocation's changes, if one is configured.
    pub(crate) signing_key: Option<std::path::PathBuf>,
}

/// `$USER@HOSTNAME` (the account's name without `$USER`), with characters an author may not hold replaced by `_`, cut to the limit.
fn default_author() -> Author {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| {
        // SAFETY: getuid cannot fail and touches no memory of ours.
        crate::auth::user_name(unsafe { libc::getuid() })
    });
    let mut host = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let host = if unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0 {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "unknown".into()
    };
    Author::lossy(&format!("{user}@{host}"))
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client, CliError> {
        Client::with_timeout(args, REQUEST_TIMEOUT)
    }

    /// A client whose requests may take `timeout` (a change that waits for replicas).
    pub fn with_timeout(args: &ClientArgs, timeout: Duration) -> Result<Client, CliError> {
        let author = match &args.author {
            Some(author) => author.parse::<Author>().map_err(|e| CliError::Usage(format!("--author: {e}")))?,
            None => default_author(),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        let author = reqwest::header::HeaderValue::from_str(author.as_str()).expect("an author is printable ASCII");
        headers.insert(AUTHOR_HEADER, author);
        let mut connection = Connection::open(&args.node, headers, timeout.max(REQUEST_TIMEOUT))?;
        // The admin socket needs no token: its file permissions decided who got this far.
        let token = match connection.is_socket() {
            true => None,
            false => credentials::token_for(args.token.as_deref(), &connection.base)?,
        };
        if let Some(token) = token {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| CliError::Usage("the token holds characters a header cannot carry".into()))?;
            connection.add_header(reqwest::header::AUTHORIZATION, value);
        }
        let signing_key = signing::key_file_for(args.signing_key.as_deref());
        Ok(Client { connection, json: args.json, signing_key })
    }

    /// Sends a change request. With an operator key, the node prepares the change, the CLI
    /// checks it against `intent`, signs it, and sends it back to be stored as signed.
    pub(crate) async fn change(
        &self,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<Value>,
        intent: &Intent,
    ) -> Result<Answer<ChangeReply>, CliError> {
        let dry_run = query.iter().any(|(name, value)| *name == "dry_run" && value == "true");
        let Some(key_file) = self.signing_key.as_deref().filter(|_| !dry_run) else {
            return self.request_as(Method::POST, path, query, body).await;
        };
        let signer = signing::KeyFile::read(key_file)?.signer()?;
        let prepared = self.prepare(path, query, body).await?;
        let preview = match prepared.reply {
            ChangeReply::DryRun(preview) => preview,
            // Nothing to change (`apply` of flags that are already the latest).
            ChangeReply::Unchanged(_) => return Ok(prepared),
            ChangeReply::Accepted(_) => return Err(nothing_to_sign(&prepared.raw)),
        };
        let sign = preview.sign.as_ref().ok_or_else(|| nothing_to_sign(&prepared.raw))?;
        let signed = signer.sign(sign, intent)?;
        let wait: Vec<(&str, String)> =
            query.iter().filter(|(name, _)| matches!(*name, "wait_replicas" | "timeout_ms")).cloned().collect();
        let mut answer: Answer<ChangeReply> = self.request_as(Method::POST, "/v1/changes", &wait, Some(signed)).await?;
        if let (Some(changed), ChangeReply::Accepted(accepted)) = (preview.changed, &mut answer.reply) {
            accepted.changed = Some(changed);
            answer.raw["changed"] = changed.into();
        }
        Ok(answer)
    }

    /// `?prepare=true` on a change request: what the node would store, and what to sign.
    pub(crate) async fn prepare(
        &self,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<Value>,
    ) -> Result<Answer<ChangeReply>, CliError> {
        let mut prepare = query.to_vec();
        prepare.push(("prepare", "true".to_owned()));
        self.request_as(Method::POST, path, &prepare, body).await
    }

    /// The node this client talks to (`http://...` or `unix:...`).
    pub fn base(&self) -> &str {
        &self.connection.base
    }

    /// A request whose answer is read as the reply `T`, and kept as sent for `--json`.
    pub(crate) async fn request_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Answer<T>, CliError> {
        Answer::read(self.request_with(method, path, query, body).await?)
    }

    pub(crate) async fn request_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let query = serde_urlencoded::to_string(query).expect("pairs of strings always encode");
        let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let body = body.map(|body| serde_json::to_vec(&body).expect("a Value always serializes"));
        let reply = self.connection.send(method, &path_and_query, body).await?;
        let status = reply.status;
        let text = reply.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(status, &value))
    }

    /// A request whose answer is read whatever its status, when it is JSON (`/readyz` answers
    /// 503 with the reasons it is not ready).
    async fn request_raw(&self, method: Method, path: &str) -> Result<Value, CliError> {
        let reply = self.connection.send(method, path, None).await?;
        let status = reply.status;
        let text = reply.text().await?;
        match serde_json::from_str::<Value>(&text) {
            Ok(value) if value.is_object() => Ok(value),
            _ => Err(refusal(status, &Value::String(text))),
        }
    }

    /// `GET path`, saved to `out` as it streams: through `out.partial`, renamed once whole, so
    /// `out` never holds half a file. Returns the bytes written.
    async fn download(&self, path: &str, out: &Path) -> Result<u64, CliError> {
        use tokio::io::AsyncWriteExt;
        if out.exists() {
            return Err(CliError::Usage(format!("{} already exists: name a new file", out.display())));
        }
        let mut reply = self.connection.send(Method::GET, path, None).await?;
        if !reply.status.is_success() {
            let status = reply.status;
            let text = reply.text().await.unwrap_or_default();
            return Err(refusal(status, &serde_json::from_str(&text).unwrap_or(Value::String(text))));
        }
        let partial = out.with_extension("partial");
        let cannot = |e: std::io::Error| CliError::Failed(format!("cannot write {}: {e}", partial.display()));
        // A backup holds every value in the clear: the owner's alone, whatever the umask.
        let mut file = tokio::fs::File::from_std(crate::private::create_file(&partial).map_err(cannot)?);
        let mut written = 0;
        while let Some(chunk) = reply.chunk().await? {
            file.write_all(&chunk).await.map_err(cannot)?;
            written += chunk.len() as u64;
        }
        file.sync_all().await.map_err(cannot)?;
        tokio::fs::rename(&partial, out).await.map_err(cannot)?;
        Ok(written)
    }
}

/// A node's answer: read as its reply type `T`, and as sent, which `--json` prints (so a
/// newer node's extra fields show, in the node's order).
pub(crate) struct Answer<T> {
    pub reply: T,
    pub raw: Value,
}

impl<T: DeserializeOwned> Answer<T> {
    /// Reads `raw` as `T`; an answer of another shape (a node of another version) fails, saying so.
    pub(crate) fn read(raw: Value) -> Result<Answer<T>, CliError> {
        match T::deserialize(&raw) {
            Ok(reply) => Ok(Answer { reply, raw }),
            Err(error) => Err(CliError::Failed(format!(
                "the node's answer is not the {} this CLI reads ({error}): {raw}",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("reply")
            ))),
        }
    }
}

/// A change prepared without what to sign: a node that does not know `?prepare=true`.
fn nothing_to_sign(prepared: &Value) -> CliError {
    CliError::Refused(format!("not signed: the node's answer holds nothing to sign: {prepared}"))
}

/// The error a non-2xx answer stands for.
fn refusal(status: StatusCode, value: &Value) -> CliError {
    let message = match (ErrorReply::deserialize(value), value.as_str()) {
        (Ok(ErrorReply { error }), _) => error,
        (Err(_), Some(text)) if !text.trim().is_empty() => text.trim().to_owned(),
        (Err(_), Some(_)) => format!("the node answered {status}"),
        (Err(_), None) => value.to_string(),
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return CliError::Refused(format!("request body is larger than the node accepts: {message}"));
    }
    if status == StatusCode::GATEWAY_TIMEOUT {
        // The change is accepted and durable; what timed out is the wait for replicas.
        return CliError::Failed(message);
    }
    if status.is_client_error() {
        CliError::Refused(message)
    } else {
        CliError::Failed(format!("node error ({status}): {message}"))
    }
}

/// Parses JSON given on the command line, refusing empty, invalid or oversized input.
pub fn parse_json_value(text: &str, origin: &str) -> Result<Value, CliError> {
    let checked = JsonText::try_from(text.to_owned()).map_err(|e| CliError::Refused(format!("{origin}: {e}")))?;
    Ok(checked.to_value())
}

/// Reads a JSON file; a file that cannot be read is a usage error, bad content a refusal.
pub fn read_json_file(path: &Path) -> Result<Value, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    parse_json_value(&text, &path.display().to_string())
}

/// Parses `--context`: a JSON object.
pub fn parse_context(text: &str) -> Result<Value, CliError> {
    let value = parse_json_value(text, "--context")?;
    if !value.is_object() {
        return Err(CliError::Refused(format!("--context: expected a JSON object, got {value}")));
    }
    Ok(value)
}

pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("a Value always serializes"));
}

/// A key as one URL path segment: keys may hold `/`, which must not split the path.
fn key_path(key: &str) -> Result<String, CliError> {
    key.parse::<grapevine_proto::Key>().map_err(|e| CliError::Refused(e.to_string()))?;
    Ok(key.replace('/', "%2F"))
}

/// A change request as every change command sends it: where, what, and what the operator asked
/// for (checked before signing what the node prepared).
pub struct ChangeRequest {
    pub path: String,
    pub body: Value,
    pub intent: Intent,
    /// What it changes, for messages: `flag beta`, `config limits`, `3 flags`.
    pub what: String,
}

/// The request of `flag set KEY` with `request` (`{"on"}`, `{"variant"}` or `{"definition"}`).
pub fn flag_request(key: &str, request: Value) -> Result<ChangeRequest, CliError> {
    let path = format!("/v1/flags/{}", key_path(key)?);
    let expected = match (request["on"].as_bool(), request["variant"].as_str()) {
        (Some(on), _) => FlagIntent::Serving { variant: if on { "on" } else { "off" }.into(), enabled: true },
        (None, Some(variant)) => FlagIntent::Serving { variant: variant.to_owned(), enabled: false },
        (None, None) => FlagIntent::Definition(request["definition"].clone()),
    };
    let intent = Intent { keys: [key.to_owned()].into(), flags: vec![(key.to_owned(), expected)], ..Intent::default() };
    Ok(ChangeRequest { path, body: request, intent, what: format!("flag {key}") })
}

/// The request of `config put KEY`.
pub fn config_request(key: &str, value: Value, schema: Option<Value>) -> Result<ChangeRequest, CliError> {
    let mut body = serde_json::json!({ "value": value });
    if let Some(schema) = schema {
        body["schema"] = schema;
    }
    let path = format!("/v1/config/{}", key_path(key)?);
    let intent = Intent { keys: [key.to_owned()].into(), values: vec![(key.to_owned(), value)], ..Intent::default() };
    Ok(ChangeRequest { path, body, intent, what: format!("config {key}") })
}

/// The request of `apply FILE`.
pub fn apply_request(flags: Value) -> ChangeRequest {
    let names: std::collections::BTreeSet<String> =
        flags["flags"].as_object().into_iter().flatten().map(|(name, _)| name.clone()).collect();
    let what = format!("{} flags", names.len());
    ChangeRequest {
        path: "/v1/apply".to_owned(),
        body: flags,
        intent: Intent { keys: names, ..Intent::default() },
        what,
    }
}

pub async fn flag_set(client: &Client, mut request: ChangeRequest, change: &ChangeArgs) -> Result<(), CliError> {
    request.intent.start = change.start_intent()?;
    let answer = client.change(&request.path, &change.query(), Some(request.body), &request.intent).await?;
    report_accepted(client, &request.what, &answer);
    Ok(())
}

pub async fn config_put(client: &Client, mut request: ChangeRequest, change: &ChangeArgs) -> Result<(), CliError> {
    request.intent.start = change.start_intent()?;
    let answer = client.change(&request.path, &change.query(), Some(request.body), &request.intent).await?;
    report_accepted(client, &request.what, &answer);
    Ok(())
}

/// `apply FILE`.
pub async fn apply(client: &Client, mut request: ChangeRequest, change: &ChangeArgs) -> Result<(), CliError> {
    request.intent.start = change.start_intent()?;
    let answer = client.change(&request.path, &change.query(), Some(request.body), &request.intent).await?;
    let changed = answer.reply.changed().unwrap_or_default();
    report_accepted(client, &format!("{changed} flags"), &answer);
    Ok(())
}

/// At most this much of a value is printed in a dry run's diff.
const DIFF_VALUE_CHARS: usize = 160;

pub(crate) fn report_accepted(client: &Client, what: &str, answer: &Answer<ChangeReply>) {
    if client.json {
        print_json(&answer.raw);
        return;
    }
    match &answer.reply {
        ChangeReply::DryRun(dry_run) => report_dry_run(what, dry_run),
        ChangeReply::Accepted(accepted) => {
            let replicas = accepted.replicas.unwrap_or(0);
            let also = if replicas > 0 { format!(" and on {replicas} other nodes") } else { String::new() };
            let generation = &accepted.generation;
            println!("{what} accepted as generation {generation} (durable on {}{also})", client.base());
            if let Some(start) = &accepted.start_at {
                println!("scheduled: its first wave opens at {start} (cancel before then with `grapevine rollback`)");
            }
        }
        ChangeReply::Unchanged(unchanged) => println!("{}", unchanged.message),
    }
}

fn report_dry_run(what: &str, dry_run: &DryRun) {
    println!("dry run: {what} would be generation {}; nothing was changed", dry_run.generation);
    let short = |value: &Value| {
        let text = value.to_string();
        if text.chars().count() > DIFF_VALUE_CHARS {
            format!("{}...", text.chars().take(DIFF_VALUE_CHARS).collect::<String>())
        } else {
            text
        }
    };
    for entry in &dry_run.diff {
        let before = entry.before.as_ref().map_or("(new)".to_owned(), short);
        println!("  {} {}: {before} -> {}", entry.kind, entry.key, short(&entry.after));
    }
    for (index, wave) in dry_run.waves.iter().enumerate() {
        let members: Vec<&str> = wave.iter().map(NodeName::as_str).collect();
        println!("  wave {index}: {}", members.join(", "));
    }
    if let Some(start) = &dry_run.start_at {
        println!("  first wave opens at {start}");
    }
}

fn read_query(desired: bool) -> Vec<(&'static str, String)> {
    if desired { vec![("desired", "true".to_owned())] } else { Vec::new() }
}

pub async fn flag_get(client: &Client, key: &str, context: Option<Value>, desired: bool) -> Result<(), CliError> {
    let body = serde_json::json!({ "context": context.unwrap_or_else(|| serde_json::json!({})) });
    let path = format!("/v1/flags/{}/evaluate", key_path(key)?);
    let answer: Answer<FlagEvaluation> =
        client.request_as(Method::POST, &path, &read_query(desired), Some(body)).await?;
    let FlagEvaluation { key, value, variant, reason, generation, .. } = answer.reply;
    let value = value.unwrap_or(Value::Null);
    // Its OpenFeature name, `TARGETING_MATCH`.
    let reason = serde_json::to_value(reason).expect("a reason always serializes");
    if client.json {
        print_json(
            &serde_json::json!({"key": key, "value": value, "variant": variant, "reason": reason, "generation": generation}),
        );
    } else {
        let variant = variant.as_deref().unwrap_or("-");
        let reason = reason.as_str().unwrap_or("-");
        println!("{key} = {value}  (variant {variant}, reason {reason}, generation {generation})");
    }
    Ok(())
}

pub async fn config_get(client: &Client, key: &str, desired: bool) -> Result<(), CliError> {
    let path = format!("/v1/config/{}", key_path(key)?);
    let answer: Answer<ConfigValue> = client.request_as(Method::GET, &path, &read_query(desired), None).await?;
    if client.json {
        print_json(&answer.raw);
    } else {
        print_json(&answer.reply.value);
        eprintln!("(generation {})", answer.reply.generation);
    }
    Ok(())
}

/// `backup --out FILE`: a consistent copy of the node's store.
pub async fn backup(client: &Client, out: &Path) -> Result<(), CliError> {
    let bytes = client.download("/v1/backup", out).await?;
    if client.json {
        print_json(&serde_json::json!({"file": out, "bytes": bytes, "node": client.base()}));
    } else {
        println!("wrote {} ({bytes} bytes): the store of the node at {}", out.display(), client.base());
        println!("to restore: stop that node, put the file in place of DATA/grapevine.redb, start it");
    }
    Ok(())
}

/// `key revoke KEY`: a signed write of the key's revocation, applied everywhere at once.
pub async fn revoke_key(client: &Client, public: &str, reason: Option<String>) -> Result<(), CliError> {
    if client.signing_key.is_none() {
        return Err(CliError::Usage("a revocation is a signed change: give your key with --signing-key".into()));
    }
    let (key, value) = signing::revocation(public, reason)?;
    let path = format!("/v1/config/{}", key_path(&key)?);
    let intent = Intent { keys: [key.clone()].into(), values: vec![(key.clone(), value.clone())], ..Intent::default() };
    let query = [("emergency", "true".to_owned())];
    let answer = client.change(&path, &query, Some(serde_json::json!({ "value": value })), &intent).await?;
    report_accepted(client, &format!("the revocation of {public}"), &answer);
    Ok(())
}
