//! Where the CLI finds its API token: `--token`, then `GRAPEVINE_TOKEN` (clap reads both into
//! the same option), then the credentials file, `$XDG_CONFIG_HOME/grapevine/credentials.toml`
//! (`~/.config/grapevine/credentials.toml` without it):
//!
//! ```toml
//! token = "gv_..."                       # for any node not listed below
//! [nodes."http://10.0.0.1:7401"]
//! token = "gv_..."
//! ```
//!
//! `token_for(given, base)` picks the token: `--token`/`GRAPEVINE_TOKEN`, else the credentials
//! file's entry for the node, else its default. The token goes in `Authorization: Bearer`, never
//! over the socket.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::CliError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    token: Option<String>,
    #[serde(default)]
    nodes: BTreeMap<String, NodeCredentials>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeCredentials {
    token: String,
}

/// The credentials file's path, if a home or config directory is known.
pub fn file() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("grapevine").join("credentials.toml"))
}

/// The token for the node at `base`: `given` (flag or environment), else the file's entry for
/// that node, else the file's default; none when there is no file.
pub fn token_for(given: Option<&str>, base: &str) -> Result<Option<String>, CliError> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_owned()));
    }
    let Some(path) = file() else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CliError::Usage(format!("cannot read {}: {error}", path.display()))),
    };
    warn_if_readable_by_others(&path);
    let file: CredentialsFile = toml::from_str(&text).map_err(|error| {
        CliError::Usage(format!("{}: expected `token = \"...\"` and [nodes.\"URL\"] tables: {error}", path.display()))
    })?;
    Ok(file.nodes.get(base).map(|node| node.token.clone()).or(file.token))
}

/// Tokens are secrets: say so when the file is readable by the group or others, as ssh does.
pub(super) fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o077 != 0) {
        eprintln!("warning: {} is readable by others; chmod 600 it", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_node_entry_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grapevine");
        std::fs::create_dir_all(&path).unwrap();
        let file = path.join("credentials.toml");
        std::fs::write(&file, "token = \"gv_default\"\n[nodes.\"http://10.0.0.1:7401\"]\ntoken = \"gv_one\"\n")
            .unwrap();
        // SAFETY: this test is the only one in the crate that reads or sets XDG_CONFIG_HOME.
        unsafe { std::env::set_var("XDG_CONFIG_HOME", dir.path()) };
        assert_eq!(token_for(Some("gv_flag"), "http://10.0.0.1:7401").unwrap().as_deref(), Some("gv_flag"));
        assert_eq!(token_for(None, "http://10.0.0.1:7401").unwrap().as_deref(), Some("gv_one"));
        assert_eq!(token_for(None, "http://10.0.0.2:7401").unwrap().as_deref(), Some("gv_default"));
        std::fs::write(&file, "tokens = 1\n").unwrap();
        let error = token_for(None, "http://x").unwrap_err().to_string();
        assert!(error.contains("expected `token"), "{error}");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(token_for(None, "http://x").unwrap(), None);
    }
}
