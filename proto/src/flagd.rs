//! flagd's operators as both evaluators read them: the interpreter (`targeting.rs`, over
//! datalogic-rs) and the compiled tree (`compiled.rs`) give the same answers because they share
//! these, which sit below both.
//!
//! - `Fractional`, a cluster's `fractional` scheme (`v2` or `cbor`; `targeting.rs` says what
//!   each buckets by), and `fractional_pick`, the variant a bucket falls in.
//! - `cbor`: the canonical CBOR encoding of a JSON value (RFC 8949 core deterministic encoding),
//!   the `cbor` scheme's bucketing key.
//! - `js_string` and `py_string`: a value as flagd's JavaScript and Python evaluators write it
//!   (in `cat`, and the `v2` scheme's bucketing key).
//! - `version` and `version_of_text`: a `sem_ver` operand as flagd reads it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `fractional` bucketing scheme of a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fractional {
    /// flagd's high-precision string scheme (flagd's JavaScript core, the testbed's v2).
    #[default]
    V2,
    /// The CBOR-keyed scheme (flagd's Python core 2.x, the Rust flagd engine).
    Cbor,
}

/// flagd's `fractional` choice: the variant whose cumulative weight first passes the bucket of
/// `hash` among `total` (shared by the interpreter's operator and the compiled tree).
pub(crate) fn fractional_pick<T>(hash: u32, total: u64, weighted: impl IntoIterator<Item = (T, u64)>) -> Option<T> {
    let bucket = (u64::from(hash) * total) >> 32;
    let mut cumulative = 0;
    for (variant, weight) in weighted {
        cumulative += weight;
        if bucket < cumulative {
            return Some(variant);
        }
    }
    None
}

/// The canonical CBOR encoding of a JSON value (RFC 8949 core deterministic encoding):
/// shortest heads, integral numbers as integers, other floats in the shortest of half,
/// single and double precision that keeps the value, map keys sorted by their encoding.
pub fn cbor(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xf6),
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                head(0, unsigned, out);
            } else if let Some(signed) = number.as_i64() {
                head(1, (-1 - signed) as u64, out);
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                if float.fract() == 0.0 && float.abs() <= MAX_SAFE_INTEGER {
                    if float >= 0.0 {
                        head(0, float as u64, out);
                    } else {
                        head(1, (-1.0 - float) as u64, out);
                    }
                } else {
                    cbor_float(float, out);
                }
            }
        }
        Value::String(text) => {
            head(3, text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                cbor(item, out);
            }
        }
        Value::Object(object) => {
            let mut entries: Vec<(Vec<u8>, Vec<u8>)> = object
                .iter()
                .map(|(key, value)| {
                    let (mut k, mut v) = (Vec::new(), Vec::new());
                    cbor(&Value::String(key.clone()), &mut k);
                    cbor(value, &mut v);
                    (k, v)
                })
                .collect();
            entries.sort();
            head(5, entries.len() as u64, out);
            for (key, value) in entries {
                out.extend(key);
                out.extend(value);
            }
        }
    }
}

