//! The operator's side of signed changes: key files, delegations, and signing what a node
//! prepared (see `proto::signing` for what every node checks).
//!
//! A key file is TOML, mode 0600, made by `grapevine key new`:
//!
//! ```toml
//! name = "alice"                  # recorded as the author of every change it signs
//! public = "ed25519:..."
//! secret = "..."                  # 64 hex digits: the ed25519 seed
//! delegation = "..."              # hex, from `grapevine key delegate` (operators only)
//! ```
//!
//! The CLI finds it at `--signing-key`, `GRAPEVINE_SIGNING_KEY`, or
//! `$XDG_CONFIG_HOME/grapevine/signing.key` (`~/.config/grapevine/signing.key`).
//!
//! `KeyFile` (`generate` from ring's `SystemRandom`; `read` checks the public key and the
//! delegation against the secret); `key_file_for` finds it, and a key file is read only when a
//! change is signed, so reads work before the key is delegated. `Signer` and `Intent` (the keys,
//! config values, flags and control target asked for): `Signer::sign` checks a node's prepared
//! change against the intent (its keys, values, flags, control target and scheduled start,
//! `StartIntent`) and signs it, the start with the change; `Signer::sign_vote` signs an approval
//! or a rejection of a proposal once its change hashes to the digest shown (`proto::approvals`).
//! `run` serves `key new`, `key delegate` and `key show`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::signing::{Delegation, MAX_PREFIXES, PublicKey, SecretKey, revocation_key};
use grapevine_proto::{Author, Change, GenId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CliError;
use super::args::KeyCommand;
use crate::replies::{SignApproval, SignChange};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileText {
    name: String,
    public: String,
    secret: String,
    delegation: Option<String>,
}

/// A key file, read and checked.
#[derive(Debug)]
pub struct KeyFile {
    pub path: PathBuf,
    pub name: Author,
    pub key: SecretKey,
    pub delegation: Option<Delegation>,
}

impl KeyFile {
    /// A new key named `name`, from the system's random number generator.
    pub fn generate(path: &Path, name: Author) -> Result<KeyFile, CliError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| CliError::Failed("the system's random number generator failed".into()))?;
        Ok(KeyFile { path: path.to_owned(), name, key: SecretKey::from_seed(seed), delegation: None })
    }

    pub fn read(path: &Path) -> Result<KeyFile, CliError> {
        let invalid = |detail: String| CliError::Usage(format!("signing key {}: {detail}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|error| invalid(format!("cannot read it: {error}")))?;
        super::credentials::warn_if_readable_by_others(path);
        let file: KeyFileText = toml::from_str(&text)
            .map_err(|error| invalid(format!("expected name, public, secret (and delegation): {error}")))?;
        let name = file.name.parse::<Author>().map_err(|error| invalid(format!("name: {error}")))?;
        let seed: [u8; 32] = hex::decode(&file.secret)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| invalid("secret: expected 64 hex digits".into()))?;
        let key = SecretKey::from_seed(seed);
        if file.public.parse::<PublicKey>().ok() != Some(key.public()) {
            return Err(invalid(format!("public {} is not the secret's public key {}", file.public, key.public())));
        }
        let delegation = file.delegation.as_deref().map(decode_delegation).transpose().map_err(invalid)?;
        if let Some(delegation) = &delegation
            && delegation.key != key.public()
        {
            return Err(invalid(format!("the delegation is for {}, not for this key", delegation.key)));
        }
        Ok(KeyFile { path: path.to_owned(), name, key, delegation })
    }

    /// Writes the file: a new one is refused if it exists; either way readable by its owner only.
    pub fn write(&self, replace: bool) -> Result<(), CliError> {
        use std::os::unix::fs::OpenOptionsExt;
        let text = KeyFileText {
            name: self.name.to_string(),
            public: self.key.public().to_string(),
            secret: hex::encode(self.key.seed()),
            delegation: self.delegation.as_ref().map(encode_delegation),
        };
        let body = format!(
            "# A grapevine signing key: keep it secret.\n{}",
            toml::to_string(&text).expect("a key file always serializes")
        );
        let cannot = |error: std::io::Error| CliError::Failed(format!("cannot write {}: {error}", self.path.display()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if replace {
            options.truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(&self.path).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => {
                CliError::Usage(format!("{} already exists: name a new file", self.path.display()))
            }
            _ => cannot(error),
        })?;
        file.write_all(body.as_bytes()).and_then(|()| file.sync_all()).map_err(cannot)
    }

    /// The key and delegation that sign changes; an error that says how to get a delegation.
    pub fn signer(self) -> Result<Signer, CliError> {
        let Some(delegation) = self.delegation else {
            return Err(CliError::Usage(format!(
                "signing key {} has no delegation: a root holder runs `grapevine key delegate --public {} --name {}` and you add its output as `delegation = \"...\"`",
                self.path.display(),
                self.key.public(),
                self.name
            )));
        };
        Ok(Signer { key: self.key, delegation })
    }
}

/// `key new`, `key delegate`, `key show`, and `key revoke`, which talks to a node
/// (`client::revoke_key`).
pub fn run(command: KeyCommand) -> Result<(), CliError> {
    let usage = |option: &str, error: &dyn std::fmt::Display| CliError::Usage(format!("{option}: {error}"));
    match command {
        KeyCommand::New { name, out } => {
            let name = name.parse::<Author>().map_err(|e| usage("--name", &e))?;
            let file = KeyFile::generate(&out, name)?;
            file.write(false)?;
            println!("{}", file.key.public());
            eprintln!("wrote {} (keep it secret); its public key is above", out.display());
        }
        KeyCommand::Delegate { root, key, public, name, cluster, prefixes, days } => {
            let root = KeyFile::read(&root)?;
            let mut operator = key.as_deref().map(KeyFile::read).transpose()?;
            let public = match (&operator, public) {
                (Some(file), _) => file.key.public(),
                (None, Some(public)) => public.parse::<PublicKey>().map_err(|e| usage("--public", &e))?,
                (None, None) => return Err(CliError::Usage("expected --key FILE or --public KEY".into())),
            };
            let name = match (name, &operator) {
                (Some(name), _) => name.parse::<Author>().map_err(|e| usage("--name", &e))?,
                (None, Some(file)) => file.name.clone(),
                (None, None) => return Err(CliError::Usage("--public needs --name".into())),
            };
            if prefixes.len() > MAX_PREFIXES {
                return Err(CliError::Usage(format!("at most {MAX_PREFIXES} --prefix, got {}", prefixes.len())));
            }
            let now_ms = crate::clock::unix_ms();
            let not_after_ms = now_ms + u64::from(days) * 24 * 3600 * 1000;
            let delegation = root.key.delegate(&cluster, name.clone(), public, prefixes, not_after_ms);
            let text = encode_delegation(&delegation);
            match operator.as_mut() {
                Some(file) => {
                    file.delegation = Some(delegation);
                    file.name = name;
                    file.write(true)?;
                    eprintln!("wrote the delegation into {}", file.path.display());
                }
                None => {
                    println!("{text}");
                    eprintln!("add it to the operator's key file as: delegation = \"{text}\"");
                }
            }
        }
        KeyCommand::Show { file } => {
            let file = KeyFile::read(&file)?;
            let delegation = file.delegation.as_ref().map(|d| {
                serde_json::json!({
                    "operator": d.operator,
                    "root": d.root.to_string(),
                    "prefixes": d.prefixes,
                    "not_after_ms": d.not_after_ms,
                })
            });
            let shown = serde_json::json!({"name": file.name, "public": file.key.public().to_string(), "delegation": delegation});
            println!("{}", serde_json::to_string_pretty(&shown).expect("a Value always serializes"));
        }
        KeyCommand::Revoke { public, reason, client } => {
            return super::with_client(&client, |c| async move { super::revoke_key(&c, &public, reason).await });
        }
    }
    Ok(())
}

pub fn encode_delegation(delegation: &Delegation) -> String {
    hex::encode(postcard::to_stdvec(delegation).expect("a delegation always encodes"))
}

pub fn decode_delegation(text: &str) -> Result<Delegation, String> {
    let bytes = hex::decode(text.trim()).map_err(|error| format!("delegation: expected hex, got {error}"))?;
    match postcard::take_from_bytes::<Delegation>(&bytes) {
        Ok((delegation, [])) => Ok(delegation),
        _ => Err("delegation: the hex does not hold a delegation (made by `grapevine key delegate`)".into()),
    }
}

/// The default key file's path, if a home or config directory is known.
pub fn default_file() -> Option<PathBuf> {
    Some(super::credentials::file()?.with_file_name("signing.key"))
}

/// The key file of this invocation: the one named, else the default one if it exists. It is
/// read only when a change is signed, so a key without its delegation yet does not stand in
/// the way of reads.
pub fn key_file_for(given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_owned).or_else(|| default_file().filter(|path| path.exists()))
}

