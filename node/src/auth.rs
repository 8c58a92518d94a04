//! Who may use the HTTP API, and for what.
//!
//! Three ways in, each giving a [`Principal`] (a name, a [`Role`] and the key prefixes it may
//! touch):
//! - the **admin socket**, a Unix socket whose file permissions decide who may connect; every
//!   client on it has `socket_role` (default `write`) over every key, and is named after its
//!   Unix user (`unix:alice`, from the kernel's peer credentials);
//! - a **bearer token** over TCP (`Authorization: Bearer gv_...`): the node keeps only each
//!   token's SHA-256, with its role and prefixes, and names the client `token:NAME`;
//! - **anonymous** TCP requests, which get `anonymous` (default: nothing).
//!
//! `/healthz`, `/readyz` and `/metrics` are open to all. Every other endpoint needs a role,
//! and the keys it names must lie under one of the principal's prefixes
//! ([`Requirement`], checked by `api::authorize`). A request without a usable principal is
//! answered 401, one whose principal falls short 403; both are counted.
//!
//! The types: `Role` (`Read` < `Report` < `Write`), `Principal` (name, role, prefixes,
//! `authenticated`), `Requirement` (`Public`, `Role { role, key }`, `Unrestricted(role)`),
//! `Refusal` (`Unauthenticated` = 401, `Forbidden` = 403), `AuthSection`/`TokenSection` (`[auth]`
//! as written) and `Auth` (checked: tokens by SHA-256, the anonymous role, the socket's path, mode
//! and role).
//!
//! - `Auth::over_tcp(authorization)` gives the principal of a TCP request: the token's, the
//!   anonymous one, or a refusal for an unknown token or a header that is not `Bearer`.
//!   `Auth::over_socket(uid)` names a socket client after its Unix user (`getpwuid_r`).
//! - `check(principal, requirement)` decides; `forbid_outside` checks one key against a scope.
//! - `new_token()` makes `gv_` + 64 hex digits from ring's `SystemRandom`, and its SHA-256.
//! - In-process clusters (the demo, tests) configure `anonymous = "write"` and no socket.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a principal may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read flags, config, rollouts, history, status; evaluate flags (OFREP); watch.
    Read,
    /// Read, and push health samples (`POST /v1/health`): an application's role.
    Report,
    /// Everything: changes, rollout controls, rollbacks, backups.
    Write,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Report => "report",
            Role::Write => "write",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "report" => Ok(Role::Report),
            "write" => Ok(Role::Write),
            other => Err(format!("expected read, report or write, got {other:?}")),
        }
    }
}

/// An authenticated (or anonymous) client of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `token:NAME`, `unix:USER` or `anonymous`: recorded as the author of its changes.
    pub name: String,
    pub role: Role,
    /// Key prefixes it may touch; `""` is every key.
    pub prefixes: Vec<String>,
    /// False for an anonymous client: its changes keep the author the client claims.
    pub authenticated: bool,
}

impl Principal {
    /// Whether `key` lies under one of the principal's prefixes.
    pub fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|prefix| key.starts_with(prefix.as_str()))
    }

    /// Whether it may touch every key (needed to read the whole log: history, backups).
    pub fn unrestricted(&self) -> bool {
        self.prefixes.iter().any(String::is_empty)
    }

    /// `prefixes` as an error message shows them.
    pub fn scope(&self) -> String {
        if self.unrestricted() { "every key".to_owned() } else { format!("keys under {}", self.prefixes.join(", ")) }
    }
}

/// What an endpoint needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Open to all: probes and metrics.
    Public,
    /// The role, over the key the path names (if any). Endpoints that name keys elsewhere (a
    /// body, a generation, a query) check them in their handler with [`Principal::covers`].
    Role { role: Role, key: Option<String> },
    /// The role over every key.
    Unrestricted(Role),
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credentials where some are needed, or credentials the node does not know.
    Unauthenticated(String),
    /// 403: a known principal without the role or the scope.
    Forbidden(String),
}

/// `[auth]` in the node config, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The admin socket; `DATA/admin.sock` by default. `""` turns it off.
    pub socket: Option<PathBuf>,
    /// Its file mode, octal (`"0660"`): who may connect. Default `0600`, the node's user only.
    pub socket_mode: Option<String>,
    /// The role of every client of the socket. Default `write`.
    pub socket_role: Option<Role>,
    /// The role of a TCP request without a token: `none` (default), `read`, `report` or
    /// `write`.
    pub anonymous: Option<String>,
    /// Bearer tokens (`[[auth.token]]`).
    pub token: Option<Vec<TokenSection>>,
}

/// One `[[auth.token]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Names the token's changes (`token:NAME`) and its log lines.
    pub name: String,
    /// The SHA-256 of the token, in hex (`grapevine token new` prints it).
    pub sha256: String,
    pub role: Role,
    /// Key prefixes; default `[""]`, every key.
    pub prefixes: Option<Vec<String>>,
}

