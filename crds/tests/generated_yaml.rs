//! The CRD YAML committed in crds/ and in the Helm chart must be what the Rust types generate:
//! GitOps users apply those files as they are.

use std::{fs, path::Path};

use braid_crds::{conditions, crd_yaml, crds};

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["crds", "helm/braid/crds"] {
        for (file, crd) in crds() {
            let path = root.join(dir).join(&file);
            let expected = crd_yaml(&crd).expect("CRD renders as YAML");
            let committed = fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("{} is missing ({err}): run `make crds`", path.display()));
            assert!(
                committed == expected,
                "{} differs from what the Rust types generate: run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn meshroute_columns_answer_is_my_route_healthy() {
    let (_, crd) = crds().into_iter().find(|(f, _)| f.starts_with("meshroutes")).expect("MeshRoute CRD");
    let version = &crd.spec.versions[0];
    let columns: Vec<&str> =
        version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(
        columns,
        [
            "Service",
            "Canary",
            "Weight",
            "Phase",
            "Success",
            "P99",
            "Proxies",
            "Accepted",
            "Resolved",
            "Programmed",
            "Healthy",
            "Reason",
            "Message",
            "Age"
        ]
    );
    let wide: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority == Some(1))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(wide, ["Accepted", "Resolved", "Programmed", "Healthy", "Reason", "Message"], "-o wide only");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mr".to_owned()]));
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    let json = serde_json::to_string(&crd).expect("CRD serializes");
    for condition in [conditions::ACCEPTED, conditions::RESOLVED_REFS, conditions::PROGRAMMED] {
        assert!(json.contains(&format!("@.type==\\\"{condition}\\\"")), "column for {condition}");
    }
    // Conditions merge by type under server-side apply.
    assert!(json.contains(r#""x-kubernetes-list-map-keys":["type"]"#));
}

#[test]
fn every_schema_property_is_documented() {
    fn walk(path: &str, schema: &serde_json::Value, undocumented: &mut Vec<String>) {
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, undocumented);
            }
            return;
        };
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            // apiVersion/kind/metadata are documented by Kubernetes itself.
            if !["apiVersion", "kind", "metadata"].contains(&name.as_str())
                && prop.get("description").is_none()
            {
                undocumented.push(here.clone());
            }
            walk(&here, prop, undocumented);
        }
    }
    for (file, crd) in crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema serializes");
        let mut undocumented = Vec::new();
        walk("", &schema["openAPIV3Schema"], &mut undocumented);
        assert!(undocumented.is_empty(), "{file}: fields without a description: {undocumented:?}");
    }
}
