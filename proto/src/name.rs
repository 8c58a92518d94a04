//! Names: of a node (`NodeName`), a cell of the fleet (`CellName`), a flag or config key (`Key`), the author of a change
//! (`Author`) and a generation (`GenId`). Everything else in the crate is made of them, so they
//! sit at the bottom, below the rollout policy and the signatures a change carries.
//!
//! - `NodeName`, `Key` and `Author` check their alphabet and length in `TryFrom<String>`, and
//!   so while deserialized (`serde(try_from)`): a malformed name from a peer fails to decode.
//!   `Author::lossy` makes an author of any text (a login, a host name).
//! - `GenId { origin, seq }` prints and parses as `origin.seq` (`seq` from 1).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::{MAX_AUTHOR_BYTES, MAX_KEY_BYTES, MAX_NODE_NAME_BYTES};

/// The name of a node: 1 to 32 bytes of ASCII letters, digits, `-` and `_`.
///
/// Shared, not copied: a name is held in every version vector, report, member list and wave
/// that mentions its node, so a clone only counts a reference (a fleet of 10,000 simulated
/// nodes holds each name many million times).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeName(Arc<str>);

/// Written as the string it is, without the copy a `String` would take.
impl Serialize for NodeName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = ValidationError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if !NodeName::is_valid(&name) {
            return Err(ValidationError::NodeName { found: name });
        }
        Ok(NodeName(name.into()))
    }
}

impl NodeName {
    /// Whether `name` is a node name: what [`NodeName::try_from`] takes, checked without a copy.
    pub fn is_valid(name: &str) -> bool {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        !name.is_empty() && name.len() <= MAX_NODE_NAME_BYTES && name.chars().all(valid_char)
    }
}

/// A name compares, orders and hashes as its text (all derived from `Arc<str>`'s), so maps
/// keyed by names are looked up by `&str` without building a name.
impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeName::try_from(s.to_owned())
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0.to_string()
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a cell (`docs/protocol.md`, "Cells"): what a node name may be, 1 to 32 bytes of
/// ASCII letters, digits, `-` and `_` (a zone such as `eu-west-1a` is one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CellName(Arc<str>);

impl CellName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CellName {
    type Error = ValidationError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if !NodeName::is_valid(&name) {
            return Err(ValidationError::CellName { found: name });
        }
        Ok(CellName(name.into()))
    }
}

impl FromStr for CellName {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CellName::try_from(s.to_owned())
    }
}

impl From<CellName> for String {
    fn from(name: CellName) -> String {
        name.0.to_string()
    }
}

impl fmt::Display for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A flag or config key: 1 to 128 bytes of ASCII letters, digits, `-`, `_`, `.` and `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = ValidationError;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.chars().all(valid_char) {
            return Err(ValidationError::Key { found: key });
        }
        Ok(Key(key))
    }
}

impl FromStr for Key {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Key::try_from(s.to_owned())
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who submitted a change, as the client named itself (`alice@laptop`, `ci/deploy-bot`): 1 to
/// 64 bytes of ASCII letters, digits and `-_.@/+:`. Recorded in the generation (format 4 on).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Author(String);

impl Author {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `text` made an author: characters outside the alphabet become `_`, and it is cut to
    /// the limit (`unknown` when empty). For names from the system (a login, a host name).
    pub fn lossy(text: &str) -> Author {
        let cleaned: String =
            text.chars().map(|c| if Author::allowed(c) { c } else { '_' }).take(MAX_AUTHOR_BYTES).collect();
        Author(if cleaned.is_empty() { "unknown".to_owned() } else { cleaned })
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "-_.@/+:".contains(c)
    }
}

impl TryFrom<String> for Author {
    type Error = ValidationError;

    fn try_from(author: String) -> Result<Self, Self::Error> {
        if author.is_empty() || author.len() > MAX_AUTHOR_BYTES || !author.chars().all(Author::allowed) {
            return Err(ValidationError::Author { found: author });
        }
        Ok(Author(author))
    }
}

impl FromStr for Author {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Author::try_from(s.to_owned())
    }
}

impl From<Author> for String {
    fn from(author: Author) -> String {
        author.0
    }
}

impl fmt::Display for Author {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of a generation: the node that accepted it and that node's sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GenId {
    pub origin: NodeName,
    pub seq: u64,
}

impl fmt::Display for GenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.origin, self.seq)
    }
}

impl FromStr for GenId {
    type Err = ValidationError;

    /// Parses the `origin.seq` form that [`fmt::Display`] prints.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ValidationError::GenId { found: s.to_owned() };
        let (origin, seq) = s.rsplit_once('.').ok_or_else(invalid)?;
        let seq = seq.parse::<u64>().map_err(|_| invalid())?;
        let origin = origin.parse::<NodeName>().map_err(|_| invalid())?;
        if seq == 0 {
            return Err(invalid());
        }
        Ok(GenId { origin, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_checked() {
        assert!("n1".parse::<NodeName>().is_ok());
        assert!("".parse::<NodeName>().is_err());
        assert!("a.b".parse::<NodeName>().is_err());
        assert!("x".repeat(33).parse::<NodeName>().is_err());
        for name in ["eu-west-1a", "n1", "a.b", "", "with space"] {
            assert_eq!(name.parse::<CellName>().is_ok(), name.parse::<NodeName>().is_ok(), "{name:?}");
        }
        let refused = "a.b".parse::<CellName>().expect_err("a dot is not in a cell name").to_string();
        assert!(refused.contains("cell name must be") && refused.contains("\"a.b\""), "{refused}");
        assert!("checkout.new-flow".parse::<Key>().is_ok());
        assert!("with space".parse::<Key>().is_err());
        assert!("k".repeat(129).parse::<Key>().is_err());
    }

    #[test]
    fn gen_id_round_trips_through_text() {
        let id: GenId = "node-1.42".parse().unwrap();
        assert_eq!(id.origin.as_str(), "node-1");
        assert_eq!(id.seq, 42);
        assert_eq!(id.to_string(), "node-1.42");
        assert!("node-1".parse::<GenId>().is_err());
        assert!("node-1.0".parse::<GenId>().is_err());
        assert!("node-1.x".parse::<GenId>().is_err());
    }

    #[test]
    fn system_names_become_authors() {
        assert_eq!(Author::lossy("ada lovelace@host.example").as_str(), "ada_lovelace@host.example");
        assert_eq!(Author::lossy("").as_str(), "unknown");
        assert_eq!(Author::lossy(&"x".repeat(100)).as_str().len(), MAX_AUTHOR_BYTES);
    }
}
