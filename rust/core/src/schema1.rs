//! Docker schema1 manifests (deprecated): the layer-chain check and the
//! canonical payload of a signed ("prettyjws") manifest.
//!
//! Both follow docker: the chain rules are those of moby's
//! `fixManifestLayers`, the payload is what libtrust's
//! `ParsePrettySignature` + `Payload` give (and so what a schema1 digest is
//! computed over).

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::Value;

/// Why a schema1 manifest cannot be used. Messages use docker's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Schema1Error(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, Schema1Error> {
    Err(Schema1Error(message.into()))
}

fn is_layer_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks the chain of a schema1 manifest's history and removes repeats.
///
/// `layers` holds each history entry's v1 `(id, parent)` in manifest order,
/// the top layer first (`parent` is "" when absent). Returns the indexes to
/// keep, in the same order. As docker's `fixManifestLayers`:
/// - every id is 64 lowercase hex;
/// - the bottom layer has no parent (unless `allow_base_parent`, which is
///   docker's rule on Windows, whose base layers point outside the manifest);
/// - an id that appears again, not next to itself, is an error;
/// - of adjacent repeats only the lowest (last) entry is kept;
/// - each kept layer's parent is the id of the layer below it.
///
/// Runs in linear time; never loops on a cyclic chain.
pub fn fix_layers<S: AsRef<str>>(
    layers: &[(S, S)],
    allow_base_parent: bool,
) -> Result<Vec<usize>, Schema1Error> {
    let Some((_, base_parent)) = layers.last() else {
        return err("no FSLayers in manifest");
    };
    for (id, _) in layers {
        let id = id.as_ref();
        if !is_layer_id(id) {
            // Escaped: the id comes from the manifest, the message is one line.
            return err(format!("image ID '{}' is invalid", id.escape_debug()));
        }
    }
    if !base_parent.as_ref().is_empty() && !allow_base_parent {
        return err("invalid parent ID in the base layer of the image");
    }
    let mut seen = std::collections::HashSet::with_capacity(layers.len());
    let mut last: Option<&str> = None;
    for (id, _) in layers {
        let id = id.as_ref();
        if last != Some(id) && !seen.insert(id) {
            return err(format!("ID {id} appears multiple times in manifest"));
        }
        last = Some(id);
    }
    let mut keep = Vec::with_capacity(layers.len());
    for i in 0..layers.len() {
        let Some((next_id, _)) = layers.get(i + 1) else {
            keep.push(i);
            break;
        };
        let (id, parent) = (&layers[i].0, &layers[i].1);
        if id.as_ref() == next_id.as_ref() {
            continue; // a repeat: the entry below stands for both
        }
        if parent.as_ref() != next_id.as_ref() {
            return err(format!(
                "invalid parent ID. Expected {}, got {}",
                next_id.as_ref(),
                parent.as_ref().escape_debug()
            ));
        }
        keep.push(i);
    }
    Ok(keep)
}

