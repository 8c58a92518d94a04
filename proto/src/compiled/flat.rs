//! The request's context laid flat, once per request: the members of its objects side by
//! side in one vector (an object's members contiguous, breadth-first), so that a variable's
//! path is found by scanning a few adjacent entries, lengths compared first, instead of
//! walking the nodes of an ordered map at each step (half of an evaluation of five
//! conditions over nested attributes went there). Large objects stay in their maps.

use serde_json::{Map, Value};

use super::Segment;
use super::run::{member, same_bytes};

/// Objects of at most this many members are laid flat; larger ones are searched in their map.
const FLAT_FIELDS: usize = 16;
/// At most this many members are laid flat in all (the rest are searched in their maps).
const FLAT_MEMBERS: usize = 256;

/// A context laid flat.
pub(crate) struct Flat<'a> {
    map: &'a Map<String, Value>,
    members: Vec<Member<'a>>,
    /// The context's own members, when laid flat.
    top: Option<Members>,
}

/// Where an object's members lie in [`Flat::members`].
#[derive(Clone, Copy)]
struct Members {
    start: u32,
    len: u32,
}

struct Member<'a> {
    key: &'a str,
    value: &'a Value,
    /// The value's own members, when it is an object laid flat.
    members: Option<Members>,
}

/// Where a path's walk stands.
enum At<'a> {
    Laid(Members),
    Map(&'a Map<String, Value>),
    Value(&'a Value),
}

impl<'a> Flat<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>) -> Flat<'a> {
        let mut flat = Flat { map, members: Vec::with_capacity(map.len().min(FLAT_FIELDS) * 2), top: None };
        flat.top = flat.lay(map);
        let mut next = 0;
        while next < flat.members.len() {
            if let Value::Object(object) = flat.members[next].value {
                flat.members[next].members = flat.lay(object);
            }
            next += 1;
        }
        flat
    }

    fn lay(&mut self, object: &'a Map<String, Value>) -> Option<Members> {
        if object.len() > FLAT_FIELDS || self.members.len() + object.len() > FLAT_MEMBERS {
            return None;
        }
        let start = self.members.len() as u32;
        self.members.extend(object.iter().map(|(key, value)| Member { key, value, members: None }));
        Some(Members { start, len: object.len() as u32 })
    }

    #[inline]
    fn find(&self, members: Members, name: &str) -> Option<&Member<'a>> {
        let (start, len) = (members.start as usize, members.len as usize);
        self.members[start..start + len].iter().find(|member| same_bytes(member.key.as_bytes(), name.as_bytes()))
    }

    /// The context's member `name`.
    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        match self.top {
            Some(members) => self.find(members, name).map(|member| member.value),
            None => member(self.map, name),
        }
    }

    /// The value at `path` (datalogic's reading: a numeric step indexes an array too).
    #[inline]
    pub(super) fn lookup(&self, path: &[Segment]) -> Option<&'a Value> {
        let mut at = self.top.map_or(At::Map(self.map), At::Laid);
        let mut found = None;
        for segment in path {
            let value = match at {
                At::Laid(members) => {
                    let member = self.find(members, segment.name())?;
                    at = member.members.map_or(At::Value(member.value), At::Laid);
                    member.value
                }
                At::Map(object) | At::Value(Value::Object(object)) => {
                    let value = member(object, segment.name())?;
                    at = At::Value(value);
                    value
                }
                At::Value(Value::Array(items)) => match segment {
                    Segment::FieldOrIndex(_, index) => {
                        let value = items.get(*index)?;
                        at = At::Value(value);
                        value
                    }
                    Segment::Field(_) => return None,
                },
                At::Value(_) => return None,
            };
            found = Some(value);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> Vec<Segment> {
        text.split('.')
            .map(|part| match part.parse::<usize>() {
                Ok(index) => Segment::FieldOrIndex(part.into(), index),
                Err(_) => Segment::Field(part.into()),
            })
            .collect()
    }

    #[test]
    fn paths_are_found_in_laid_objects_large_maps_and_arrays() {
        let large: Map<String, Value> = (0..FLAT_FIELDS + 1).map(|i| (format!("k{i}"), json!(i))).collect();
        let context = json!({
            "email": "ada@example.com",
            "user": {"tier": "gold", "tags": ["a", {"deep": true}], "large": large, "1": "one"},
            "large": large,
        });
        let map = context.as_object().unwrap();
        let flat = Flat::new(map);
        let at = |text: &str| flat.lookup(&path(text)).cloned();
        assert_eq!(at("email"), Some(json!("ada@example.com")));
        assert_eq!(at("user.tier"), Some(json!("gold")));
        assert_eq!(at("user.tags.1.deep"), Some(json!(true)));
        assert_eq!(at("user.large.k16"), Some(json!(16)));
        assert_eq!(at("large.k3"), Some(json!(3)));
        assert_eq!(at("user.1"), Some(json!("one")));
        assert_eq!(at("user.tags.x"), None);
        assert_eq!(at("email.length"), None);
        assert_eq!(at("missing"), None);
        assert_eq!(flat.get("email"), Some(&json!("ada@example.com")));
        // A context too large to lay flat is searched in its map.
        let top: Map<String, Value> = (0..FLAT_FIELDS + 1).map(|i| (format!("k{i}"), json!({"v": i}))).collect();
        let flat = Flat::new(&top);
        assert_eq!(flat.lookup(&path("k9.v")), Some(&json!(9)));
        assert_eq!(flat.get("k2"), Some(&json!({"v": 2})));
    }
}
