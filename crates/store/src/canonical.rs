//! The canonical encoding of JSON values that fingerprints hash: object keys sorted at every
//! level, no whitespace, so the same value always gives the same bytes.
//!
//! ```
//! let v: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": [true, "x"]}"#).unwrap();
//! let mut out = Vec::new();
//! tsumugi_store::canonical::write_canonical(&v, &mut out);
//! assert_eq!(out, br#"{"a":[true,"x"],"b":1}"#);
//! ```

use serde_json::Value;

/// JSON with object keys sorted at every level and no whitespace. `serde_json` is built with
/// `preserve_order`, so `with:` maps keep file order; sorting makes the encoding independent
/// of how a pipeline file orders its keys.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("string").as_bytes());
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(serde_json::to_string(other).expect("scalar").as_bytes()),
    }
}