/// An operator's key with its delegation.
#[derive(Debug)]
pub struct Signer {
    key: SecretKey,
    delegation: Delegation,
}

/// What the operator asked for, to check a prepared change against before signing it: a node
/// that prepared something else (a compromised one, or one whose latest value differs from
/// what the operator saw) does not get a signature.
#[derive(Debug, Default)]
pub struct Intent {
    /// Operations may touch these keys only.
    pub keys: BTreeSet<String>,
    /// Config values the operations must carry exactly.
    pub values: Vec<(String, Value)>,
    /// What the flags the operations set must be.
    pub flags: Vec<(String, FlagIntent)>,
    /// The generation the change's controls may target (none: no controls).
    pub control_of: Option<GenId>,
    /// The scheduled start asked for (none: the change must have none).
    pub start: Option<StartIntent>,
}

/// A scheduled start as the operator asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartIntent {
    /// `--at`: this time (Unix ms).
    At(u64),
    /// `--in`: this long after the node issued the change (its clock, `issued_ms`).
    In(u64),
}

impl StartIntent {
    /// Whether a node that issued a change at `issued_ms` with a start `prepared` did as asked.
    fn allows(intent: Option<StartIntent>, issued_ms: u64, prepared: Option<u64>) -> bool {
        match (intent, prepared) {
            (None, None) => true,
            (Some(StartIntent::At(at)), Some(start)) => start == at,
            (Some(StartIntent::In(within)), Some(start)) => Some(start) == issued_ms.checked_add(within),
            _ => false,
        }
    }
}

