//! Golden tests: each directory under tests/golden holds an input, optional arguments, and the
//! exact stdout, stderr and exit status `braid convert` must give. `BLESS=1 cargo test -p
//! braid-cli --test golden` rewrites the expected files after a deliberate change.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// a test file a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use braid_crds::MeshRoute;
use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .expect("tests/golden")
        .map(|entry| entry.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn run(case: &Path) -> (String, String, i32) {
    let args = fs::read_to_string(case.join("args")).unwrap_or_default();
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("convert")
        .args(args.split_whitespace())
        .arg(case.join("input.yaml"))
        .output()
        .expect("run braid");
    (
        String::from_utf8(output.stdout).expect("utf-8 stdout"),
        String::from_utf8(output.stderr).expect("utf-8 stderr"),
        output.status.code().expect("exit status"),
    )
}

#[test]
fn every_case_gives_its_expected_output() {
    let bless = std::env::var_os("BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 8, "the golden cases are missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let (stdout, stderr, code) = run(case);
        let actual =
            [("expected.yaml", stdout), ("expected.stderr", stderr), ("expected.exit", format!("{code}\n"))];
        for (file, text) in actual {
            let path = case.join(file);
            if bless {
                fs::write(&path, &text).expect("write expected file");
                continue;
            }
            let expected = fs::read_to_string(&path).unwrap_or_default();
            if expected != text {
                failures.push(format!(
                    "{}: {file} differs\n--- expected\n{expected}--- actual\n{text}",
                    case.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the operator will do with the output: every MeshRoute reads as the API type and passes
/// the operator's validation, every HTTPRoute reads as the operator's Gateway API type with no
/// field it would refuse.
#[test]
fn every_output_is_valid_for_braid() {
    for case in cases() {
        let (stdout, _, code) = run(&case);
        assert_ne!(code, 1, "{}: bad input in a golden case", case.display());
        let documents: Vec<Value> = serde_saphyr::from_multiple(&stdout).expect("output is YAML");
        assert!(!documents.is_empty(), "{}: no output", case.display());
        for document in documents {
            match document["kind"].as_str() {
                Some("MeshRoute") => {
                    let route: MeshRoute = serde_json::from_value(document.clone()).expect("a MeshRoute");
                    let problems = braid_operator::meshroute::validate::validate(&route.spec);
                    assert!(problems.is_empty(), "{}: {problems:?}", case.display());
                    for rule in &route.spec.rules {
                        assert!(
                            rule.backends.iter().any(|b| b.weight > 0),
                            "{}: a rule sends nowhere",
                            case.display()
                        );
                        assert!(rule.backends.iter().all(|b| (0..=100).contains(&b.weight)));
                        if let Some(retries) = &rule.retries {
                            assert!((1..=10).contains(&retries.attempts));
                        }
                    }
                }
                Some("HTTPRoute") => {
                    assert_eq!(document["apiVersion"], "gateway.networking.k8s.io/v1");
                    let route: braid_operator::gateway::types::HTTPRoute =
                        serde_json::from_value(document.clone()).expect("an HTTPRoute");
                    assert!(
                        route.spec.parent_refs.iter().all(|p| p.is_service()),
                        "{}: a parent that is not a Service",
                        case.display()
                    );
                    assert!(route.spec.rules.iter().all(|r| r.other.is_empty()));
                }
                other => panic!("{}: unexpected output kind {other:?}", case.display()),
            }
        }
    }
}

/// Each item on stderr also heads the output document it concerns, when there is one.
#[test]
fn what_is_left_out_is_said_twice() {
    for case in cases() {
        let (stdout, stderr, code) = run(&case);
        assert_eq!(code == 2, !stderr.is_empty(), "{}: exit {code} with stderr {stderr:?}", case.display());
        for line in stderr.lines() {
            let (head, field_and_why) = line.split_once(": not carried over: ").expect("a left-out line");
            let object = head.split_once(", ").map(|(_, object)| object).expect("document, object");
            let own = format!("# Not carried over: {field_and_why}\n");
            let other = format!("# Not carried over: {object}: {field_and_why}\n");
            let has_document = stdout.contains(&format!("# Converted from {object} ("))
                || stdout.contains(&format!("# Not carried over: {object}: "));
            if has_document {
                assert!(
                    stdout.contains(&own) || stdout.contains(&other),
                    "{}: {line} is not in the output",
                    case.display()
                );
            }
        }
    }
}