/// Who may do what, checked from `[auth]`.
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: HashMap<[u8; 32], Principal>,
    anonymous: Option<Role>,
    /// The admin socket (`None`: no socket).
    pub socket: Option<AdminSocket>,
}

/// Where the admin socket is, who may connect (its file mode), and its clients' role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSocket {
    pub path: PathBuf,
    pub mode: u32,
    pub role: Role,
}

/// Prefix of every token `grapevine token new` makes, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "gv_";

impl Auth {
    /// Checks `[auth]`; `data` holds the default socket.
    pub fn from_section(section: &AuthSection, data: &std::path::Path) -> Result<Auth, String> {
        let mut tokens = HashMap::new();
        let mut names = std::collections::BTreeSet::new();
        for token in section.token.iter().flatten() {
            let context = |error: String| format!("[[auth.token]] {:?}: {error}", token.name);
            let name = format!("token:{}", token.name);
            if name.parse::<grapevine_proto::Author>().is_err() || !names.insert(token.name.clone()) {
                let expected = "a unique name of 1 to 58 ASCII letters, digits or - _ . @ / + :";
                return Err(context(format!("expected {expected}")));
            }
            let digest = hex::decode(&token.sha256)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| context(format!("sha256 must be 64 hex digits, got {:?}", token.sha256)))?;
            let prefixes = token.prefixes.clone().unwrap_or_else(|| vec![String::new()]);
            if prefixes.is_empty() {
                return Err(context("prefixes must name at least one prefix (\"\" is every key)".into()));
            }
            for prefix in &prefixes {
                let valid = prefix.len() <= grapevine_proto::limits::MAX_KEY_BYTES
                    && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
                if !valid {
                    return Err(context(format!("a prefix must be up to 128 of A-Z a-z 0-9 - _ . /, got {prefix:?}")));
                }
            }
            let principal = Principal { name, role: token.role, prefixes, authenticated: true };
            if tokens.insert(digest, principal).is_some() {
                return Err(context("two tokens have the same sha256".into()));
            }
        }
        let anonymous = match section.anonymous.as_deref() {
            None | Some("none") => None,
            Some(role) => Some(role.parse::<Role>().map_err(|e| format!("[auth] anonymous: {e} or none"))?),
        };
        let mode = match &section.socket_mode {
            None => 0o600,
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777)
                .ok_or_else(|| format!("[auth] socket_mode: expected an octal mode like \"0660\", got {text:?}"))?,
        };
        let socket = match &section.socket {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => Some(data.join(SOCKET_FILE)),
        };
        let socket = socket.map(|path| AdminSocket { path, mode, role: section.socket_role.unwrap_or(Role::Write) });
        Ok(Auth { tokens, anonymous, socket })
    }

    /// The principal of a TCP request with this `Authorization` header value, if any.
    pub fn over_tcp(&self, authorization: Option<&str>) -> Result<Option<Principal>, Refusal> {
        let Some(header) = authorization else {
            let anonymous = self.anonymous.map(|role| Principal {
                name: "anonymous".into(),
                role,
                prefixes: vec![String::new()],
                authenticated: false,
            });
            return Ok(anonymous);
        };
        // RFC 7235: the scheme is case-insensitive (`bearer`, `BEARER`).
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| Refusal::Unauthenticated("expected an Authorization header `Bearer TOKEN`".into()))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens
            .get(&digest)
            .cloned()
            .map(Some)
            .ok_or_else(|| Refusal::Unauthenticated("the bearer token is not one this node knows".into()))
    }

    /// The principal of a client of the admin socket, named after its Unix user.
    pub fn over_socket(&self, uid: Option<u32>) -> Principal {
        let role = self.socket.as_ref().map_or(Role::Write, |socket| socket.role);
        let user = uid.map_or_else(|| "unknown".to_owned(), user_name);
        let name = grapevine_proto::Author::lossy(&format!("unix:{user}")).to_string();
        Principal { name, role, prefixes: vec![String::new()], authenticated: true }
    }
}

/// The admin socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Checks `principal` (None: no credentials) against `requirement`.
pub fn check(principal: Option<&Principal>, requirement: &Requirement) -> Result<(), Refusal> {
    let (role, key, everything) = match requirement {
        Requirement::Public => return Ok(()),
        Requirement::Role { role, key } => (*role, key.as_deref(), false),
        Requirement::Unrestricted(role) => (*role, None, true),
    };
    let Some(principal) = principal else {
        return Err(Refusal::Unauthenticated(format!(
            "this endpoint needs the {role} role: send a token (`Authorization: Bearer TOKEN`; the CLI reads \
             --token, GRAPEVINE_TOKEN or ~/.config/grapevine/credentials.toml) or use the node's admin socket"
        )));
    };
    if principal.role < role {
        return Err(Refusal::Forbidden(format!(
            "{} has the {} role; this endpoint needs {role}",
            principal.name, principal.role
        )));
    }
    if everything && !principal.unrestricted() {
        return Err(Refusal::Forbidden(format!(
            "{} may touch {}; this endpoint needs every key",
            principal.name,
            principal.scope()
        )));
    }
    if let Some(key) = key {
        forbid_outside(principal, key)?;
    }
    Ok(())
}

