//! Input that cannot be converted: a clear error naming the document, the object and the field,
//! exit status 1, never a panic.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// a test file a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Write, process::Command};

use braid_cli::{ConvertError, Options, convert};

fn error(input: &str) -> String {
    match convert(input, &Options::default()) {
        Ok(conversion) => panic!("converted: {:?}", conversion.to_yaml()),
        Err(err) => err.to_string(),
    }
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n";
const DR: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n";
const SP_HEAD: &str =
    "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.shop.svc.cluster.local}\n";

fn assert_says(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "{err:?} does not say {part:?}");
    }
}

#[test]
fn yaml_that_does_not_parse_names_its_document_and_line() {
    let err = error("kind: [unclosed\n");
    assert_says(&err, &["document 1 (line 1)", "not valid YAML"]);
    let input = format!(
        "{VS_HEAD}spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}\n---\n\nkind: {{a: b\n"
    );
    let err = error(&input);
    // Lines count from the start of the stream, not of the document.
    assert_says(&err, &["document 2 (line 7): not valid YAML: unclosed bracket '{' (column 7)"]);
}

#[test]
fn an_empty_input_is_refused() {
    assert_eq!(error(""), "the input holds no YAML document");
    assert_eq!(error("# only a comment\n---\n\n---\n"), "the input holds no YAML document");
    // An empty List (kubectl found nothing) is a valid, empty conversion.
    let conversion = convert("apiVersion: v1\nkind: List\nitems: []\n", &Options::default()).unwrap();
    assert!(conversion.documents.is_empty() && conversion.left_out.is_empty());
}

#[test]
fn documents_that_are_not_objects_are_refused() {
    assert_says(&error("- a\n- b\n"), &["document 1", "must be a Kubernetes object (a mapping), not a list"]);
    assert_says(&error("kind: VirtualService\n"), &["document 1", "apiVersion: missing"]);
    assert_says(&error("apiVersion: v1\n"), &["kind: missing"]);
    assert_says(&error("apiVersion: 1\nkind: Service\n"), &["apiVersion: must be a string, not a number"]);
}

#[test]
fn a_kind_it_does_not_know_is_named() {
    let err = error("apiVersion: v1\nkind: Service\nmetadata: {name: web}\n");
    assert_says(
        &err,
        &[
            "document 1",
            "kind: Service (v1) is not a kind braid convert reads",
            "VirtualService",
            "ServiceProfile",
        ],
    );
    let err = error("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n");
    assert_says(&err, &["Gateway (networking.istio.io/v1)"]);
}

#[test]
fn a_virtual_service_without_hosts_is_refused() {
    let err = error(&format!("{VS_HEAD}spec: {{http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}\n"));
    assert_says(
        &err,
        &["document 1", "VirtualService reviews", "spec.hosts: a VirtualService needs at least one host"],
    );
    let err = error(&format!("{VS_HEAD}spec: {{hosts: [], http: []}}\n"));
    assert_says(&err, &["spec.hosts"]);
}

#[test]
fn a_weight_that_is_not_a_number_is_refused() {
    let route = |weight: &str| {
        format!(
            "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: {weight}\n    - destination: {{host: reviews}}\n      weight: 20\n{DR}"
        )
    };
    assert_says(&error(&route("eighty")), &["spec.http[0].route[0].weight: must be a number, not a string"]);
    assert_says(&error(&route("150")), &["spec.http[0].route[0].weight: 150 is not within 0..=100"]);
    assert_says(&error(&route("80.5")), &["spec.http[0].route[0].weight: 80.5 is not a whole number"]);
}

#[test]
fn a_subset_no_destination_rule_defines_is_refused() {
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v9}}\n{DR}"
    );
    assert_says(
        &error(&input),
        &[
            "spec.http[0].route[0].destination.subset",
            "subset \"v9\" of host reviews is not defined by any DestinationRule",
        ],
    );
}