/// JOSE base64url: no padding required, padding tolerated.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The canonical payload of a schema1 manifest: what its digest covers.
///
/// A signed manifest ("prettyjws") carries `signatures`; each signature's
/// protected header says how long the signed prefix of the body is
/// (`formatLength`) and what closes it (`formatTail`, base64url). The payload
/// is `raw[..formatLength] + formatTail`; all signatures must agree. A body
/// without a `signatures` key is unsigned and is its own payload.
pub fn canonical_payload(raw: &[u8]) -> Result<Vec<u8>, Schema1Error> {
    let body: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => return err(format!("malformed schema1 manifest: not valid JSON ({e})")),
    };
    let Value::Object(body) = body else {
        return err("malformed schema1 manifest: expected a JSON object");
    };
    let Some(signatures) = body.get("signatures") else {
        return Ok(raw.to_vec());
    };
    let Value::Array(signatures) = signatures else {
        return err("error unmarshalling signatures: expected a list");
    };
    if signatures.is_empty() {
        return err("signed schema1 manifest has an empty signatures list");
    }
    let mut format_length: usize = 0;
    let mut format_tail: Vec<u8> = Vec::new();
    for sig in signatures {
        let protected = match sig.get("protected") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => "",
            Some(_) => return err("error unmarshalling signatures: protected must be a string"),
        };
        let header = match B64URL.decode(protected) {
            Ok(h) => h,
            Err(e) => return err(format!("base64 decode error: {e}")),
        };
        let header: Value = match serde_json::from_slice(&header) {
            Ok(Value::Object(h)) => Value::Object(h),
            Ok(_) => return err("error unmarshalling protected header: not an object"),
            Err(e) => return err(format!("error unmarshalling protected header: {e}")),
        };
        // Go reads the number as a float64 and truncates it to an int.
        let length = match header.get("formatLength").and_then(Value::as_f64) {
            Some(n) if n >= 0.0 && n.is_finite() => n as usize,
            Some(_) => return err("invalid format length"),
            None => return err("missing formatted length"),
        };
        let Some(tail) = header.get("formatTail").and_then(Value::as_str) else {
            return err("missing formatted tail");
        };
        let tail = match B64URL.decode(tail) {
            Ok(t) => t,
            Err(e) => return err(format!("base64 decode error on tail: {e}")),
        };
        if format_length == 0 {
            format_length = length;
        } else if format_length != length {
            return err("conflicting format length");
        }
        if format_tail.is_empty() {
            format_tail = tail;
        } else if format_tail != tail {
            return err("conflicting format tail");
        }
    }
    if format_length > raw.len() {
        return err("invalid format length");
    }
    let mut payload = Vec::with_capacity(format_length + format_tail.len());
    payload.extend_from_slice(&raw[..format_length]);
    payload.extend_from_slice(&format_tail);
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn chain(ids: &[char]) -> Vec<(String, String)> {
        // top first; each parent is the next id, the last has none
        ids.iter()
            .enumerate()
            .map(|(i, c)| {
                let parent = ids.get(i + 1).map(|p| id(*p)).unwrap_or_default();
                (id(*c), parent)
            })
            .collect()
    }

    #[test]
    fn valid_chain_keeps_everything() {
        assert_eq!(
            fix_layers(&chain(&['a', 'b', 'c']), false).unwrap(),
            [0, 1, 2]
        );
        assert_eq!(fix_layers(&chain(&['a']), false).unwrap(), [0]);
    }

    #[test]
    fn empty_is_an_error() {
        let none: Vec<(String, String)> = vec![];
        assert!(fix_layers(&none, false).is_err());
    }

    #[test]
    fn bad_hex_is_an_error() {
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            "g".repeat(64),
            String::new(),
        ] {
            let layers = vec![(bad.clone(), String::new())];
            let e = fix_layers(&layers, false).unwrap_err();
            assert_eq!(e.0, format!("image ID '{bad}' is invalid"));
        }
    }

    #[test]
    fn base_layer_with_parent() {
        let layers = vec![(id('a'), id('b'))];
        let e = fix_layers(&layers, false).unwrap_err();
        assert_eq!(e.0, "invalid parent ID in the base layer of the image");
        assert_eq!(fix_layers(&layers, true).unwrap(), [0]);
    }

    #[test]
    fn repeated_non_adjacent_id() {
        // a -> b -> a: a cycle; docker errors instead of deadlocking
        let layers = vec![
            (id('a'), id('b')),
            (id('b'), id('a')),
            (id('a'), String::new()),
        ];
        let e = fix_layers(&layers, false).unwrap_err();
        assert_eq!(
            e.0,
            format!("ID {} appears multiple times in manifest", id('a'))
        );
    }

    #[test]
    fn adjacent_repeats_are_dropped_keeping_the_lowest() {
        // top 'a' twice (the top one with a stale parent, as docker ignores it),
        // then 'b' three times
        let layers = vec![
            (id('a'), String::new()),
            (id('a'), id('b')),
            (id('b'), id('c')),
            (id('b'), id('c')),
            (id('b'), String::new()),
        ];
        assert_eq!(fix_layers(&layers, false).unwrap(), [1, 4]);
    }

    #[test]
    fn wrong_parent() {
        let layers = vec![(id('a'), id('c')), (id('b'), String::new())];
        let e = fix_layers(&layers, false).unwrap_err();
        assert_eq!(
            e.0,
            format!("invalid parent ID. Expected {}, got {}", id('b'), id('c'))
        );
        let layers = vec![(id('a'), String::new()), (id('b'), String::new())];
        let e = fix_layers(&layers, false).unwrap_err();
        assert_eq!(
            e.0,
            format!("invalid parent ID. Expected {}, got ", id('b'))
        );
    }

    fn protected(length: usize, tail: &[u8]) -> String {
        let header = format!(
            r#"{{"formatLength":{length},"formatTail":"{}","time":"2024-01-01T00:00:00Z"}}"#,
            B64URL.encode(tail)
        );
        B64URL.encode(header)
    }

    fn signed(payload: &str) -> Vec<u8> {
        // as libtrust writes it: the payload without its closing "\n}",
        // then the signatures, then the tail
        let cut = payload.rfind('\n').unwrap();
        let (head, tail) = payload.split_at(cut);
        let sig = format!(
            r#",
   "signatures": [
      {{
         "header": {{"alg": "ES256"}},
         "signature": "c2ln",
         "protected": "{}"
      }}
   ]"#,
            protected(head.len(), tail.as_bytes())
        );
        format!("{head}{sig}{tail}").into_bytes()
    }

    #[test]
    fn signed_payload_strips_signatures() {
        let payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"x\"\n}";
        let raw = signed(payload);
        assert_ne!(raw, payload.as_bytes());
        assert_eq!(canonical_payload(&raw).unwrap(), payload.as_bytes());
    }

    #[test]
    fn unsigned_payload_is_the_body() {
        let raw = b"{\"schemaVersion\": 1}";
        assert_eq!(canonical_payload(raw).unwrap(), raw);
    }

    #[test]
    fn payload_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "malformed"),
            (b"[]".to_vec(), "malformed"),
            (br#"{"signatures": {}}"#.to_vec(), "signatures"),
            (br#"{"signatures": []}"#.to_vec(), "empty"),
            (
                br#"{"signatures": [{"protected": "!!"}]}"#.to_vec(),
                "base64",
            ),
            (
                format!(
                    r#"{{"signatures": [{{"protected": "{}"}}]}}"#,
                    protected(10_000, b"}")
                )
                .into_bytes(),
                "invalid format length",
            ),
            (
                format!(
                    r#"{{"signatures": [{{"protected": "{}"}}]}}"#,
                    B64URL.encode(r#"{"formatTail":"fQ"}"#)
                )
                .into_bytes(),
                "missing formatted length",
            ),
            (
                format!(
                    r#"{{"signatures": [{{"protected": "{}"}}, {{"protected": "{}"}}]}}"#,
                    protected(2, b"}"),
                    protected(3, b"}")
                )
                .into_bytes(),
                "conflicting format length",
            ),
        ];
        for (raw, want) in cases {
            let e = canonical_payload(&raw).unwrap_err();
            assert!(e.0.contains(want), "{}: {e}", String::from_utf8_lossy(&raw));
        }
    }
}