/// 403 unless `key` lies in the principal's scope.
pub fn forbid_outside(principal: &Principal, key: &str) -> Result<(), Refusal> {
    if principal.covers(key) {
        return Ok(());
    }
    Err(Refusal::Forbidden(format!("{} may touch {}, not {key:?}", principal.name, principal.scope())))
}

/// A new random token and its SHA-256 in hex, for `grapevine token new`.
pub fn new_token() -> (String, String) {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    (token, digest)
}

/// The login name of `uid`, or the number.
pub(crate) fn user_name(uid: u32) -> String {
    let mut buffer = vec![0u8; 4096];
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes the entry and its strings into `entry` and `buffer`, which we
    // own and which outlive the read below; `result` is null when there is no such user.
    let found = unsafe {
        libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut result) == 0
            && !result.is_null()
    };
    if !found {
        return uid.to_string();
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buffer`.
    unsafe { std::ffi::CStr::from_ptr(entry.pw_name) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> Result<Auth, String> {
        let section: AuthSection = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Auth::from_section(&section, std::path::Path::new("/data"))
    }

    #[test]
    fn tokens_roles_and_prefixes_decide() {
        let (token, digest) = new_token();
        assert!(token.starts_with(TOKEN_PREFIX) && digest.len() == 64);
        let auth = auth(&format!(
            "anonymous = \"read\"\n[[token]]\nname = \"deploy\"\nsha256 = \"{digest}\"\nrole = \"write\"\nprefixes = [\"payments/\"]\n"
        ))
        .unwrap();
        let deploy = auth.over_tcp(Some(&format!("Bearer {token}"))).unwrap().unwrap();
        assert_eq!((deploy.name.as_str(), deploy.role), ("token:deploy", Role::Write));
        let write = |key: &str| Requirement::Role { role: Role::Write, key: Some(key.into()) };
        assert_eq!(check(Some(&deploy), &write("payments/limits")), Ok(()));
        let outside = check(Some(&deploy), &write("search/limits")).unwrap_err();
        assert_eq!(
            outside,
            Refusal::Forbidden("token:deploy may touch keys under payments/, not \"search/limits\"".into())
        );
        assert!(matches!(check(Some(&deploy), &Requirement::Unrestricted(Role::Read)), Err(Refusal::Forbidden(_))));

        let anonymous = auth.over_tcp(None).unwrap().unwrap();
        assert!(!anonymous.authenticated);
        assert_eq!(check(Some(&anonymous), &Requirement::Role { role: Role::Read, key: Some("x".into()) }), Ok(()));
        let refused = check(Some(&anonymous), &write("x")).unwrap_err();
        assert_eq!(refused, Refusal::Forbidden("anonymous has the read role; this endpoint needs write".into()));
        assert!(matches!(auth.over_tcp(Some("Bearer gv_nope")), Err(Refusal::Unauthenticated(_))));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let principal = auth.over_tcp(Some(&format!("{scheme} {token}"))).unwrap().unwrap();
            assert_eq!(principal.name, deploy.name, "the scheme {scheme} is case-insensitive");
        }
        assert!(matches!(auth.over_tcp(Some(&format!("Basic {token}"))), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(auth.over_tcp(Some("Basic abc")), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(check(None, &write("x")), Err(Refusal::Unauthenticated(_))));
        assert_eq!(check(None, &Requirement::Public), Ok(()));
        let socket = AdminSocket { path: "/data/admin.sock".into(), mode: 0o600, role: Role::Write };
        assert_eq!(auth.socket, Some(socket));
    }

    #[test]
    fn a_bad_auth_section_is_refused_with_what_was_expected() {
        let error = auth("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"write\"\n").unwrap_err();
        assert!(error.contains("sha256 must be 64 hex digits"), "{error}");
        let digest = "00".repeat(32);
        let twice = format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nrole = \"read\"\n").repeat(2);
        assert!(auth(&twice).unwrap_err().contains("unique name"));
        assert!(auth("anonymous = \"admin\"").unwrap_err().contains("expected read, report or write"));
        assert!(auth("socket_mode = \"rw\"").unwrap_err().contains("octal mode"));
        assert!(auth("socket = \"\"").unwrap().socket.is_none());
        let bad_prefix =
            format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nrole = \"read\"\nprefixes = [\"a b\"]\n");
        assert!(auth(&bad_prefix).unwrap_err().contains("a prefix must be"));
    }
}
