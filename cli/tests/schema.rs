//! The golden outputs against the MeshRoute CRD as committed in crds/: the OpenAPI schema the API
//! server applies (types, bounds, patterns, enums, required and unknown fields), and its CEL
//! rules, evaluated here by hand. A CEL rule this test does not know fails it, so a rule added
//! to the CRD is added here too.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// a test file a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::Path, process::Command};

use serde_json::Value;

fn crd_schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/meshroutes.braid.dev.yaml");
    let crd: Value = serde_saphyr::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema").cloned().expect("the CRD's schema")
}

/// The CRD's CEL rules on what they apply to.
fn cel(rule: &str, value: &Value) -> bool {
    let has = |key: &str| value.get(key).is_some_and(|v| !v.is_null());
    match rule.split_whitespace().collect::<Vec<_>>().join(" ").as_str() {
        "has(self.service) != has(self.subset)" => has("service") != has("subset"),
        "self.exists(b, b.weight > 0)" => {
            value.as_array().unwrap().iter().any(|b| b.get("weight").and_then(Value::as_i64).unwrap_or(1) > 0)
        }
        "has(self.delay) || has(self.abort)" => has("delay") || has("abort"),
        "self.type == 'RegularExpression' || self.value.startsWith('/')" => {
            value["type"] == "RegularExpression" || value["value"].as_str().unwrap().starts_with('/')
        }
        "self.type == 'SourceIP' ? !has(self.name) : has(self.name)" => {
            if value["type"] == "SourceIP" {
                !has("name")
            } else {
                has("name")
            }
        }
        "!has(self.maxPendingRequests) || has(self.maxConnections)" => {
            !has("maxPendingRequests") || has("maxConnections")
        }
        // Canary rules: the converter never writes a canary.
        "self.stable != self.canary" => true,
        other if other.starts_with("self.steps.isSorted()") => true,
        other => panic!("a CEL rule this test does not evaluate: {other}"),
    }
}

fn check(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        if !cel(rule["rule"].as_str().unwrap(), value) {
            problems.push(format!("{at}: {}", rule["message"]));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else {
                return problems.push(format!("{at}: not an object"));
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(required.as_str().unwrap()) {
                    problems.push(format!("{at}.{required}: required"));
                }
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (object.len() as u64) < min
            {
                problems.push(format!("{at}: fewer than {min} properties"));
            }
            for (key, item) in object {
                match (schema["properties"].get(key), schema.get("additionalProperties")) {
                    (Some(property), _) => check(property, item, &format!("{at}.{key}"), problems),
                    (None, Some(additional)) => check(additional, item, &format!("{at}.{key}"), problems),
                    // The API server would prune it: the field would be lost without a word.
                    (None, None) => problems.push(format!("{at}.{key}: not in the schema")),
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else { return problems.push(format!("{at}: not a list")) };
            if schema["maxItems"].as_u64().is_some_and(|max| items.len() as u64 > max)
                || schema["minItems"].as_u64().is_some_and(|min| (items.len() as u64) < min)
            {
                problems.push(format!("{at}: {} items, outside the schema's bounds", items.len()));
            }
            for (i, item) in items.iter().enumerate() {
                check(&schema["items"], item, &format!("{at}[{i}]"), problems);
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else { return problems.push(format!("{at}: not a string")) };
            let length = text.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|max| length > max)
                || schema["minLength"].as_u64().is_some_and(|min| length < min)
            {
                problems.push(format!("{at}: length {length} outside the schema's bounds"));
            }
            if let Some(pattern) = schema["pattern"].as_str()
                && !regex::Regex::new(pattern).unwrap().is_match(text)
            {
                problems.push(format!("{at}: {text:?} does not match {pattern}"));
            }
            if let Some(values) = schema["enum"].as_array()
                && !values.contains(value)
            {
                problems.push(format!("{at}: {text:?} is not one of {values:?}"));
            }
        }
        Some("integer") => {
            let Some(number) = value.as_i64() else { return problems.push(format!("{at}: not an integer")) };
            // The generated CRD writes bounds as floats (maximum: 10.0).
            let number = number as f64;
            if schema["minimum"].as_f64().is_some_and(|min| number < min)
                || schema["maximum"].as_f64().is_some_and(|max| number > max)
            {
                problems.push(format!("{at}: {number} outside the schema's bounds"));
            }
        }
        Some("boolean") if !value.is_boolean() => problems.push(format!("{at}: not a boolean")),
        _ => {}
    }
}

#[test]
fn every_golden_meshroute_fits_the_crd_schema_and_its_cel_rules() {
    let schema = crd_schema();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for case in fs::read_dir(&root).unwrap() {
        let case = case.unwrap().path();
        let args = fs::read_to_string(case.join("args")).unwrap_or_default();
        let output = Command::new(env!("CARGO_BIN_EXE_braid"))
            .arg("convert")
            .args(args.split_whitespace())
            .arg(case.join("input.yaml"))
            .output()
            .unwrap();
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap()).unwrap();
        for document in documents.iter().filter(|d| d["kind"] == "MeshRoute") {
            let mut problems = Vec::new();
            check(&schema["properties"]["spec"], &document["spec"], "spec", &mut problems);
            assert!(problems.is_empty(), "{}: {problems:#?}", case.display());
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} MeshRoutes checked");
}

#[test]
fn the_checker_catches_what_the_api_server_would_refuse() {
    let schema = crd_schema();
    let bad: Value = serde_json::json!({
        "service": "Reviews",
        "rules": [{"backends": [{"service": "a", "subset": {"v": "1"}, "weight": 0}],
                   "matches": [{"path": {"type": "Exact", "value": "v1"}}],
                   "retries": {"attempts": 11, "retryOn": ["sometimes"]},
                   "fault": {},
                   "surprise": true}]
    });
    let mut problems = Vec::new();
    check(&schema["properties"]["spec"], &bad, "spec", &mut problems);
    let text = problems.join("\n");
    for expected in [
        "spec.service: \"Reviews\" does not match",
        "spec.rules[0].backends: ",
        "spec.rules[0].backends[0]: ",
        "spec.rules[0].matches[0].path: ",
        "spec.rules[0].retries.attempts: 11",
        "spec.rules[0].retries.retryOn[0]: \"sometimes\"",
        "spec.rules[0].fault: ",
        "spec.rules[0].surprise: not in the schema",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}
