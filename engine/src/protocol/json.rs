//! A small JSON object writer: appends to a byte buffer, escapes strings, builds no tree.

use std::io::Write;

/// Writes one JSON object into `out`; call [`Obj::end`] to close it.
///
/// Hot path: writes straight into the caller's reusable buffer, no allocation of its own.
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens an object at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    /// A field whose value is JSON text already (written as it is).
    pub fn raw(mut self, key: &str, json: &[u8]) -> Self {
        self.key(key);
        self.out.extend_from_slice(json);
        self
    }

    /// A string field.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    /// A string field, or nothing when `value` is `None`.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.str(key, v),
            None => self,
        }
    }

    /// An unsigned integer field.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// A signed integer field.
    pub fn i64(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    /// A number field; non-finite values are written as `null` (JSON has no NaN).
    pub fn f64(mut self, key: &str, value: f64) -> Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.extend_from_slice(b"null");
        }
        self
    }

    /// A boolean field.
    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A `null` field.
    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// A field whose value `write` appends itself (an array or nested object).
    pub fn with(mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        self.key(key);
        write(self.out);
        self
    }

    /// Closes the object.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Appends `[item, item, …]`, each item written by `write`.
pub fn write_list<I: IntoIterator>(
    out: &mut Vec<u8>,
    items: I,
    mut write: impl FnMut(&mut Vec<u8>, I::Item),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// Appends `value` as a JSON string, escaping quotes, backslashes and control characters.
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// How deep [`write_value`] follows nested arrays and objects. A client controls the
/// input: a 64 KiB message can nest 30,000 levels, and following them recursively would
/// overflow a reactor's stack, which aborts the process.
pub const VALUE_DEPTH_MAX: usize = 32;

/// A value nested deeper than [`VALUE_DEPTH_MAX`]; nothing sensible is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// Appends a value parsed by simd-json (a tape value) as compact JSON: what a client sent
/// as an opaque payload (a call's SDP, say) goes on as it came. Not a hot path.
pub fn write_value(
    out: &mut Vec<u8>,
    value: simd_json::tape::Value<'_, '_>,
) -> Result<(), TooDeep> {
    write_nested(out, value, VALUE_DEPTH_MAX)
}

fn write_nested(
    out: &mut Vec<u8>,
    value: simd_json::tape::Value<'_, '_>,
    depth_left: usize,
) -> Result<(), TooDeep> {
    use simd_json::{prelude::*, ValueType};
    let nests = matches!(value.value_type(), ValueType::Array | ValueType::Object);
    if nests && depth_left == 0 {
        return Err(TooDeep);
    }
    match value.value_type() {
        ValueType::String => write_str(out, value.as_str().unwrap_or_default()),
        ValueType::Bool => {
            let text: &[u8] = if value.as_bool() == Some(true) {
                b"true"
            } else {
                b"false"
            };
            out.extend_from_slice(text);
        }
        ValueType::I64 => {
            let _ = write!(out, "{}", value.as_i64().unwrap_or_default());
        }
        ValueType::U64 => {
            let _ = write!(out, "{}", value.as_u64().unwrap_or_default());
        }
        ValueType::F64 => match value.as_f64() {
            Some(f) if f.is_finite() => {
                let _ = write!(out, "{f:?}");
            }
            _ => out.extend_from_slice(b"null"),
        },
        ValueType::Array => {
            out.push(b'[');
            for (i, item) in value
                .as_array()
                .into_iter()
                .flat_map(|a| a.iter())
                .enumerate()
            {
                if i > 0 {
                    out.push(b',');
                }
                write_nested(out, item, depth_left - 1)?;
            }
            out.push(b']');
        }
        ValueType::Object => {
            out.push(b'{');
            let fields = value.as_object().into_iter().flat_map(|o| o.iter());
            for (i, (key, item)) in fields.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_nested(out, item, depth_left - 1)?;
            }
            out.push(b'}');
        }
        _ => out.extend_from_slice(b"null"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_parsed_value_is_written_back_as_it_came() {
        let text =
            r#"{"sdp":"v=0\r\n","n":[1,-2,3.5,18446744073709551615],"ok":true,"none":null,"o":{}}"#;
        let mut input = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut input).unwrap();
        let mut out = Vec::new();
        write_value(&mut out, tape.as_value()).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), text);
    }

    #[test]
    fn a_value_nested_past_the_bound_is_refused_not_followed() {
        let depth = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let mut ok = depth(VALUE_DEPTH_MAX).into_bytes();
        let tape = simd_json::to_tape(&mut ok).unwrap();
        assert_eq!(write_value(&mut Vec::new(), tape.as_value()), Ok(()));
        // 30,000 levels (what a 64 KiB message can hold) come back as an error at once.
        let mut deep = depth(30_000).into_bytes();
        let tape = simd_json::to_tape(&mut deep).unwrap();
        assert_eq!(write_value(&mut Vec::new(), tape.as_value()), Err(TooDeep));
    }

    #[test]
    fn writes_fields_in_order() {
        let mut out = Vec::new();
        Obj::new(&mut out)
            .str("type", "pong")
            .u64("ts", 5)
            .bool("ok", true)
            .null("x")
            .end();
        assert_eq!(out, br#"{"type":"pong","ts":5,"ok":true,"x":null}"#);
    }

    #[test]
    fn escapes_what_json_requires() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#""a\"b\\c\n\u0001é""#);
    }

    proptest! {
        #[test]
        fn any_string_round_trips_through_a_json_parser(s in any::<String>()) {
            let mut out = Vec::new();
            Obj::new(&mut out).str("k", &s).end();
            let mut value = simd_json::to_owned_value(&mut out).unwrap();
            use simd_json::prelude::*;
            prop_assert_eq!(value.get_mut("k").and_then(|v| v.as_str().map(str::to_owned)), Some(s));
        }
    }
}
