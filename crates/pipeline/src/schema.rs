//! JSON Schema (draft 2020-12) of the pipeline format, for editors (`tsumugi schema`).
//!
//! Keys and their descriptions come from [`super::format`], the tables the loader checks
//! keys against; this file adds only each key's type. The built-in kinds come from
//! `tsumugi_stages::kinds()`. A test checks that every key of every table has a type here.

use serde_json::{Map, Value, json};

use super::format::{self, Keys};

const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]*$";
const DURATION_PATTERN: &str = "^([0-9]+(\\.[0-9]+)?(ms|s|sec|m|min|h|d))+$";

/// The type of a key, by table; None for a key this file does not know (a test fails then).
fn key_type(table: &str, key: &str) -> Option<Value> {
    let path = json!({"$ref": "#/$defs/path"});
    let paths = json!({"type": "array", "items": {"$ref": "#/$defs/path"}});
    let count = json!({"type": "integer", "minimum": 0});
    let duration = json!({"$ref": "#/$defs/duration"});
    Some(match (table, key) {
        ("top", "name") => json!({"type": "string", "pattern": NAME_PATTERN}),
        ("top", "params") => json!({"type": "object"}),
        ("top", "stages") => json!({
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {"$ref": "#/$defs/stage"}
        }),
        ("top", "triggers") => json!({"type": "array", "items": {"$ref": "#/$defs/trigger"}}),
        ("stage", "cmd") => json!({"type": "string", "minLength": 1}),
        ("stage", "uses") => {
            let names: Vec<&str> = tsumugi_stages::kinds().iter().map(|k| k.name).collect();
            if names.is_empty() {
                json!({"type": "string"})
            } else {
                json!({"enum": names})
            }
        }
        ("stage", "with") => json!({"type": "object"}),
        ("stage", "deps") => json!({"type": "array", "items": {"$ref": "#/$defs/dep"}}),
        ("stage", "outs") => json!({
            "oneOf": [
                {"type": "array", "items": {"$ref": "#/$defs/out"}},
                {"type": "object", "additionalProperties": {"$ref": "#/$defs/out"}}
            ]
        }),
        ("stage", "metrics") => paths,
        ("stage", "params") => json!({"type": "array", "items": {"anyOf": [
            {"type": "string"},
            {"type": "object", "additionalProperties": {"anyOf": [
                {"type": "array", "items": {"type": "string"}},
                {"type": "string"}
            ]}}
        ]}}),
        ("stage", "plots") => {
            let props = json!({
                "type": ["object", "null"],
                "additionalProperties": false,
                "properties": {
                    "template": {"enum": ["line", "linear", "simple", "scatter", "confusion", "confusion_normalized"]},
                    "x": {"type": "string"},
                    "y": {"oneOf": [{"type": "string"}, {"type": "object", "additionalProperties": {"type": "string"}}]},
                    "title": {"type": "string"},
                    "x_label": {"type": "string"},
                    "y_label": {"type": "string"}
                }
            });
            json!({"type": "array", "items": {"oneOf": [
                {"type": "string"},
                {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": props}
            ]}})
        }
        ("stage", "env") => json!({
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]}
        }),
        ("stage", "needs") => json!({"type": "array", "items": {"type": "string"}}),
        ("stage", "resources") => obj(format::RESOURCES, "resources", &[]),
        ("stage", "retry") => json!({"oneOf": [count, obj(format::RETRY, "retry", &[])]}),
        ("stage", "timeout") => duration,
        ("stage" | "top", "executor") => json!({"enum": ["local", "slurm"], "default": "local"}),
        ("stage" | "top", "slurm") => obj(format::SLURM, "slurm", &[]),
        ("slurm", "partition" | "account" | "qos") => json!({"type": "string", "minLength": 1}),
        ("resources", "mem") => json!({
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+[KMGTkmgt]?$"}
            ]
        }),
        ("slurm", "extra") => json!({"type": "array", "items": {"type": "string"}}),
        ("stage", "map") => obj(format::MAP, "map", &[]),
        ("stage", "merge") => obj(format::MERGE, "merge", &["out"]),
        ("map", "glob" | "lines" | "rows") => path,
        ("map", "key") => json!({"type": "string"}),
        ("map", "batch") => json!({"type": "boolean", "default": false}),
        ("merge", "out") => path,
        ("stage", "register") => obj(format::REGISTER, "register", &[]),
        ("register", "name") => json!({"type": "string", "pattern": NAME_PATTERN}),
        ("register", "out") => json!({"type": "string", "minLength": 1}),
        ("register", "metrics") => path,
        ("register", "promote_if") => {
            let mut g = obj(format::PROMOTE_IF, "promote_if", &["metric"]);
            g["oneOf"] = json!([{"required": ["min"]}, {"required": ["max"]}]);
            g
        }
        ("promote_if", "metric") => json!({"type": "string", "minLength": 1}),
        ("promote_if", "min" | "max") => json!({"type": "number"}),
        ("promote_if", "not_worse") => json!({"type": "boolean", "default": true}),
        ("stage", "foreach") => json!({"type": ["array", "object", "string"]}),
        ("stage", "matrix") => json!({
            "type": ["object", "string"],
            "additionalProperties": {"type": ["array", "string"]}
        }),
        ("out", "path") => path,
        ("out", "cache") => json!({"type": "boolean", "default": true}),
        ("out", "persist") => json!({"type": "boolean", "default": false}),
        ("sqlite_dep", "sqlite") => obj(format::SQLITE_FIELDS, "sqlite_fields", &["db", "query"]),
        ("sqlite_fields", "db") => path,
        ("sqlite_fields", "query") => json!({"type": "string", "minLength": 1}),
        ("resources", "gpu" | "cpu") => count,
        ("retry", "attempts") => count,
        ("retry", "backoff") => duration,
        ("cron", "cron") => json!({"type": "string"}),
        ("cron", "when") => json!({"type": "object"}),
        ("cron", "tz") => json!({"type": "string"}),
        ("cron", "catchup") => json!({"enum": ["skip", "run-once"]}),
        ("cron", "grace") => duration,
        ("watch", "watch") => json!({"oneOf": [path, paths]}),
        _ => return None,
    })
}

