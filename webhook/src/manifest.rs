//! `braid-webhook inject`: meshes the pod templates of YAML manifests, like `linkerd inject`.
//!
//! Every document is read; the pod templates of Pods, Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs (and of such objects inside a `kind: List`) get the same patch
//! the webhook would produce, as if their namespace were opted in. Other documents are written
//! back byte for byte, comments included.

use std::collections::BTreeMap;

use braid_api::contract::{INJECT, INJECT_ENABLED};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};

use crate::inject::{Decision, InjectConfig, InjectError, SkipReason, inject};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document} (line {line}): malformed YAML: {reason}")]
    Yaml { document: usize, line: usize, reason: String },
    #[error(
        "document {document} (line {line}), {object}: the pod template is not a valid pod spec: {reason}"
    )]
    Template { document: usize, line: usize, object: String, reason: String },
    #[error("document {document} (line {line}), {object}: {source}")]
    Inject { document: usize, line: usize, object: String, source: InjectError },
    #[error("document {document} (line {line}), {object}: cannot write YAML: {reason}")]
    Render { document: usize, line: usize, object: String, reason: String },
}

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// 1-based, as the documents appear between `---` separators.
    pub document: usize,
    /// "Deployment/web".
    pub object: String,
    /// None when injected.
    pub skipped: Option<SkipReason>,
}

/// The injected manifests and one report per pod template found.
pub fn inject_manifests(input: &str, config: &InjectConfig) -> Result<(String, Vec<Report>), ManifestError> {
    let namespace_labels = BTreeMap::from([(INJECT.to_owned(), INJECT_ENABLED.to_owned())]);
    let mut output = String::with_capacity(input.len() * 2);
    let mut reports = Vec::new();
    for (index, document) in split_documents(input).into_iter().enumerate() {
        let number = index + 1;
        output.push_str(document.separator);
        if is_blank(document.body) {
            output.push_str(document.body);
            continue;
        }
        let yaml_error =
            |reason: String| ManifestError::Yaml { document: number, line: document.line, reason };
        let mut value: Value =
            serde_saphyr::from_str(document.body).map_err(|err| yaml_error(err.to_string()))?;
        let mut ctx = Context {
            document: number,
            line: document.line,
            labels: &namespace_labels,
            config,
            reports: &mut reports,
        };
        let object = describe(&value);
        if ctx.inject_object(&mut value)? {
            let rendered = serde_saphyr::to_string(&value).map_err(|err| ManifestError::Render {
                document: number,
                line: document.line,
                object,
                reason: err.to_string(),
            })?;
            output.push_str(&rendered);
            if !rendered.ends_with('\n') {
                output.push('\n');
            }
        } else {
            output.push_str(document.body);
        }
    }
    Ok((output, reports))
}

struct Context<'a> {
    document: usize,
    line: usize,
    labels: &'a BTreeMap<String, String>,
    config: &'a InjectConfig,
    reports: &'a mut Vec<Report>,
}

impl Context<'_> {
    /// Injects the pod template(s) of `object` in place; true when something changed.
    fn inject_object(&mut self, object: &mut Value) -> Result<bool, ManifestError> {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
        let template_path: &[&str] = match kind.as_str() {
            "Pod" => &[],
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            "List" => {
                let mut changed = false;
                if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
                    for item in items {
                        changed |= self.inject_object(item)?;
                    }
                }
                return Ok(changed);
            }
            _ => return Ok(false),
        };
        let name = describe(object);
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
        let mut template = Some(&mut *object);
        for key in template_path {
            template = template.and_then(|value| value.get_mut(*key));
        }
        let Some(template) = template.filter(|template| template.is_object()) else {
            return Err(self.template_error(&name, "it has no pod template (spec.template)".to_owned()));
        };
        self.inject_template(template, &name, namespace)
    }

    /// `template` is a Pod or a PodTemplateSpec: both have metadata and spec where a Pod does, so
    /// the webhook's patch applies to either as it is.
    fn inject_template(
        &mut self,
        template: &mut Value,
        object: &str,
        namespace: Option<String>,
    ) -> Result<bool, ManifestError> {
        let Value::Object(fields) = template else { return Ok(false) };
        // The patch adds /metadata/annotations; a template without metadata needs the parent.
        if !fields.get("metadata").is_some_and(Value::is_object) {
            fields.insert("metadata".to_owned(), Value::Object(Map::new()));
        }
        let mut pod_json = Map::new();
        pod_json.insert("apiVersion".to_owned(), "v1".into());
        pod_json.insert("kind".to_owned(), "Pod".into());
        for key in ["metadata", "spec"] {
            if let Some(value) = fields.get(key) {
                pod_json.insert(key.to_owned(), value.clone());
            }
        }
        let mut pod: Pod = serde_json::from_value(Value::Object(pod_json))
            .map_err(|err| self.template_error(object, err.to_string()))?;
        if pod.metadata.namespace.is_none() {
            pod.metadata.namespace = namespace;
        }
        let decision = inject(&pod, self.labels, self.config).map_err(|source| ManifestError::Inject {
            document: self.document,
            line: self.line,
            object: object.to_owned(),
            source,
        })?;
        match decision {
            Decision::Skip(reason) => {
                self.reports.push(Report {
                    document: self.document,
                    object: object.to_owned(),
                    skipped: Some(reason),
                });
                Ok(false)
            }
            Decision::Inject(injection) => {
                json_patch::patch(template, &injection.patch.0)
                    .map_err(|err| self.template_error(object, format!("the patch does not apply: {err}")))?;
                self.reports.push(Report {
                    document: self.document,
                    object: object.to_owned(),
                    skipped: None,
                });
                Ok(true)
            }
        }
    }

    fn template_error(&self, object: &str, reason: String) -> ManifestError {
        ManifestError::Template {
            document: self.document,
            line: self.line,
            object: object.to_owned(),
            reason,
        }
    }
}

