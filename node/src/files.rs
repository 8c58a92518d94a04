//! Files on the host: config keys rendered to files, checked, swapped in atomically and
//! reloaded, with a last-known-good fallback.
//!
//! Each `[[files]]` entry of the node config maps one config key (`key`) or every key under a
//! prefix (`prefix`, rendered as an object keyed by the rest of each key) to a file, in a format
//! (`raw`, `json`, `yaml`, `toml`, `env`). Whenever the applied value changes:
//!
//! 1. render it; empty output where the file was not empty is refused unless `allow_empty`;
//! 2. write it to a temp file in the same directory and fsync it;
//! 3. run `check` (with `{path}` replaced by the temp file); on failure the temp file goes;
//! 4. rename the temp file over the file (atomic: readers see the whole old or the whole new
//!    file, even if the node dies mid-render) and fsync the directory;
//! 5. run `reload`; on failure the last-known-good content is put back the same way and
//!    `reload` runs again.
//!
//! Every command runs with a timeout and is killed past it. A refusal, a failed check or a
//! failed reload is an apply failure of the generation that set the value: it is judged
//! anomalous at once on this node (`Health::apply_failed`), which the anomaly quorum may turn
//! into a revert. The last-known-good content is kept in the data directory, so it survives a
//! restart.
//!
//! The types: `FileConfig` (`[[files]]`: `path`, `key` or `prefix`, `format`, `check`, `reload`,
//! `timeout_ms`, `allow_empty`), `Format`, `render`, `FileStatus`, `Files` (the statuses `GET
//! /v1/status` shows), `FilesTask`, `run` and `DEFAULT_COMMAND_TIMEOUT` (10 s; `timeout_ms`
//! 1..=600000).
//!
//! - `run` renders every file at start and on each new view of the engine (`sync_file`): the value
//!   of the key, or an object of the keys under the prefix, from the applied state, with the newest
//!   generation behind it. Content the file and the last-known-good copy already hold is skipped;
//!   content that failed is not tried again until it changes.
//! - `install` does the steps above in the file's directory opened once (`Directory`): the temp file
//!   `.NAME.<random>.grapevine-tmp` is created with `openat` (`O_EXCL | O_NOFOLLOW`) and
//!   `Temp::swap_in` renames it with `renameat` and fsyncs the directory.
//! - Each outcome is counted in `grapevine_file_renders_total` and noted in `Files`. A success
//!   writes the last-known-good copy, `DATA/files/<digest>.lkg` (`write_lkg`), read back at start.
//! - `run_command` runs an argv with `{path}` replaced, no input, stderr kept for the error, and
//!   kills it past the timeout.
//!
//! **Architecture Invariant:** a file on disk is always the whole old content or the whole new. New
//! content only reaches the file by `rename` of a complete, fsynced temp file in the same
//! directory, and a restore after a failed reload takes the same path (test
//! `a_node_killed_mid_render_leaves_the_whole_old_file`).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grapevine_proto::{AppliedState, GenId, Key};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::command::Outcome;
use crate::engine::EngineHandle;
use crate::health::Health;
use crate::metrics::{Metrics, reason};

/// How long `check` and `reload` may run unless the entry says otherwise.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The format a file is rendered in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON string as its text; any other value as JSON.
    Raw,
    #[default]
    Json,
    Yaml,
    Toml,
    /// An object of scalars as `NAME=value` lines.
    Env,
}

/// One `[[files]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    /// The config key rendered to the file...
    pub key: Option<String>,
    /// ...or every key under this prefix, as an object keyed by the rest of each key.
    pub prefix: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Run against the new file before it replaces the old; `{path}` is the new file.
    #[serde(default)]
    pub check: Vec<String>,
    /// Run after the new file is in place.
    #[serde(default)]
    pub reload: Vec<String>,
    /// How long each command may run, in milliseconds [default: 10000].
    pub timeout_ms: Option<u64>,
    /// Whether empty output may replace a file that is not empty [default: false].
    #[serde(default)]
    pub allow_empty: bool,
    /// Whether the file may be rendered in a directory every user may write to
    /// [default: false]: there another user could replace the file after the check.
    #[serde(default)]
    pub allow_shared_directory: bool,
}