/// A closed object whose properties are a key table.
fn obj(keys: Keys, table: &str, required: &[&str]) -> Value {
    let mut props = Map::new();
    for (k, desc) in keys {
        let mut t = key_type(table, k).unwrap_or_else(|| json!({}));
        if let Some(o) = t.as_object_mut() {
            o.insert("description".into(), Value::String((*desc).into()));
        }
        props.insert((*k).into(), t);
    }
    let mut o = json!({"type": "object", "additionalProperties": false, "properties": props});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// The schema as a JSON value.
pub fn pipeline_schema() -> Value {
    let mut stage = obj(format::STAGE, "stage", &[]);
    stage["oneOf"] = json!([
        {"required": ["cmd"], "not": {"required": ["uses"]}},
        {"required": ["uses"], "not": {"anyOf": [{"required": ["cmd"]}, {"required": ["outs"]}, {"required": ["metrics"]}, {"required": ["merge"]}]}}
    ]);
    stage["not"] = json!({"required": ["foreach", "matrix"]});
    // Per kind: `with:` is the kind's settings type (`$defs/with-<kind>`).
    let per_kind: Vec<Value> = tsumugi_stages::kinds()
        .iter()
        .map(|k| {
            json!({
                "if": {"properties": {"uses": {"const": k.name}}, "required": ["uses"]},
                "then": {"properties": {"with": {"$ref": format!("#/$defs/with-{}", k.name), "description": k.summary}}}
            })
        })
        .collect();
    if !per_kind.is_empty() {
        stage["allOf"] = Value::Array(per_kind);
    }
    let kinds: Map<String, Value> = tsumugi_stages::kinds()
        .iter()
        .map(|k| {
            let outs: Vec<&str> = k.outputs.iter().map(|(key, _)| *key).collect();
            (k.name.to_owned(), json!({"description": k.summary, "version": k.version, "inputs": k.input_fields, "outputs": outs}))
        })
        .collect();

    let mut top = obj(format::TOP, "top", &["stages"]);
    // `x-…` keys are the user's (anchors for stage templates).
    top["patternProperties"] = json!({"^x-": {}});
    let o = top.as_object_mut().expect("obj() makes an object");
    let mut head = Map::new();
    head.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    head.insert(
        "$id".into(),
        json!("https://example.invalid/tsumugi/pipeline.schema.json"),
    );
    head.insert("title".into(), json!("tsumugi pipeline"));
    head.insert(
        "description".into(),
        json!("A tsumugi pipeline file. Strings may hold ${params.NAME}, ${stages.STAGE.outs.KEY}, ${item}, ${key}; see docs/pipeline-format.md."),
    );
    head.extend(std::mem::take(o));
    head.insert(
        "$defs".into(),
        json!({
            "path": {"type": "string", "minLength": 1, "description": "A path relative to the project root."},
            "duration": {"type": "string", "pattern": DURATION_PATTERN, "description": "30s, 10m, 2h, 1d, 500ms, 1h30m"},
            "stage": stage,
            "dep": {"oneOf": [{"$ref": "#/$defs/path"}, obj(format::SQLITE_DEP, "sqlite_dep", &["sqlite"])]},
            "out": {"oneOf": [{"$ref": "#/$defs/path"}, obj(format::OUT_ITEM, "out", &["path"])]},
            "trigger": {"oneOf": [obj(format::CRON_TRIGGER, "cron", &["cron"]), obj(format::WATCH_TRIGGER, "watch", &["watch"])]}
        }),
    );
    let defs = head["$defs"].as_object_mut().expect("$defs is an object");
    defs.insert(
        "interpolated".into(),
        json!({"type": "string", "pattern": "\\$\\{", "description": "A value given by ${…}, checked once interpolated."}),
    );
    for k in tsumugi_stages::kinds() {
        for (name, def) in kind_defs(k) {
            defs.insert(name, def);
        }
    }
    // An annotation (unknown keywords are allowed in 2020-12): the kinds of this build.
    head.insert("x-tsumugi-kinds".into(), Value::Object(kinds));
    Value::Object(head)
}

/// `with-<kind>` and the kind's own definitions, renamed `with-<kind>-<Name>`. Every value
/// that is not a string may also be written as a `${…}` string (`$defs/interpolated`):
/// the loader checks the interpolated value, the editor sees the text.
fn kind_defs(k: &tsumugi_stages::KindInfo) -> Vec<(String, Value)> {
    let prefix = format!("with-{}", k.name);
    let mut root = (k.settings.schema)().to_value();
    let mut out = Vec::new();
    if let Some(o) = root.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
        if let Some(Value::Object(defs)) = o.remove("$defs") {
            for (name, def) in defs {
                out.push((format!("{prefix}-{name}"), def));
            }
        }
    }
    for (_, def) in &mut out {
        rewrite(def, &prefix);
    }
    // `with:` itself is a mapping as written: only its values are admitted as `${…}`.
    if let Some(o) = root.as_object_mut() {
        o.values_mut().for_each(|x| {
            if let Value::Object(props) = x {
                props.values_mut().for_each(|p| rewrite(p, &prefix));
            }
        });
    }
    out.insert(0, (prefix, root));
    out
}