fn head(major: u8, argument: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match argument {
        0..=23 => out.push(major | argument as u8),
        24..=0xff => out.extend([major | 24, argument as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((argument as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend((argument as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend(argument.to_be_bytes());
        }
    }
}

fn cbor_float(float: f64, out: &mut Vec<u8>) {
    let single = float as f32;
    if f64::from(single) == float || float.is_nan() {
        if let Some(half) = to_half(single) {
            out.push(0xf9);
            out.extend(half.to_be_bytes());
        } else {
            out.push(0xfa);
            out.extend(single.to_be_bytes());
        }
    } else {
        out.push(0xfb);
        out.extend(float.to_be_bytes());
    }
}

/// The half-precision bits of `value`, when half precision holds it exactly.
fn to_half(value: f32) -> Option<u16> {
    if value.is_nan() {
        return Some(0x7e00);
    }
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    if value.is_infinite() {
        return Some(sign | 0x7c00);
    }
    if value == 0.0 {
        return Some(sign);
    }
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = bits & 0x7f_ffff;
    if (-14..=15).contains(&exponent) {
        // Normal half: 10 mantissa bits.
        if mantissa & 0x1fff != 0 {
            return None;
        }
        return Some(sign | (((exponent + 15) as u16) << 10) | (mantissa >> 13) as u16);
    }
    if (-24..-14).contains(&exponent) {
        // Subnormal half.
        let full = mantissa | 0x80_0000;
        let shift = (-exponent - 14 + 13) as u32;
        if full & ((1 << shift) - 1) != 0 {
            return None;
        }
        return Some(sign | (full >> shift) as u16);
    }
    None
}

/// A version as flagd reads it: an optional `v`, missing minor and patch as 0, build metadata
/// ignored; numbers (`1.2`) read as their text.
pub(crate) fn version(value: &Value) -> Option<semver::Version> {
    match value {
        Value::String(text) => version_of_text(text),
        Value::Number(number) => version_of_text(&number.to_string()),
        _ => None,
    }
}

/// [`version`] of a text. A plain `major.minor.patch` (the common case) is read without
/// allocating; anything else goes through `semver`'s parser.
pub(crate) fn version_of_text(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    if let Some([major, minor, patch]) = plain_version(text.as_bytes()) {
        return Some(semver::Version::new(major, minor, patch));
    }
    let text = text.split('+').next().unwrap_or(text);
    let (core, pre) = match text.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (text, None),
    };
    let mut parts = [0u64; 3];
    for (count, part) in core.split('.').enumerate() {
        if count == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // semver refuses leading zeros and numbers past u64: its parser says so below.
        if pre.is_some() || (part.len() > 1 && part.starts_with('0')) {
            return version_parsed(core, pre);
        }
        parts[count] = part.parse().ok()?;
    }
    Some(semver::Version::new(parts[0], parts[1], parts[2]))
}

/// `major[.minor[.patch]]` of digits without leading zeros, each below 10^19, read in one pass:
/// the common case; `None` sends anything else through the general reading.
fn plain_version(text: &[u8]) -> Option<[u64; 3]> {
    let mut parts = [0u64; 3];
    for (count, part) in text.split(|b| *b == b'.').enumerate() {
        let leading_zero = part.len() > 1 && part[0] == b'0';
        if count == 3 || part.is_empty() || part.len() > 19 || leading_zero {
            return None;
        }
        parts[count] = part.iter().try_fold(0u64, |n, b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))?;
    }
    Some(parts)
}

fn version_parsed(core: &str, pre: Option<&str>) -> Option<semver::Version> {
    let mut parts: Vec<&str> = core.split('.').collect();
    parts.resize(3, "0");
    let full = match pre {
        Some(pre) => format!("{}-{pre}", parts.join(".")),
        None => parts.join("."),
    };
    let mut version = semver::Version::parse(&full).ok()?;
    version.build = semver::BuildMetadata::EMPTY;
    Some(version)
}

/// A value as JavaScript's `String()` writes it (how flagd's evaluators join and key values):
/// `3.0` is `3`, `true` is `true`, `null` is `null`, arrays join their items with commas and
/// objects are `[object Object]`.
pub fn js_string(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::String(text) => text.clone(),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                return integer.to_string();
            }
            if let Some(unsigned) = number.as_u64() {
                return unsigned.to_string();
            }
            let float = number.as_f64().unwrap_or(f64::NAN);
            if float.fract() == 0.0 && float.abs() < 1e21 { format!("{float:.0}") } else { float.to_string() }
        }
        Value::Array(items) => items
            .iter()
            .map(|item| if item.is_null() { String::new() } else { js_string(item) })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".to_owned(),
    }
}