impl FileConfig {
    pub fn validate(&self) -> Result<(), String> {
        let path = self.path.display();
        match (&self.key, &self.prefix) {
            (Some(key), None) => {
                key.parse::<Key>().map_err(|e| format!("file {path}: key: {e}"))?;
            }
            (None, Some(_)) => {}
            _ => return Err(format!("file {path}: expected exactly one of `key` and `prefix`")),
        }
        if !self.path.is_absolute() || self.path.file_name().is_none() {
            return Err(format!("file {path}: expected an absolute path to a file"));
        }
        if self.timeout_ms.is_some_and(|t| !(1..=600_000).contains(&t)) {
            return Err(format!("file {path}: timeout_ms must be from 1 to 600000"));
        }
        Ok(())
    }

    /// Refuses a path inside one of the node's own directories (`(what, dir)`): rendering
    /// there would overwrite the store or the node's certificates.
    pub fn validate_outside(&self, own: &[(&str, &Path)]) -> Result<(), String> {
        let path = resolved(&self.path);
        for (what, dir) in own {
            let dir = resolved(dir);
            if path.starts_with(&dir) {
                return Err(format!(
                    "file {}: expected a path outside the node's {what} {}, which the node owns",
                    self.path.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        self.timeout_ms.map_or(DEFAULT_COMMAND_TIMEOUT, Duration::from_millis)
    }

    /// The value this entry renders from `state`, and the newest generation behind it; `None`
    /// when no key of it is set.
    fn source(&self, state: &AppliedState) -> Option<(Value, GenId)> {
        match (&self.key, &self.prefix) {
            (Some(key), _) => {
                let entry = state.config.get(&key.parse::<Key>().ok()?)?;
                Some((entry.value.to_value(), entry.generation.clone()))
            }
            (None, Some(prefix)) => {
                let mut object = serde_json::Map::new();
                let mut newest: Option<(grapevine_proto::Stamp, GenId)> = None;
                for (key, entry) in state.config.iter().filter(|(k, _)| k.as_str().starts_with(prefix.as_str())) {
                    object.insert(key.as_str()[prefix.len()..].to_owned(), entry.value.to_value());
                    if newest.as_ref().is_none_or(|(hlc, _)| entry.hlc > *hlc) {
                        newest = Some((entry.hlc, entry.generation.clone()));
                    }
                }
                newest.map(|(_, generation)| (Value::Object(object), generation))
            }
            (None, None) => None,
        }
    }
}

/// Renders `value` in `format`.
pub fn render(value: &Value, format: Format) -> Result<Vec<u8>, String> {
    match format {
        Format::Raw => Ok(match value {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
            text.push('\n');
            Ok(text.into_bytes())
        }
        Format::Yaml => serde_yaml_ng::to_string(&plain(value)?).map(String::into_bytes).map_err(|e| e.to_string()),
        Format::Toml => {
            let table = toml::Value::try_from(plain(value)?).map_err(|e| e.to_string())?;
            if !table.is_table() {
                return Err(format!("toml needs an object at the top, got {value}"));
            }
            toml::to_string(&table).map(String::into_bytes).map_err(|e| e.to_string())
        }
        Format::Env => {
            let object = value.as_object().ok_or_else(|| format!("env needs an object of scalars, got {value}"))?;
            let mut out = String::new();
            for (name, value) in object {
                let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
                if !starts_well || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "env: {name:?} is not a variable name (a letter or _, then letters, digits or _)"
                    ));
                }
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(_) | Value::Bool(_) => value.to_string(),
                    other => return Err(format!("env: {name} must be a string, number or boolean, got {other}")),
                };
                // A reader of the file splits lines on more than \n (CR, NUL, U+2028 in some):
                // such a value could smuggle a second variable in.
                if let Some(bad) =
                    text.chars().find(|&c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}')
                {
                    return Err(format!("env: {name} holds the control or line-separator character {bad:?}"));
                }
                out.push_str(&format!("{name}={text}\n"));
            }
            Ok(out.into_bytes())
        }
    }
}

/// A JSON value with plain numbers, for serializers other than serde_json's (which would see
/// `arbitrary_precision`'s private number form).
#[derive(Serialize)]
#[serde(untagged)]
enum Plain {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    List(Vec<Plain>),
    Map(BTreeMap<String, Plain>),
}

fn plain(value: &Value) -> Result<Plain, String> {
    Ok(match value {
        Value::Null => Plain::Null,
        Value::Bool(flag) => Plain::Bool(*flag),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(int), _) => Plain::Int(int),
            (None, Some(uint)) => Plain::UInt(uint),
            _ => Plain::Float(exact_float(&number.to_string())?),
        },
        Value::String(text) => Plain::Text(text.clone()),
        Value::Array(items) => Plain::List(items.iter().map(plain).collect::<Result<_, _>>()?),
        Value::Object(object) => {
            Plain::Map(object.iter().map(|(k, v)| Ok((k.clone(), plain(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

/// The number `text` as a float, if a float holds it exactly enough to write it back as the
/// same decimal number; yaml and toml writers would otherwise change it silently
/// (`12345678901234567890123456789` would become `1.2345678901234568e28`).
fn exact_float(text: &str) -> Result<f64, String> {
    let float: f64 = text.parse().map_err(|_| format!("expected a number, got {text}"))?;
    if float.is_finite() && decimal(&format!("{float:e}")) == decimal(text) {
        return Ok(float);
    }
    Err(format!(
        "the number {text} has more digits than yaml and toml keep (a 64-bit float or integer); \
         send it as a string, or render this key as json or raw"
    ))
}

/// A decimal number's sign, significant digits and the position of its point, so that two
/// spellings of one number (`1.50`, `15e-1`) compare equal.
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, text) = text.strip_prefix('-').map_or((false, text), |rest| (true, rest));
    let (mantissa, exponent) = text.split_once(['e', 'E']).unwrap_or((text, "0"));
    let exponent: i64 = exponent.trim_start_matches('+').parse().unwrap_or(0);
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{integer}{fraction}");
    let leading = digits.len() - digits.trim_start_matches('0').len();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').to_owned();
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    (negative, significant, integer.len() as i64 + exponent - leading as i64)
}

/// The last outcome of one file, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    pub path: PathBuf,
    pub generation: Option<String>,
    pub ok: bool,
    pub detail: String,
}

/// The files of a node and their last outcomes; cheap to clone.
#[derive(Clone, Default)]
pub struct Files {
    statuses: Arc<Mutex<BTreeMap<PathBuf, FileStatus>>>,
}

impl Files {
    pub fn statuses(&self) -> Vec<FileStatus> {
        self.statuses.lock().expect("files lock poisoned").values().cloned().collect()
    }

    fn note(&self, status: FileStatus) {
        self.statuses.lock().expect("files lock poisoned").insert(status.path.clone(), status);
    }
}

/// What the files task needs.
pub struct FilesTask {
    pub files: Vec<FileConfig>,
    pub engine: EngineHandle,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub data: PathBuf,
    pub statuses: Files,
}

/// Renders every file on each applied change, until shutdown.
pub async fn run(task: FilesTask, shutdown: CancellationToken) {
    if task.files.is_empty() {
        return;
    }
    let mut views = task.engine.watch();
    // What each file holds as far as this task knows (the last-known-good, from disk at start).
    let mut good: Vec<Option<Vec<u8>>> = task.files.iter().map(|file| read_lkg(&task.data, &file.path)).collect();
    let mut failed: Vec<Option<Vec<u8>>> = vec![None; task.files.len()];
    loop {
        let view = views.borrow_and_update().clone();
        // A node recovering from a damaged store holds nothing it can vouch for: its files
        // stay as they are until it has caught up with its peers.
        if view.recovering.is_none() {
            for ((file, good), failed) in task.files.iter().zip(good.iter_mut()).zip(failed.iter_mut()) {
                sync_file(&task, file, &view.state, good, failed).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = views.changed() => if changed.is_err() { return },
        }
    }
}

/// Brings one file to the applied value, if it changed.
async fn sync_file(
    task: &FilesTask,
    file: &FileConfig,
    state: &AppliedState,
    good: &mut Option<Vec<u8>>,
    failed: &mut Option<Vec<u8>>,
) {
    let Some((value, generation)) = file.source(state) else {
        // The key has no applied value any more (its only value was reverted): a file this
        // node rendered goes, as before that value; a file it never rendered stays.
        if good.is_some() {
            remove(task, file, good, failed).await;
        }
        return;
    };
    let outcome = match render(&value, file.format) {
        Err(error) => Err(("render_failed", format!("cannot render {}: {error}", file.path.display()))),
        Ok(bytes) if good.as_deref() == Some(bytes.as_slice()) && on_disk(&file.path) == Some(bytes.clone()) => return,
        // Content that failed is not tried again until the value changes.
        Ok(bytes) if failed.as_deref() == Some(bytes.as_slice()) => return,
        Ok(bytes) => match install(file, &bytes, good.as_deref()).await {
            Ok(()) => Ok(bytes),
            Err(error) => {
                *failed = Some(bytes);
                Err(error)
            }
        },
    };
    let path = file.path.clone();
    match outcome {
        Ok(bytes) => {
            task.metrics.file_renders.get_or_create(&reason("ok")).inc();
            info!(generation = %generation, path = %path.display(), "rendered file");
            write_lkg(&task.data, &path, &bytes);
            *good = Some(bytes);
            *failed = None;
            task.statuses.note(FileStatus {
                path,
                generation: Some(generation.to_string()),
                ok: true,
                detail: "rendered".into(),
            });
        }
        Err((outcome, detail)) => {
            task.metrics.file_renders.get_or_create(&reason(outcome)).inc();
            warn!(generation = %generation, path = %path.display(), %detail, "file not applied; last-known-good kept");
            task.health.apply_failed(&generation, detail.clone());
            task.statuses.note(FileStatus { path, generation: Some(generation.to_string()), ok: false, detail });
        }
    }
}

/// Removes a rendered file whose key has no applied value, and its last-known-good copy, then
/// runs the reload command.
async fn remove(task: &FilesTask, file: &FileConfig, good: &mut Option<Vec<u8>>, failed: &mut Option<Vec<u8>>) {
    let path = file.path.clone();
    *failed = None;
    let removed = match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot remove it: {error}")),
        _ => Ok(()),
    };
    let outcome = match removed {
        Ok(()) => {
            *good = None;
            let _ = std::fs::remove_file(lkg_path(&task.data, &path));
            if file.reload.is_empty() {
                Ok(())
            } else {
                run_command(&file.reload, &path, file.timeout()).await.map_err(|e| format!("reload failed: {e}"))
            }
        }
        Err(error) => Err(error),
    };
    let detail = match &outcome {
        Ok(()) => "removed: the key has no applied value".to_owned(),
        Err(error) => format!("the key has no applied value; {error}"),
    };
    match outcome {
        Ok(()) => {
            task.metrics.file_renders.get_or_create(&reason("removed")).inc();
            info!(path = %path.display(), "removed file: its key has no applied value");
        }
        Err(_) => {
            task.metrics.file_renders.get_or_create(&reason("remove_failed")).inc();
            warn!(path = %path.display(), %detail, "file not removed");
        }
    }
    task.statuses.note(FileStatus { path, generation: None, ok: outcome.is_ok(), detail });
}

fn on_disk(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// Steps 1 to 5 for new content; on failure, the file holds `previous` again (or what it held).
async fn install(file: &FileConfig, bytes: &[u8], previous: Option<&[u8]>) -> Result<(), (&'static str, String)> {
    let path = &file.path;
    let current = on_disk(path).or_else(|| previous.map(<[u8]>::to_vec));
    if bytes.is_empty() && current.as_ref().is_some_and(|c| !c.is_empty()) && !file.allow_empty {
        return Err((
            "empty_refused",
            format!("refused to replace {} with empty output (allow_empty is off)", path.display()),
        ));
    }
    let dir = Directory::open(path)
        .map_err(|e| ("render_failed", format!("cannot open the directory of {}: {e}", path.display())))?;
    refuse_shared_directory(file, &dir).map_err(|detail| ("render_failed", detail))?;
    remove_stale_temps(path);
    let temp = write_temp(&dir, path, bytes)
        .map_err(|e| ("render_failed", format!("cannot write next to {}: {e}", path.display())))?;
    if !file.check.is_empty()
        && let Err(error) = run_command(&file.check, &temp.path(), file.timeout()).await
    {
        return Err(("check_failed", format!("check of {} failed: {error}", path.display())));
    }
    temp.swap_in().map_err(|e| ("render_failed", format!("cannot replace {}: {e}", path.display())))?;
    if file.reload.is_empty() {
        return Ok(());
    }
    let Err(error) = run_command(&file.reload, path, file.timeout()).await else { return Ok(()) };
    // Put the last-known-good back, and reload it.
    let restored = match current {
        Some(good) => write_temp(&dir, path, &good).and_then(Temp::swap_in).map_err(|e| e.to_string()),
        None => std::fs::remove_file(path).map_err(|e| e.to_string()),
    };
    let again = run_command(&file.reload, path, file.timeout()).await;
    let restored = match (restored, again) {
        (Ok(()), Ok(())) => "the last-known-good file is back and reloaded".to_owned(),
        (Err(e), _) => format!("restoring the last-known-good file failed too: {e}"),
        (Ok(()), Err(e)) => format!("the last-known-good file is back, but its reload failed too: {e}"),
    };
    Err(("reload_failed", format!("reload after {} failed: {error}; {restored}", path.display())))
}

/// Refuses a file whose directory (the one opened, whatever its path names now) every user may
/// write to, unless the config allows it.
fn refuse_shared_directory(file: &FileConfig, dir: &Directory) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = dir
        .handle
        .metadata()
        .map_err(|e| format!("cannot read directory {}: {e}", dir.path.display()))?
        .permissions()
        .mode();
    let dir = &dir.path;
    if mode & 0o002 != 0 && !file.allow_shared_directory {
        return Err(format!(
            "refused to render {}: its directory {} is writable by every user (mode {:o}), so another user could \
             replace the file; set allow_shared_directory = true to render there anyway",
            file.path.display(),
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Removes the temp files of `path` that a node killed mid-render left (`.NAME.*.grapevine-tmp`):
/// links and files only, never what they point to.
fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let ours = entry_name.starts_with(&prefix) && entry_name.ends_with(".grapevine-tmp");
        if ours && entry.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The directory of a rendered file, opened once per render: the temp file is created in it and
/// renamed within it through this handle (`openat`, `renameat`), so the directory judged by
/// [`refuse_shared_directory`] is the one written, even if its path is swapped for a link
/// midway.
struct Directory {
    handle: std::fs::File,
    path: PathBuf,
}

impl Directory {
    fn open(file: &Path) -> std::io::Result<Directory> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let handle =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(&path)?;
        Ok(Directory { handle, path })
    }

    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.handle)
    }
}

/// A complete, synced temp file in a [`Directory`], for its target; removed when dropped unless
/// swapped in.
struct Temp<'a> {
    dir: &'a Directory,
    name: std::ffi::CString,
    target: std::ffi::CString,
    swapped: bool,
}

impl Temp<'_> {
    /// Its path, for a check command to read.
    fn path(&self) -> PathBuf {
        self.dir.path.join(std::ffi::OsStr::from_bytes(self.name.as_bytes()))
    }

    /// Renames it over its target within the directory and fsyncs the directory, so the rename
    /// survives a crash.
    fn swap_in(mut self) -> std::io::Result<()> {
        let fd = self.dir.fd();
        // SAFETY: both names are NUL-terminated strings that outlive the call; fd is open.
        if unsafe { libc::renameat(fd, self.name.as_ptr(), fd, self.target.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.swapped = true;
        self.dir.handle.sync_all()
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.swapped {
            // SAFETY: a NUL-terminated name and an open directory fd; unlinkat never follows links.
            unsafe { libc::unlinkat(self.dir.fd(), self.name.as_ptr(), 0) };
        }
    }
}

/// Writes `bytes` to a new file in `dir` for `path`, synced: a random name created exclusively
/// and without following links (`O_EXCL | O_NOFOLLOW`, relative to the directory handle), so no
/// link or directory a local user planted is followed or stands in the way, with the mode of the
/// file it will replace (0644 for a new one, less the umask).
fn write_temp<'a>(dir: &'a Directory, path: &Path, bytes: &[u8]) -> std::io::Result<Temp<'a>> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::PermissionsExt;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let name = path.file_name().ok_or_else(|| invalid("a file path without a file name"))?;
    let mode =
        std::fs::symlink_metadata(path).ok().filter(|m| m.is_file()).map_or(0o644, |m| m.permissions().mode() & 0o777);
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| std::io::Error::other("no random bytes for a temp name"))?;
    let mut temp_name = format!(".{}.", name.to_string_lossy()).into_bytes();
    temp_name.extend(hex::encode(random).bytes());
    temp_name.extend(b".grapevine-tmp");
    let nul = |bytes: Vec<u8>| std::ffi::CString::new(bytes).map_err(|_| invalid("a file name with a NUL byte"));
    let (temp_name, target) = (nul(temp_name)?, nul(name.as_bytes().to_vec())?);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name and an open directory fd; the returned fd is checked.
    let fd = unsafe { libc::openat(dir.fd(), temp_name.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by us and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let temp = Temp { dir, name: temp_name, target, swapped: false };
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(temp)
}

/// Runs `command` with `{path}` replaced, killed with its process group past `timeout`, and
/// judged by its exit status (`command::run`); Err says why it failed.
async fn run_command(command: &[String], path: &Path, timeout: Duration) -> Result<(), String> {
    let path = path.to_string_lossy();
    let args: Vec<String> = command.iter().map(|arg| arg.replace("{path}", &path)).collect();
    match crate::command::run(&args, timeout, true).await {
        Err(e) => Err(format!("cannot run {}: {e}", args[0])),
        Ok(Outcome::TimedOut) => Err(format!("{} did not finish within {timeout:?} (killed)", args[0])),
        Ok(Outcome::Exited { status, .. }) if status.success() => Ok(()),
        Ok(Outcome::Exited { status, stderr }) => Err(format!("{} exited with {status}: {stderr}", args[0])),
    }
}

/// Where the last-known-good content of `path` is kept in the data directory.
fn lkg_path(data: &Path, path: &Path) -> PathBuf {
    let digest = hex::encode(&Sha256::digest(path.to_string_lossy().as_bytes())[..8]);
    data.join("files").join(format!("{digest}.lkg"))
}

fn read_lkg(data: &Path, path: &Path) -> Option<Vec<u8>> {
    std::fs::read(lkg_path(data, path)).ok()
}

fn write_lkg(data: &Path, path: &Path, bytes: &[u8]) {
    let lkg = lkg_path(data, path);
    let written = lkg.parent().map_or(Ok(()), crate::private::create_dir).and_then(|()| {
        use std::io::Write;
        let temp = lkg.with_extension("tmp");
        let mut file = crate::private::create_file(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &lkg)
    });
    if let Err(error) = written {
        warn!(path = %path.display(), %error, "cannot keep the last-known-good copy");
    }
}

/// `path` as the file system resolves it: absolute, through symbolic links as far as it exists
/// (so `/srv/../var/lib/grapevine` and a link to the data directory are seen for what they are).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { return absolute };
        rest.push(name);
        existing = parent;
    }
    let mut resolved = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    resolved.extend(rest.into_iter().rev());
    resolved
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_render_in_each_format() {
        let value = json!({"burst": 50, "name": "api", "ratio": 0.5, "on": true});
        let json_text = String::from_utf8(render(&value, Format::Json).unwrap()).unwrap();
        assert!(json_text.contains("\"burst\": 50"), "{json_text}");
        let yaml = String::from_utf8(render(&value, Format::Yaml).unwrap()).unwrap();
        assert!(yaml.contains("burst: 50\n") && yaml.contains("ratio: 0.5"), "{yaml}");
        let toml_text = String::from_utf8(render(&value, Format::Toml).unwrap()).unwrap();
        assert!(toml_text.contains("burst = 50") && toml_text.contains("name = \"api\""), "{toml_text}");
        let env = String::from_utf8(render(&value, Format::Env).unwrap()).unwrap();
        assert_eq!(env, "burst=50\nname=api\non=true\nratio=0.5\n");
        assert_eq!(render(&json!("server { }"), Format::Raw).unwrap(), b"server { }");
        assert!(render(&json!([1]), Format::Env).unwrap_err().contains("object of scalars"));
        assert!(render(&json!({"a b": 1}), Format::Env).unwrap_err().contains("not a variable name"));
        assert!(render(&json!(3), Format::Toml).unwrap_err().contains("object"));
    }

    #[test]
    fn numbers_render_exactly_or_not_at_all_and_env_values_cannot_smuggle_lines() {
        let big: Value = serde_json::from_str(r#"{"n": 12345678901234567890123456789}"#).unwrap();
        for format in [Format::Yaml, Format::Toml] {
            let error = render(&big, format).unwrap_err();
            assert!(error.contains("12345678901234567890123456789 has more digits"), "{error}");
        }
        assert!(
            String::from_utf8(render(&big, Format::Json).unwrap()).unwrap().contains("12345678901234567890123456789")
        );
        let fine: Value = serde_json::from_str(r#"{"a": 0.1, "b": 1.50, "c": -2.5e-3, "d": 1e300}"#).unwrap();
        let yaml = String::from_utf8(render(&fine, Format::Yaml).unwrap()).unwrap();
        assert!(yaml.contains("a: 0.1") && yaml.contains("b: 1.5") && yaml.contains("c: -0.0025"), "{yaml}");
        assert!(render(&serde_json::from_str(r#"{"x": 0.12345678901234567890123}"#).unwrap(), Format::Yaml).is_err());

        for bad in ["a\rB=1", "a\u{0}b", "a\u{2028}b", "a\nb"] {
            let error = render(&json!({"A": bad}), Format::Env).unwrap_err();
            assert!(error.contains("control or line-separator"), "{bad:?}: {error}");
        }
        assert!(render(&json!({"1X": 1}), Format::Env).unwrap_err().contains("not a variable name"));
        assert_eq!(render(&json!({"_X1": "tab\tok"}), Format::Env).unwrap(), b"_X1=tab\tok\n");
    }

    fn file_at(path: &Path) -> FileConfig {
        toml::from_str(&format!("path = {:?}\nkey = \"k\"\n", path.display().to_string())).unwrap()
    }

    #[tokio::test]
    async fn a_planted_link_or_directory_at_the_old_temp_name_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        std::fs::write(&path, "old").unwrap();
        // A link where the temp file used to be (`.NAME.grapevine-tmp`), to a file a root-run
        // node must not overwrite; and a directory there, which made every render fail.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join(".app.json.grapevine-tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        install(&file_at(&path), b"new", None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the planted link was followed");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        // A leftover of ours by its name, the link itself is removed (never what it points to).
        assert!(std::fs::symlink_metadata(&planted).is_err(), "the planted link was left");
        std::fs::create_dir(&planted).unwrap();
        install(&file_at(&path), b"newer", None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer");

        // A directory every user may write to is refused unless the config allows it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = install(&file_at(&path), b"x", None).await.unwrap_err();
        assert!(refused.1.contains("writable by every user (mode 777)"), "{}", refused.1);
        let shared = FileConfig { allow_shared_directory: true, ..file_at(&path) };
        install(&shared, b"shared", None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "shared");
    }

    #[test]
    fn a_directory_swapped_for_a_link_midway_is_not_written_through() {
        let root = tempfile::tempdir().unwrap();
        let (opened, elsewhere) = (root.path().join("conf"), root.path().join("elsewhere"));
        std::fs::create_dir(&opened).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        let path = opened.join("app.json");
        let dir = Directory::open(&path).unwrap();
        // Between the check and the write, another user moves the directory away and puts a
        // link to a directory of their choice in its place.
        std::fs::rename(&opened, root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &opened).unwrap();
        write_temp(&dir, &path, b"new").unwrap().swap_in().unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("moved/app.json")).unwrap(), "new");
        assert!(!elsewhere.join("app.json").exists(), "written through the planted link");
        let leftovers = std::fs::read_dir(root.path().join("moved")).unwrap().count();
        assert_eq!(leftovers, 1, "only the file: no temp file left");
        // A temp file dropped before its swap is removed.
        drop(write_temp(&dir, &path, b"unused").unwrap());
        assert_eq!(std::fs::read_dir(root.path().join("moved")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn commands_time_out_and_say_why_they_failed() {
        let path = Path::new("/tmp/x");
        assert!(run_command(&["true".into()], path, Duration::from_secs(5)).await.is_ok());
        let failed =
            run_command(&["sh".into(), "-c".into(), "echo bad >&2; exit 3".into()], path, Duration::from_secs(5)).await;
        assert!(failed.unwrap_err().contains("bad"));
        let slow = run_command(&["sleep".into(), "5".into()], path, Duration::from_millis(50)).await;
        assert!(slow.unwrap_err().contains("killed"));
        // A reload that leaves a daemon behind holds stderr open: judged by its exit, at once.
        let forked = ["sh".into(), "-c".into(), "sleep 60 & exit 0".into()];
        assert_eq!(
            run_command(&forked, path, Duration::from_secs(3)).await,
            Ok(()),
            "a reload that left a child behind"
        );
        let echoed =
            run_command(&["test".into(), "{path}".into(), "=".into(), "/tmp/x".into()], path, Duration::from_secs(5))
                .await;
        assert!(echoed.is_ok(), "{{path}} is replaced");
    }
}