/// What a flag set by a change must be, as `flag set` asked for it.
#[derive(Debug)]
pub enum FlagIntent {
    /// `--on`, `--off` (`enabled`) or `--variant`: serving this variant by default.
    Serving { variant: String, enabled: bool },
    /// `--file`: this definition (compared parsed, as the node stores it canonically).
    Definition(Value),
}

impl FlagIntent {
    fn allows(&self, key: &grapevine_proto::Key, carried: &FlagDefinition) -> bool {
        match self {
            FlagIntent::Serving { variant, enabled } => {
                carried.default_variant.as_ref() == Some(variant)
                    && (!enabled || carried.state == grapevine_proto::eval::FlagState::Enabled)
            }
            FlagIntent::Definition(asked) => grapevine_proto::JsonText::from_value(asked)
                .and_then(|text| FlagDefinition::parse(key, &text))
                .is_ok_and(|asked| &asked == carried),
        }
    }
}

impl Signer {
    /// Signs the change a node prepared (`sign` of a `?prepare=true` request's answer), after
    /// checking it is what `intent` asked for. Returns the body of `POST /v1/changes`.
    pub fn sign(&self, sign: &SignChange, intent: &Intent) -> Result<Value, CliError> {
        let refused = |detail: String| CliError::Refused(format!("not signed: {detail}"));
        check_format(sign.format)?;
        let SignChange { cluster, issued_ms, start_at_ms, .. } = sign;
        let (issued_ms, start_at_ms) = (*issued_ms, *start_at_ms);
        let change = decode_change(&sign.change).map_err(refused)?;
        check_intent(&change, intent).map_err(refused)?;
        if !StartIntent::allows(intent.start, issued_ms, start_at_ms) {
            return Err(refused(format!(
                "the node prepared a start of {start_at_ms:?} (Unix ms, issued at {issued_ms}), not the one asked for ({:?})",
                intent.start
            )));
        }
        let signed = self.key.sign_change(cluster, self.delegation.clone(), issued_ms, &change, start_at_ms);
        let signed = hex::encode(postcard::to_stdvec(&signed).expect("a signature always encodes"));
        Ok(serde_json::json!({ "change": change_hex(&change), "signed": signed, "start_at_ms": start_at_ms }))
    }
}