/// "Deployment/web".
fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("object");
    let name = object
        .pointer("/metadata/name")
        .or_else(|| object.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    format!("{kind}/{name}")
}

struct Document<'a> {
    /// The `---` line that opens it (with its newline), or "" for a first document without one.
    separator: &'a str,
    body: &'a str,
    /// 1-based line of the first body line, for error messages.
    line: usize,
}

/// Splits a YAML stream at `---` lines, keeping the text of each document exactly as written.
/// Nothing but comments before the first `---` is not counted as a document, so document numbers
/// match what a reader counts.
fn split_documents(input: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut separator = "";
    let mut body_start = 0;
    let mut body_line = 1;
    let mut offset = 0;
    for (index, line) in input.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_separator = content == "---" || content.starts_with("--- ") || content.starts_with("---\t");
        if is_separator {
            let body = &input[body_start..offset];
            if documents.is_empty() && separator.is_empty() && is_blank(body) {
                // Comments before the first `---` travel with it: not a document of their own.
                separator = &input[..offset + line.len()];
            } else {
                documents.push(Document { separator, body, line: body_line });
                separator = line;
            }
            body_start = offset + line.len();
            body_line = index + 2;
        }
        offset += line.len();
    }
    documents.push(Document { separator, body: &input[body_start..], line: body_line });
    documents
}

/// Only blank lines and comments: nothing to parse.
fn is_blank(body: &str) -> bool {
    body.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::ControlPlane;

    fn config() -> InjectConfig {
        InjectConfig::defaults("v1", &ControlPlane::default())
    }

    #[test]
    fn documents_are_numbered_as_a_reader_counts_them() {
        let input = "# header\n---\na: 1\n--- # second\nb: 2\n---\n";
        let documents = split_documents(input);
        let bodies: Vec<_> = documents.iter().map(|d| (d.body, d.line)).collect();
        assert_eq!(bodies, [("a: 1\n", 3), ("b: 2\n", 5), ("", 7)]);
        let joined: String = documents.iter().flat_map(|d| [d.separator, d.body]).collect();
        assert_eq!(joined, input, "splitting loses nothing");
    }

    #[test]
    fn lists_and_bare_pods_are_injected_and_unknown_kinds_pass_through() {
        let input = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: a}\n  spec: {containers: [{name: a}]}\n- kind: Service\n  metadata: {name: s}\n---\nkind: Widget\nspec: {template: {}}\n";
        let (output, reports) = inject_manifests(input, &config()).unwrap();
        assert_eq!(reports, [Report { document: 1, object: "Pod/a".to_owned(), skipped: None }]);
        assert!(output.contains("braid-proxy"), "{output}");
        assert!(output.ends_with("---\nkind: Widget\nspec: {template: {}}\n"), "{output}");
    }

    #[test]
    fn a_workload_without_a_template_is_an_error_naming_it() {
        let err =
            inject_manifests("kind: Deployment\nmetadata: {name: web}\nspec: {}\n", &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 1 (line 1), Deployment/web: the pod template is not a valid pod spec: it has no pod template (spec.template)"
        );
    }
}
