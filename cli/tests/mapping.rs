//! Mapping decisions that the golden cases do not pin one by one.

use braid_cli::{Body, Conversion, Options, convert};
use braid_crds::{
    MeshRoute,
    meshroute::{PathMatchType, ValueMatchType},
};

fn converted(input: &str) -> Conversion {
    convert(input, &Options::default()).unwrap_or_else(|err| panic!("{err}"))
}

fn routes(conversion: &Conversion) -> Vec<&MeshRoute> {
    conversion
        .documents
        .iter()
        .filter_map(|d| match &d.body {
            Body::MeshRoute(route) => Some(route.as_ref()),
            Body::HttpRoute(_) => None,
        })
        .collect()
}

const HEAD: &str =
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n";

#[test]
fn istio_counts_retries_and_braid_counts_tries_up_to_ten() {
    let input = format!(
        "{HEAD}spec:\n  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n    retries: {{attempts: 12}}\n  - route: [{{destination: {{host: web}}}}]\n    retries: {{attempts: 0, perTryTimeout: 1s}}\n"
    );
    let conversion = converted(&input);
    let rules = &routes(&conversion)[0].spec.rules;
    assert_eq!(rules[0].retries.as_ref().map(|r| r.attempts), Some(10));
    assert!(rules[1].retries.is_none(), "attempts: 0 turns retries off");
    assert_eq!(conversion.left_out.len(), 1);
    assert_eq!(conversion.left_out[0].field, "spec.http[0].retries.attempts");
}

#[test]
fn header_prefix_and_presence_become_whole_value_regular_expressions() {
    let input = format!(
        "{HEAD}spec:\n  hosts: [web]\n  http:\n  - match:\n    - headers:\n        x-a: {{prefix: \"v1.(beta)\"}}\n        x-b: {{}}\n    route: [{{destination: {{host: web}}}}]\n"
    );
    let conversion = converted(&input);
    let headers = &routes(&conversion)[0].spec.rules[0].matches[0].headers;
    assert_eq!(headers[0].match_type, ValueMatchType::RegularExpression);
    assert_eq!(headers[0].value, r"v1\.\(beta\).*");
    assert_eq!(headers[1].value, ".*");
    let prefix = regex::Regex::new(&format!("^(?:{})$", headers[0].value)).unwrap();
    assert!(prefix.is_match("v1.(beta)-7") && !prefix.is_match("v1x(beta)"));
}

#[test]
fn each_host_gets_its_own_route_and_only_its_own_losses() {
    let input = format!(
        "{HEAD}spec:\n  hosts: [web, api]\n  http:\n  - route:\n    - destination: {{host: web, subset: v2}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: shop}}\nspec: {{host: web, subsets: [{{name: v2, labels: {{version: v2}}}}]}}\n"
    );
    let conversion = converted(&input);
    let routes = routes(&conversion);
    assert_eq!(
        routes.iter().map(|r| r.metadata.name.as_deref().unwrap()).collect::<Vec<_>>(),
        ["web-web", "web-api"]
    );
    // For web the subset is its own; for api it needs a Service of its own.
    assert!(routes[0].spec.rules[0].backends[0].subset.is_some());
    assert_eq!(routes[1].spec.rules[0].backends[0].service.as_deref(), Some("web-v2"));
    assert!(conversion.documents[0].left_out.is_empty());
    assert_eq!(conversion.documents[1].left_out.len(), 1);
}

#[test]
fn an_istio_prefix_is_a_path_prefix_and_regex_paths_stay_regex() {
    let input = format!(
        "{HEAD}spec:\n  hosts: [web.shop.svc.cluster.local]\n  http:\n  - match: [{{uri: {{prefix: /v1}}}}, {{uri: {{regex: \"/v[0-9]+\"}}}}, {{uri: {{exact: /}}}}]\n    route: [{{destination: {{host: web}}}}]\n"
    );
    let conversion = converted(&input);
    let matches = &routes(&conversion)[0].spec.rules[0].matches;
    let types: Vec<PathMatchType> = matches.iter().map(|m| m.path.as_ref().unwrap().match_type).collect();
    assert_eq!(types, [PathMatchType::PathPrefix, PathMatchType::RegularExpression, PathMatchType::Exact]);
    assert_eq!(routes(&conversion)[0].metadata.namespace.as_deref(), Some("shop"));
}

#[test]
fn a_backend_in_another_namespace_is_left_out_not_misrouted() {
    let input = format!(
        "{HEAD}spec:\n  hosts: [web]\n  http:\n  - route:\n    - destination: {{host: web}}\n      weight: 50\n    - destination: {{host: web.legacy.svc.cluster.local}}\n      weight: 50\n"
    );
    let conversion = converted(&input);
    let backends = &routes(&conversion)[0].spec.rules[0].backends;
    assert_eq!(backends.len(), 1);
    assert_eq!(conversion.left_out[0].field, "spec.http[0].route[1].destination.host");
    assert!(conversion.left_out[0].why.contains("namespace legacy"));
}

#[test]
fn linkerd_conditions_expand_into_matches() {
    let input = "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.shop.svc.cluster.local}\nspec:\n  routes:\n  - name: reads\n    condition:\n      any:\n      - all: [{method: GET}, {pathRegex: /a}]\n      - all: [{method: HEAD}, {any: [{pathRegex: /b}, {pathRegex: /c}]}]\n  - name: impossible\n    condition: {all: [{method: GET}, {method: POST}]}\n";
    let conversion = converted(input);
    let rules = &routes(&conversion)[0].spec.rules;
    let matches: Vec<String> = rules[0]
        .matches
        .iter()
        .map(|m| format!("{:?} {}", m.method.unwrap(), m.path.as_ref().unwrap().value))
        .collect();
    assert_eq!(matches, ["GET /a", "HEAD /b", "HEAD /c"]);
    assert_eq!(rules.len(), 1, "a condition no request can meet is left out");
    assert_eq!(conversion.left_out[0].field, "spec.routes[1].condition");
    assert_eq!(rules[0].timeout.as_deref(), Some("10s"), "Linkerd's default route timeout");
}