impl Signer {
    /// Signs an approval (or a rejection) of the proposal a node showed (`sign` of
    /// `GET /v1/proposals/{id}`), after checking that its change hashes to the digest that is
    /// signed: the signature then binds to the change shown, whatever the node claims. Returns
    /// the signature in postcard hex, and the change.
    pub fn sign_vote(&self, sign: &SignApproval, approve: bool) -> Result<(String, Change), CliError> {
        let refused = |detail: String| CliError::Refused(format!("not signed: {detail}"));
        check_format(sign.format)?;
        let SignApproval { cluster, issued_ms, expires_ms, start_at_ms, .. } = sign;
        let (issued_ms, expires_ms, start_at_ms) = (*issued_ms, *expires_ms, *start_at_ms);
        let proposal = sign.proposal.parse::<GenId>().map_err(|e| refused(format!("the node's proposal id: {e}")))?;
        let change = decode_change(&sign.change).map_err(refused)?;
        let digest = grapevine_proto::approvals::proposal_digest(&change, start_at_ms);
        if sign.digest != digest.to_string() {
            return Err(refused(format!("the node's proposal {proposal} does not hash to the digest it asks to sign")));
        }
        let delegation = self.delegation.clone();
        let signed = if approve {
            self.key.sign_approval(cluster, delegation, issued_ms, &proposal, &digest, expires_ms)
        } else {
            self.key.sign_rejection(cluster, delegation, issued_ms, &proposal, &digest)
        };
        Ok((hex::encode(postcard::to_stdvec(&signed).expect("a signature always encodes")), change))
    }
}

/// The node's answer names this CLI's wire format.
fn check_format(format: u64) -> Result<(), CliError> {
    if format != u64::from(grapevine_proto::wire::WIRE_VERSION) {
        return Err(CliError::Refused(format!(
            "not signed: the node speaks wire format {format} and this CLI {}: use a CLI of the node's version",
            grapevine_proto::wire::WIRE_VERSION
        )));
    }
    Ok(())
}

fn decode_change(text: &str) -> Result<Change, String> {
    let bytes = hex::decode(text).map_err(|error| format!("the prepared change is not hex: {error}"))?;
    match postcard::take_from_bytes(&bytes) {
        Ok((change, [])) => Ok(change),
        _ => Err("the prepared change does not decode".into()),
    }
}

/// The config key and value of a revocation of `public`.
pub fn revocation(public: &str, reason: Option<String>) -> Result<(String, Value), CliError> {
    let key = public.parse::<PublicKey>().map_err(|error| CliError::Usage(error.to_string()))?;
    Ok((revocation_key(&key).to_string(), serde_json::json!({ "key": key.to_string(), "reason": reason })))
}

fn change_hex(change: &Change) -> String {
    hex::encode(postcard::to_stdvec(change).expect("a change always encodes"))
}

