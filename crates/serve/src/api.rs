//! The JSON bodies of the endpoints (docs/serve.md, docs/serve.openapi.json), and the one
//! error shape every endpoint answers with: `{"error": "…"}` and a 4xx/5xx status.
//!
//! Parsing says what was wrong and where: malformed JSON is a 400 with serde's line and
//! column, a well-formed body of the wrong shape a 422 naming the field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An answer other than success: the HTTP status and a message for a person.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Seconds for `Retry-After` (a full queue).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 422: well-formed JSON that is not what the endpoint takes.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, message)
    }

    /// The body: `{"error": message}`.
    pub fn body(&self) -> Value {
        serde_json::json!({ "error": self.message })
    }
}

/// Parses a request body: 400 for malformed JSON, 422 for a wrong shape or type.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(400, "empty body: expected a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid request: {e}")),
        _ => ApiError::new(400, format!("malformed JSON: {e}")),
    })
}

/// `POST /predict`: `{"pairs": [["premise", "hypothesis"], …]}`; a pair may also be
/// `{"text_a": …, "text_b": …}`, the shape of `tsumugi score`'s input lines.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub pairs: Vec<Value>,
}

impl PredictRequest {
    /// The pairs as strings; an error names the first bad one by its index.
    pub fn into_pairs(self) -> Result<Vec<(String, String)>, ApiError> {
        self.pairs
            .into_iter()
            .enumerate()
            .map(|(i, p)| pair(i, p))
            .collect()
    }
}

fn pair(i: usize, p: Value) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "pairs[{i}]: expected [\"text_a\", \"text_b\"] or {{\"text_a\": …, \"text_b\": …}} \
             with two strings, found {}",
            short(&p)
        ))
    };
    match &p {
        Value::Array(v) => match v.as_slice() {
            [Value::String(a), Value::String(b)] => Ok((a.clone(), b.clone())),
            _ => Err(bad()),
        },
        Value::Object(o) => match (o.get("text_a"), o.get("text_b")) {
            (Some(Value::String(a)), Some(Value::String(b))) => Ok((a.clone(), b.clone())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A value for an error message, cut to a readable length.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// One pair's answer in `POST /predict`.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub logits: Vec<f32>,
    /// Sigmoid of the logit (one-label heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Softmax of the logits (several labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probs: Option<Vec<f32>>,
    /// The most probable label's index (several labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<usize>,
}

/// `POST /rerank`, the request of text-embeddings-inference's `/rerank`, so its clients
/// work unchanged. `truncate` and `truncation_direction` are accepted and ignored: pairs
/// are always truncated to `--max-length` (longest first).
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    /// The logit instead of the head's activation of it (sigmoid unless the model records another).
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
    #[serde(default)]
    pub truncate: Option<bool>,
    #[serde(default)]
    pub truncation_direction: Option<String>,
}

/// One text's answer in `POST /rerank`; the answer is sorted by `score`, highest first.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    pub index: usize,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Sorts rerank results best first; equal scores keep input order.
pub fn rank(mut results: Vec<Ranked>) -> Vec<Ranked> {
    results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    results
}

/// `POST {prefix}/adapter/load`: a registry version (`{"name": "nli", "version": 3}`;
/// without `version`, the current one) or a directory inside an adapter root
/// (`{"path": "nli-2026-12/adapter"}`). `follow: true` with a `name` follows the registry
/// from then on, as `--follow` does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    pub name: Option<String>,
    pub version: Option<VersionArg>,
    pub path: Option<String>,
    #[serde(default)]
    pub follow: bool,
}

/// A version as a number (`3`) or as `tsumugi adapters` writes it (`"v3"`, `"3"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VersionArg {
    Number(u32),
    Text(String),
}

/// What a load request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadTarget {
    Registry {
        name: String,
        version: Option<u32>,
        follow: bool,
    },
    Path(String),
}

impl LoadRequest {
    pub fn target(self) -> Result<LoadTarget, ApiError> {
        match (self.name, self.path) {
            (Some(name), None) => {
                let version = match self.version {
                    None => None,
                    Some(VersionArg::Number(n)) => Some(n),
                    Some(VersionArg::Text(t)) => Some(
                        t.strip_prefix('v')
                            .unwrap_or(&t)
                            .parse::<u32>()
                            .map_err(|_| {
                                ApiError::invalid(format!(
                                    "version: expected a number or \"vN\", found {t:?}"
                                ))
                            })?,
                    ),
                };
                if self.follow && version.is_some() {
                    return Err(ApiError::invalid(
                        "follow: true follows the current version; leave out version",
                    ));
                }
                Ok(LoadTarget::Registry {
                    name,
                    version,
                    follow: self.follow,
                })
            }
            (None, Some(path)) if self.version.is_none() && !self.follow => {
                Ok(LoadTarget::Path(path))
            }
            (None, Some(_)) => Err(ApiError::invalid(
                "version and follow go with name (a registry adapter), not with path",
            )),
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "give either name (a registry adapter) or path (a directory inside an adapter root), not both",
            )),
            (None, None) => Err(ApiError::invalid(
                "expected {\"name\": \"<registry name>\", \"version\": N} or {\"path\": \"<dir inside an adapter root>\"}",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_400_and_a_wrong_type_is_422_naming_the_place() {
        let e = parse::<PredictRequest>(b"{\"pairs\": [").unwrap_err();
        assert_eq!(e.status, 400, "{e:?}");
        assert!(e.message.contains("line 1"), "{}", e.message);
        let e = parse::<PredictRequest>(b"{\"pairs\": 3}").unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.message.contains("expected a sequence"), "{}", e.message);
        let req: PredictRequest = parse(br#"{"pairs": [["a","b"], {"text_a":"c"}]}"#).unwrap();
        let e = req.into_pairs().unwrap_err();
        assert!(e.message.starts_with("pairs[1]:"), "{}", e.message);
    }

    #[test]
    fn both_pair_shapes_are_accepted() {
        let req: PredictRequest =
            parse(br#"{"pairs": [["a","b"], {"text_a":"c","text_b":"d","id":1}]}"#).unwrap();
        assert_eq!(
            req.into_pairs().unwrap(),
            vec![("a".into(), "b".into()), ("c".into(), "d".into())]
        );
    }

    #[test]
    fn load_targets() {
        let t = |s: &str| parse::<LoadRequest>(s.as_bytes()).and_then(LoadRequest::target);
        assert_eq!(
            t(r#"{"name":"nli","version":"v3"}"#).unwrap(),
            LoadTarget::Registry {
                name: "nli".into(),
                version: Some(3),
                follow: false
            }
        );
        assert_eq!(
            t(r#"{"path":"a/b"}"#).unwrap(),
            LoadTarget::Path("a/b".into())
        );
        assert_eq!(t(r#"{"name":"x","path":"y"}"#).unwrap_err().status, 422);
        assert_eq!(t(r#"{}"#).unwrap_err().status, 422);
        assert_eq!(
            t(r#"{"name":"x","version":"three"}"#).unwrap_err().status,
            422
        );
        assert_eq!(t(r#"{"nmae":"x"}"#).unwrap_err().status, 422);
    }

    #[test]
    fn rerank_sorts_best_first_and_keeps_ties_in_order() {
        let r = |index, score| Ranked {
            index,
            score,
            text: None,
        };
        let out = rank(vec![r(0, 0.1), r(1, 0.9), r(2, 0.1), r(3, 0.5)]);
        let order: Vec<usize> = out.iter().map(|r| r.index).collect();
        assert_eq!(order, vec![1, 3, 0, 2]);
    }
}