/// The largest integer a double holds exactly: integral floats up to it count as integers in
/// the CBOR scheme (its reference evaluator's reading of a context).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A value as flagd's Python core writes it in `cat`: like [`js_string`], but booleans are
/// `True`/`False`, integral floats up to 2^53 are integers and other floats are Python's
/// `repr` (`2.5`, `1e+20`).
pub fn py_string(value: &Value) -> String {
    match value {
        Value::Bool(flag) => if *flag { "True" } else { "False" }.to_owned(),
        Value::Number(number) if number.as_i64().is_none() && number.as_u64().is_none() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            if float.fract() == 0.0 && float.abs() <= MAX_SAFE_INTEGER {
                format!("{float:.0}")
            } else {
                python_repr(float)
            }
        }
        Value::Array(items) => items
            .iter()
            .map(|item| if item.is_null() { String::new() } else { py_string(item) })
            .collect::<Vec<_>>()
            .join(","),
        other => js_string(other),
    }
}

/// Python's `repr` of a float: the shortest digits that read back, positional from 1e-4 up to
/// 1e16, else `d.ddde+XX`.
fn python_repr(float: f64) -> String {
    if !float.is_finite() {
        return if float.is_nan() {
            "nan".into()
        } else if float > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let magnitude = float.abs();
    if magnitude == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let text = float.to_string();
        return if text.contains('.') { text } else { format!("{text}.0") };
    }
    let text = format!("{float:e}");
    let (mantissa, exponent) = text.split_once('e').expect("exponent form");
    let exponent: i32 = exponent.parse().expect("an exponent");
    format!("{mantissa}e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_cbor_of_json_values() {
        let encode = |value: Value| {
            let mut out = Vec::new();
            cbor(&value, &mut out);
            hex::encode(out)
        };
        assert_eq!(encode(json!(0)), "00");
        assert_eq!(encode(json!(24)), "1818");
        assert_eq!(encode(json!(-1)), "20");
        assert_eq!(encode(json!(1000)), "1903e8");
        assert_eq!(encode(json!(1.0)), "01", "integral floats are integers");
        assert_eq!(encode(json!(1.5)), "f93e00");
        assert_eq!(encode(json!(100000.0)), "1a000186a0");
        assert_eq!(encode(json!(3.4028234663852886e38)), "fa7f7fffff");
        assert_eq!(encode(json!(1.1)), "fb3ff199999999999a");
        assert_eq!(encode(json!("a")), "6161");
        assert_eq!(encode(json!(["a", 1])), "82616101");
        assert_eq!(encode(json!({"b": 1, "a": 2})), "a2616102616201");
        assert_eq!(encode(json!(null)), "f6");
    }

    #[test]
    fn values_are_written_as_each_reference_evaluator_writes_them() {
        assert_eq!(js_string(&json!(3.0)), "3");
        assert_eq!(js_string(&json!(true)), "true");
        assert_eq!(js_string(&json!([1, "a", null])), "1,a,");
        assert_eq!(js_string(&json!({"a": 1})), "[object Object]");
        assert_eq!(py_string(&json!(true)), "True");
        assert_eq!(py_string(&json!(3.0)), "3");
        assert_eq!(py_string(&json!(2.5)), "2.5");
        assert_eq!(py_string(&json!(1e20)), "1e+20");
        assert_eq!(py_string(&json!(1.5e-5)), "1.5e-05");
        assert_eq!(py_string(&json!(null)), "null");
    }

    #[test]
    fn semver_reads_versions_as_flagd_does() {
        let v = |text: Value| version(&text).map(|v| v.to_string());
        assert_eq!(v(json!("v1.2.3")), Some("1.2.3".into()));
        assert_eq!(v(json!("1")), Some("1.0.0".into()));
        assert_eq!(v(json!(1.1)), Some("1.1.0".into()));
        assert_eq!(v(json!("1.0.0+build")), Some("1.0.0".into()));
        assert_eq!(v(json!("1.0.0-rc.1")), Some("1.0.0-rc.1".into()));
        assert_eq!(v(json!("not")), None);
        assert_eq!(v(json!("1.2.3.4")), None);
    }
}