/// Renames `$ref`s into the kind's definitions and admits `${…}` for non-string values.
fn rewrite(v: &mut Value, prefix: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/$defs/{prefix}-{name}");
            }
            for (key, x) in o.iter_mut() {
                // Property names are not schemas (a property may be called `type`).
                if key == "properties" || key == "$defs" {
                    if let Value::Object(props) = x {
                        props.values_mut().for_each(|p| rewrite(p, prefix));
                    }
                } else if key != "enum" && key != "const" && key != "required" {
                    rewrite(x, prefix);
                }
            }
            let typed = match o.get("type") {
                Some(Value::String(t)) => t != "string" && t != "null",
                Some(Value::Array(ts)) => !ts.iter().any(|t| t == "string"),
                _ => o.contains_key("enum") || o.contains_key("const"),
            };
            if typed {
                let mut inner = std::mem::take(o);
                for k in ["description", "default"] {
                    if let Some(x) = inner.remove(k) {
                        o.insert(k.into(), x);
                    }
                }
                o.insert(
                    "anyOf".into(),
                    json!([inner, {"$ref": "#/$defs/interpolated"}]),
                );
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, prefix)),
        _ => {}
    }
}

/// The schema as `tsumugi schema` prints it (pretty JSON, no trailing newline).
pub fn pipeline_schema_string() -> String {
    serde_json::to_string_pretty(&pipeline_schema()).expect("a JSON value always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_type() {
        let tables: &[(&str, Keys)] = &[
            ("top", format::TOP),
            ("stage", format::STAGE),
            ("out", format::OUT_ITEM),
            ("map", format::MAP),
            ("merge", format::MERGE),
            ("register", format::REGISTER),
            ("promote_if", format::PROMOTE_IF),
            ("sqlite_dep", format::SQLITE_DEP),
            ("sqlite_fields", format::SQLITE_FIELDS),
            ("resources", format::RESOURCES),
            ("retry", format::RETRY),
            ("slurm", format::SLURM),
            ("cron", format::CRON_TRIGGER),
            ("watch", format::WATCH_TRIGGER),
        ];
        for (t, keys) in tables {
            for (k, _) in *keys {
                assert!(
                    key_type(t, k).is_some(),
                    "no schema type for key '{k}' of table '{t}'"
                );
            }
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        refs.push(r.clone());
                    }
                    o.values().for_each(|x| walk(x, refs));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
                _ => {}
            }
        }
        let s = pipeline_schema();
        let mut refs = Vec::new();
        walk(&s, &mut refs);
        assert!(refs.len() > 5);
        for r in refs {
            let name = r
                .strip_prefix("#/$defs/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(s["$defs"].get(name).is_some(), "$ref {r} points nowhere");
        }
    }

    /// Each kind's `with:` schema is in `$defs` and used when `uses:` names the kind;
    /// `${…}` may stand for a number, the loader checking the interpolated value.
    #[test]
    fn every_kind_has_its_with_schema() {
        let s = pipeline_schema();
        let all_of = s["$defs"]["stage"]["allOf"].as_array().unwrap();
        for (k, branch) in tsumugi_stages::kinds().iter().zip(all_of) {
            assert_eq!(branch["if"]["properties"]["uses"]["const"], k.name);
            let r = format!("#/$defs/with-{}", k.name);
            assert_eq!(branch["then"]["properties"]["with"]["$ref"], json!(r));
            let with = &s["$defs"][format!("with-{}", k.name)];
            assert_eq!(with["type"], "object", "{}", k.name);
            assert_eq!(with["additionalProperties"], false, "{}", k.name);
        }
        let lr = &s["$defs"]["with-train-lora-OptimWith"]["anyOf"][0]["properties"]["lr"];
        assert_eq!(
            lr["anyOf"],
            json!([{"type": "number", "format": "double"}, {"$ref": "#/$defs/interpolated"}]),
            "{lr}"
        );
    }

    #[test]
    fn stage_properties_are_the_loader_keys() {
        let s = pipeline_schema();
        let props: Vec<&str> = s["$defs"]["stage"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(props, format::names(format::STAGE).collect::<Vec<_>>());
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["required"], json!(["stages"]));
    }
}