fn check_intent(change: &Change, intent: &Intent) -> Result<(), String> {
    if let Some(op) = change.ops.iter().find(|op| !intent.keys.contains(op.key().as_str())) {
        return Err(format!("the node prepared a change of {} {}, which was not asked for", op.kind(), op.key()));
    }
    for (key, expected) in &intent.values {
        let carried = change.ops.iter().find_map(|op| match op {
            grapevine_proto::Op::PutConfig { key: k, value, .. } if k.as_str() == key => Some(value.to_value()),
            _ => None,
        });
        if carried.as_ref() != Some(expected) {
            return Err(format!("the node prepared config {key} = {carried:?}, not the value asked for"));
        }
    }
    for (key, expected) in &intent.flags {
        let carried = change.ops.iter().find_map(|op| match op {
            grapevine_proto::Op::SetFlag { key: k, definition } if k.as_str() == key => {
                FlagDefinition::parse(k, definition).ok().map(|flag| (k, flag))
            }
            _ => None,
        });
        if !carried.is_some_and(|(k, flag)| expected.allows(k, &flag)) {
            return Err(format!("the node prepared flag {key} otherwise than asked ({expected:?})"));
        }
    }
    if let Some(control) = change.controls.iter().find(|c| Some(c.target()) != intent.control_of.as_ref()) {
        return Err(format!("the node prepared a control of {}, which was not asked for", control.target()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_refuse_a_mismatched_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let mut file = KeyFile::generate(&path, "alice".parse().unwrap()).unwrap();
        file.write(false).unwrap();
        assert!(file.write(false).is_err(), "an existing key file is never overwritten by `key new`");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let read = KeyFile::read(&path).unwrap();
        assert_eq!(read.key.public(), file.key.public());
        let error = read.signer().unwrap_err().to_string();
        assert!(error.contains("has no delegation"), "{error}");

        let root = SecretKey::from_seed([1; 32]);
        file.delegation = Some(root.delegate("c", file.name.clone(), file.key.public(), vec![], u64::MAX));
        file.write(true).unwrap();
        assert!(KeyFile::read(&path).unwrap().signer().is_ok());

        let text = std::fs::read_to_string(&path).unwrap();
        let other = SecretKey::from_seed([2; 32]).public().to_string();
        std::fs::write(&path, text.replace(&file.key.public().to_string(), &other)).unwrap();
        let error = KeyFile::read(&path).unwrap_err().to_string();
        assert!(error.contains("is not the secret's public key"), "{error}");
    }

    #[test]
    fn a_prepared_change_other_than_asked_is_not_signed() {
        let put = |key: &str, value: &str| grapevine_proto::Op::PutConfig {
            key: key.parse().unwrap(),
            value: grapevine_proto::JsonText::try_from(value.to_owned()).unwrap(),
            schema: None,
        };
        let intent = Intent {
            keys: ["limits".to_owned()].into(),
            values: vec![("limits".to_owned(), serde_json::json!(5))],
            ..Intent::default()
        };
        check_intent(&Change::with_ops(vec![put("limits", "5")]), &intent).unwrap();
        let other_value = check_intent(&Change::with_ops(vec![put("limits", "6")]), &intent).unwrap_err();
        assert!(other_value.contains("not the value asked for"), "{other_value}");
        let extra = check_intent(&Change::with_ops(vec![put("limits", "5"), put("admins", "1")]), &intent).unwrap_err();
        assert!(extra.contains("config admins"), "{extra}");
        let mut control = Change::with_ops(vec![]);
        control.controls.push(grapevine_proto::policy::Control::Resume { target: "n1.1".parse().unwrap() });
        assert!(check_intent(&control, &intent).is_err());

        let flag = |on: bool| grapevine_proto::Op::SetFlag {
            key: "beta".parse().unwrap(),
            definition: FlagDefinition::boolean(on).to_json_text().unwrap(),
        };
        let on = FlagIntent::Serving { variant: "on".into(), enabled: true };
        let intent = Intent { keys: ["beta".to_owned()].into(), flags: vec![("beta".into(), on)], ..Intent::default() };
        check_intent(&Change::with_ops(vec![flag(true)]), &intent).unwrap();
        let off = check_intent(&Change::with_ops(vec![flag(false)]), &intent).unwrap_err();
        assert!(off.contains("flag beta otherwise than asked"), "{off}");
        let file = serde_json::to_value(FlagDefinition::boolean(false)).unwrap();
        let intent = Intent {
            keys: ["beta".to_owned()].into(),
            flags: vec![("beta".into(), FlagIntent::Definition(file))],
            ..Intent::default()
        };
        check_intent(&Change::with_ops(vec![flag(false)]), &intent).unwrap();
        assert!(check_intent(&Change::with_ops(vec![flag(true)]), &intent).is_err());
    }

    #[test]
    fn a_prepared_start_other_than_asked_is_not_signed() {
        assert!(StartIntent::allows(None, 1_000, None));
        assert!(!StartIntent::allows(None, 1_000, Some(5_000)), "a start nobody asked for");
        assert!(!StartIntent::allows(Some(StartIntent::At(5_000)), 1_000, None), "a start dropped");
        assert!(StartIntent::allows(Some(StartIntent::At(5_000)), 1_000, Some(5_000)));
        assert!(!StartIntent::allows(Some(StartIntent::At(5_000)), 1_000, Some(5_001)));
        assert!(StartIntent::allows(Some(StartIntent::In(3_000)), 1_000, Some(4_000)));
        assert!(!StartIntent::allows(Some(StartIntent::In(3_000)), 1_000, Some(90_000)));
    }
}