#[test]
fn bad_durations_and_methods_name_their_field() {
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - timeout: soon\n    route:\n    - destination: {{host: reviews}}\n"
    );
    assert_says(&error(&input), &["spec.http[0].timeout", "\"soon\" is not a duration"]);
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match: [{{method: {{exact: FETCH}}}}]\n    route:\n    - destination: {{host: reviews}}\n"
    );
    assert_says(&error(&input), &["spec.http[0].match[0].method.exact", "\"FETCH\" is not an HTTP method"]);
    let input = format!(
        "{SP_HEAD}spec:\n  routes:\n  - name: x\n    condition: {{method: GET}}\n    timeout: fast\n"
    );
    assert_says(
        &error(&input),
        &["ServiceProfile web.shop.svc.cluster.local", "spec.routes[0].timeout", "\"fast\""],
    );
}

#[test]
fn a_regular_expression_braid_would_refuse_is_caught_before_it_is_written() {
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match: [{{uri: {{regex: \"/api/(v1\"}}}}]\n    route:\n    - destination: {{host: reviews}}\n"
    );
    assert_says(
        &error(&input),
        &["spec.rules[0].matches[0].path.value", "would be refused", "not a valid regular expression"],
    );
}

#[test]
fn service_profile_mistakes_are_refused() {
    assert_says(
        &error(&format!("{SP_HEAD}spec:\n  routes:\n  - name: x\n")),
        &["spec.routes[0].condition: missing"],
    );
    assert_says(
        &error(&format!("{SP_HEAD}spec:\n  routes:\n  - name: x\n    condition: {{verb: GET}}\n")),
        &["spec.routes[0].condition.verb: not a request match"],
    );
    assert_says(
        &error(&format!("{SP_HEAD}spec:\n  retryBudget: {{retryRatio: lots}}\n  routes: []\n")),
        &["spec.retryBudget.retryRatio"],
    );
    assert_says(
        &error(&format!(
            "{SP_HEAD}spec:\n  dstOverrides: [{{authority: web-v2, weight: heavy}}]\n  routes: []\n"
        )),
        &["spec.dstOverrides[0].weight", "not a weight"],
    );
    assert_says(
        &error(&format!(
            "{SP_HEAD}spec:\n  routes:\n  - name: x\n    condition: {{method: GET}}\n    isRetryable: yes please\n"
        )),
        &["spec.routes[0].isRetryable: must be true or false"],
    );
}

#[test]
fn options_out_of_range_are_refused() {
    let input = format!("{SP_HEAD}spec: {{routes: []}}\n");
    let err = convert(&input, &Options { linkerd_attempts: 11, linkerd_per_try_timeout: None }).unwrap_err();
    assert!(matches!(err, ConvertError::Option { option: "--linkerd-attempts", .. }), "{err}");
    let err = convert(&input, &Options { linkerd_attempts: 3, linkerd_per_try_timeout: Some("2 s".into()) })
        .unwrap_err();
    assert!(err.to_string().contains("--linkerd-per-try-timeout"), "{err}");
    // A per-try timeout longer than a route's total is what the operator refuses: said before.
    let input = format!(
        "{SP_HEAD}spec:\n  routes:\n  - name: x\n    condition: {{method: GET}}\n    isRetryable: true\n    timeout: 1s\n"
    );
    let err = convert(&input, &Options { linkerd_attempts: 3, linkerd_per_try_timeout: Some("2s".into()) })
        .unwrap_err();
    assert!(err.to_string().contains("spec.rules[0].retries.perTryTimeout"), "{err}");
}

#[test]
fn the_binary_exits_1_with_the_error_on_stderr_and_nothing_on_stdout() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["convert", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run braid");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
        .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("braid: error: document 1 (line 1): kind: ConfigMap (v1)"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["convert", "/nonexistent/routes.yaml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/routes.yaml"));
}

#[test]
fn names_the_api_would_refuse_are_caught_before_they_are_written() {
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - match: [{{headers: {{\":authority\": {{exact: a}}}}}}]\n    route:\n    - destination: {{host: reviews}}\n"
    );
    assert_says(
        &error(&input),
        &["spec.rules[0].matches[0].headers[0].name", "\":authority\" is not a header name"],
    );
    // A subset of another Service becomes a Service named HOST-SUBSET, which must be a name.
    let input = format!(
        "{VS_HEAD}spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: ratings, subset: V1_beta}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ratings}}\nspec: {{host: ratings, subsets: [{{name: V1_beta, labels: {{version: v1}}}}]}}\n"
    );
    assert_says(
        &error(&input),
        &["spec.rules[0].backends[0].service", "\"ratings-V1_beta\" is not a Service name"],
    );
}
