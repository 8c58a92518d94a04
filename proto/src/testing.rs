//! Helpers for tests here and in other crates (feature `testsuite`): never in the product.

use crate::hlc::Stamp;
use crate::model::{Change, GenId, Generation, GenerationBody, JsonText, Op};

/// A sealed generation `origin.seq`, stamped at `wall_ms`, that puts config `key` = `value`
/// (JSON text).
pub fn put(origin: &str, seq: u64, wall_ms: u64, key: &str, value: &str) -> Generation {
    GenerationBody {
        id: GenId { origin: origin.parse().expect("a valid node name"), seq },
        hlc: Stamp { wall_ms, logical: 0 },
        members: vec![],
        groups: vec![],
        change: Change::with_ops(vec![Op::PutConfig {
            key: key.parse().expect("a valid key"),
            value: JsonText::try_from(value.to_owned()).expect("valid JSON"),
            schema: None,
        }]),
        author: None,
        signed: None,
    }
    .seal()
}
