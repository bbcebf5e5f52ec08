//! Safetensors files with a canonical header, so that the same tensors always give the same
//! bytes.
//!
//! The `safetensors` crate serialises the header's `__metadata__` from a `HashMap`, whose
//! iteration order is random per process: two exports of the same weights differ in bytes and
//! in SHA-256 (the browser caches weights by hash; users diff and checksum files). Rewriting the
//! header with every JSON object's keys sorted makes the bytes a function of the tensors and
//! the metadata alone. The tensor data and its offsets (relative to the end of the header) are
//! unchanged, so any safetensors reader loads the result exactly as before.

use serde_json::{Map, Value};

/// A safetensors buffer whose header could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a safetensors buffer: {0}")]
pub struct HeaderError(String);

/// The same safetensors file with its JSON header's keys sorted (at every level), no
/// whitespace, and padded with spaces to a multiple of 8 bytes as the format recommends (the
/// tensor data then stays 8-byte aligned).
pub fn canonical_safetensors(bytes: &[u8]) -> Result<Vec<u8>, HeaderError> {
    let bad = |m: &str| HeaderError(m.to_string());
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than its 8-byte header length"))?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes))
        .map_err(|_| bad("header length does not fit in memory"))?;
    let header = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or_else(|| bad("header length past the end of the buffer"))?;
    let value: Value = serde_json::from_slice(header)
        .map_err(|e| HeaderError(format!("header is not JSON ({e})")))?;
    if !value.is_object() {
        return Err(bad("header is not a JSON object"));
    }
    let mut text = serde_json::to_string(&sorted(value)).expect("JSON values serialise");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let data = &bytes[8 + len..];
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// `value` with every object's entries inserted in key order (whether `serde_json`'s map keeps
/// insertion order or sorts, the serialised order is then sorted).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors buffer with `header` (padded as the format recommends) and `data`.
    fn buffer(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while h.len() % 8 != 0 {
            h.push(' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn key_order_no_longer_changes_the_bytes() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let tensor = r#""w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
        let a = buffer(
            &format!(r#"{{"__metadata__":{{"producer":"burn","format":"safetensors"}},{tensor}}}"#),
            &data,
        );
        let b = buffer(
            &format!(r#"{{{tensor},"__metadata__":{{"format":"safetensors","producer":"burn"}}}}"#),
            &data,
        );
        assert_ne!(a, b);
        let (ca, cb) = (
            canonical_safetensors(&a).unwrap(),
            canonical_safetensors(&b).unwrap(),
        );
        assert_eq!(ca, cb);
        // Canonical is a fixed point, keeps the data at the end and the header 8-aligned.
        assert_eq!(canonical_safetensors(&ca).unwrap(), ca);
        let n = u64::from_le_bytes(ca[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(&ca[8 + n..], &data);
        let header = std::str::from_utf8(&ca[8..8 + n]).unwrap().trim_end();
        assert_eq!(
            header,
            r#"{"__metadata__":{"format":"safetensors","producer":"burn"},"w":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}}"#
        );
    }

    #[test]
    fn broken_buffers_are_errors() {
        for (bytes, needle) in [
            (vec![1u8, 2], "shorter than"),
            (
                buffer("{}", &[]).into_iter().take(9).collect(),
                "past the end",
            ),
            (buffer("[1]", &[]), "not a JSON object"),
            (buffer("{nope", &[]), "not JSON"),
        ] {
            let e = canonical_safetensors(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
