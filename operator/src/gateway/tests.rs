//! Translation of each HTTPRoute/GRPCRoute feature into the proxy model, the status of each
//! refusal, and the precedence between routes: from plain values, no cluster.

use std::net::IpAddr;
use std::time::Duration;

use braid_api::config::{HeaderMatch, HeaderValueMatch, PathMatch, RouteConfig};
use serde_json::{Value, json};

use super::status::{Verdict, desired_status, verdicts};
use super::translate::{CONTROLLER_NAME, RouteKind, RouteSpec, translate};
use super::types::{HttpRouteSpec, RouteStatus};
use crate::conditions::Status;
use crate::discovery::index::{
    EndpointInfo, GatewayRouteInfo, Index, Key, PodInfo, PortInfo, RouteInfo, ServiceInfo, SliceInfo,
};

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

/// Services `reviews`, `reviews-v1`, `reviews-v2` in shop (port 80, one pod each on 8080) and
/// `ratings` in namespace other.
fn cluster() -> Index {
    let mut index = Index::new("cluster.local", "cluster.local");
    for (i, (ns, name)) in
        [("shop", "reviews"), ("shop", "reviews-v1"), ("shop", "reviews-v2"), ("other", "ratings")]
            .iter()
            .enumerate()
    {
        let cluster_ip: IpAddr = format!("10.96.0.{}", 10 + i).parse().unwrap();
        let pod_ip: IpAddr = format!("10.1.0.{}", 1 + i).parse().unwrap();
        let port = |port| PortInfo { name: "http".into(), port, http2: false, opaque: false };
        index.upsert_service(
            key(ns, name),
            ServiceInfo {
                cluster_ips: vec![cluster_ip],
                headless: false,
                ports: vec![port(80)],
                export_to: None,
            },
        );
        let pod = format!("{name}-0");
        index.upsert_pod(
            key(ns, &pod),
            PodInfo {
                service_account: (*name).to_owned(),
                labels: Default::default(),
                meshed: true,
                probes: Vec::new(),
                default_policy: None,
                ips: vec![pod_ip],
                created: "2026-01-01T00:00:00Z".to_owned(),
                skip_inbound: Vec::new(),
                workload: None,
            },
        );
        index.upsert_slice(
            key(ns, &format!("{name}-abc")),
            SliceInfo {
                service: (*name).to_owned(),
                ports: vec![port(8080)],
                endpoints: vec![EndpointInfo { addresses: vec![pod_ip], ready: true, pod: Some(pod) }],
            },
        );
    }
    index
}

const PARENT: &str = r#"{"group": "", "kind": "Service", "name": "reviews", "port": 80}"#;

fn http(rules: Value) -> RouteSpec {
    let parent: Value = serde_json::from_str(PARENT).unwrap();
    RouteSpec::Http(
        serde_json::from_value(json!({"parentRefs": [parent], "rules": rules})).expect("HTTPRoute spec"),
    )
}

fn grpc(rules: Value) -> RouteSpec {
    let parent: Value = serde_json::from_str(PARENT).unwrap();
    RouteSpec::Grpc(
        serde_json::from_value(json!({"parentRefs": [parent], "rules": rules})).expect("GRPCRoute spec"),
    )
}

fn routes(index: &Index, spec: &RouteSpec) -> Vec<RouteConfig> {
    let translated =
        translate("shop", "r", "2026-01-01T00:00:00Z", spec, &("shop".into(), "reviews".into()), 80, index)
            .expect("supported");
    translated.routes.into_iter().map(|(_, r)| r).collect()
}

fn backend(name: &str, port: u16, weight: Option<u32>) -> Value {
    match weight {
        Some(weight) => json!({"name": name, "port": port, "weight": weight}),
        None => json!({"name": name, "port": port}),
    }
}

#[test]
fn each_match_kind_becomes_the_proxys_match() {
    let index = cluster();
    let v1 = [backend("reviews-v1", 80, None)];
    // (match, expected path, method, headers)
    type Case = (Value, Option<PathMatch>, Option<&'static str>, Vec<HeaderMatch>);
    let cases: Vec<Case> = vec![
        (
            json!({"path": {"type": "Exact", "value": "/a"}}),
            Some(PathMatch::Exact("/a".into())),
            None,
            vec![],
        ),
        (
            json!({"path": {"type": "PathPrefix", "value": "/api"}}),
            Some(PathMatch::Prefix("/api".into())),
            None,
            vec![],
        ),
        (json!({"path": {"value": "/b"}}), Some(PathMatch::Prefix("/b".into())), None, vec![]),
        (json!({"path": {"type": "PathPrefix", "value": "/"}}), None, None, vec![]),
        (
            json!({"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"}}),
            Some(PathMatch::Regex("/v[0-9]+/.*".into())),
            None,
            vec![],
        ),
        (json!({"method": "POST"}), None, Some("POST"), vec![]),
        (
            json!({"headers": [{"name": "X-Canary", "value": "1"},
                               {"type": "RegularExpression", "name": "user", "value": "a.*"}]}),
            None,
            None,
            vec![
                HeaderMatch { name: "x-canary".into(), value: HeaderValueMatch::Exact("1".into()) },
                HeaderMatch { name: "user".into(), value: HeaderValueMatch::Regex("a.*".into()) },
            ],
        ),
    ];
    for (matching, path, method, headers) in cases {
        let spec = http(json!([{"matches": [matching.clone()], "backendRefs": v1}]));
        let route = &routes(&index, &spec)[0];
        let got = &route.matches[0];
        assert_eq!((&got.path, got.method.as_deref(), &got.headers), (&path, method, &headers), "{matching}");
    }
}

#[test]
fn weights_timeouts_and_the_mirror_translate() {
    let index = cluster();
    let spec = http(json!([{
        "name": "split",
        "backendRefs": [backend("reviews-v1", 80, Some(80)), backend("reviews-v2", 80, Some(20)),
                        {"name": "ratings", "namespace": "other", "port": 80}],
        "timeouts": {"request": "5s", "backendRequest": "1500ms"},
        "filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": "reviews-v2", "port": 80}, "fraction": {"numerator": 1, "denominator": 4}}}]
    }]));
    let route = &routes(&index, &spec)[0];
    assert_eq!(route.name.as_deref(), Some("split"));
    assert!(route.matches[0].path.is_none(), "no match: every request");
    let weights: Vec<_> = route.backends.iter().map(|b| (b.name.as_str(), b.weight)).collect();
    assert_eq!(
        weights,
        [("reviews-v1", 80), ("reviews-v2", 20)],
        "ratings is in another namespace, no grant"
    );
    assert_eq!(route.timeout, Some(Duration::from_secs(5)));
    let retries = route.retries.as_ref().expect("backendRequest bounds each try");
    assert_eq!((retries.attempts, retries.per_try_timeout), (1, Some(Duration::from_millis(1500))));
    let mirror = route.mirror.as_ref().expect("mirror");
    assert_eq!((mirror.backend.as_str(), mirror.percent), ("reviews-v2", 25.0));

    let off =
        http(json!([{"backendRefs": [backend("reviews-v1", 80, None)], "timeouts": {"request": "0s"}}]));
    assert_eq!(routes(&index, &off)[0].timeout, None, "0s turns the timeout off");
}

#[test]
fn query_parameters_and_header_modifiers_translate() {
    let index = cluster();
    let spec = http(json!([{
        "matches": [{"queryParams": [{"name": "animal", "value": "whale"},
                                     {"type": "RegularExpression", "name": "color", "value": "bl.*"}]}],
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "X-Set", "value": "s"}], "add": [{"name": "X-Add", "value": "a"}], "remove": ["X-Gone"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "X-Served-By", "value": "v1"}]}}
        ],
        "backendRefs": [backend("reviews-v1", 80, None)]
    }]));
    let route = &routes(&index, &spec)[0];
    let queries: Vec<_> = route.matches[0].query_params.iter().map(|q| (q.name.as_str(), &q.value)).collect();
    assert_eq!(
        queries,
        [
            ("animal", &HeaderValueMatch::Exact("whale".into())),
            ("color", &HeaderValueMatch::Regex("bl.*".into()))
        ]
    );
    let request = route.request_headers.as_ref().expect("request edits");
    assert_eq!((request.set[0].name.as_str(), request.set[0].value.as_str()), ("X-Set", "s"));
    assert_eq!(
        (request.add[0].name.as_str(), request.remove.as_slice()),
        ("X-Add", &["X-Gone".to_owned()][..])
    );
    let response = route.response_headers.as_ref().expect("response edits");
    assert_eq!(response.add[0].value, "v1");
    assert!(response.set.is_empty() && response.remove.is_empty());
}

#[test]
fn redirects_and_rewrites_translate_per_match() {
    use braid_api::config::PathRewriteConfig;
    let index = cluster();
    let spec = http(json!([
        {"matches": [{"path": {"value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org", "statusCode": 301,
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"value": "/api"}}],
         "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal",
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/v2"}}}],
         "backendRefs": [backend("reviews-v1", 80, None)]}
    ]));
    let routes = routes(&index, &spec);
    let redirect = routes[0].redirect.as_ref().expect("redirect");
    assert_eq!((redirect.hostname.as_deref(), redirect.status), (Some("example.org"), 301));
    assert_eq!(
        redirect.path,
        Some(PathRewriteConfig::ReplacePrefixMatch { prefix: "/old".into(), with: "/new".into() })
    );
    assert!(routes[0].fault.is_none(), "a redirect needs no backend: no 500");
    let rewrite = routes[1].rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.hostname.as_deref(), Some("api.internal"));
    assert_eq!(rewrite.path, Some(PathRewriteConfig::ReplaceFullPath("/v2".into())));
}

#[test]
fn a_rule_with_nothing_to_send_to_answers_500() {
    let index = cluster();
    for rule in [
        json!({"backendRefs": []}),
        json!({"backendRefs": [backend("ghost", 80, None)]}),
        json!({"backendRefs": [backend("reviews-v1", 80, Some(0))]}),
    ] {
        let route = &routes(&index, &http(json!([rule.clone()])))[0];
        let abort = route.fault.as_ref().and_then(|f| f.abort.as_ref()).expect("aborted");
        assert_eq!((abort.status, abort.percent), (500, 100.0), "{rule}");
    }
}

#[test]
fn grpc_methods_become_paths() {
    let index = cluster();
    let cases = [
        (json!({"service": "shop.Cart", "method": "Add"}), PathMatch::Exact("/shop.Cart/Add".into())),
        (json!({"service": "shop.Cart"}), PathMatch::Prefix("/shop.Cart".into())),
        (json!({"method": "Add"}), PathMatch::Regex("/[^/]+/Add".into())),
        (
            json!({"type": "RegularExpression", "service": "shop\\..*", "method": "A.*"}),
            PathMatch::Regex("/shop\\..*/A.*".into()),
        ),
    ];
    for (method, path) in cases {
        let spec = grpc(
            json!([{"matches": [{"method": method.clone()}], "backendRefs": [backend("reviews-v2", 80, None)]}]),
        );
        let route = &routes(&index, &spec)[0];
        assert_eq!(route.matches[0].path.as_ref(), Some(&path), "{method}");
        assert_eq!(route.backends[0].name, "reviews-v2");
    }
}

#[test]
fn what_the_proxy_cannot_do_is_refused_with_its_field() {
    let index = cluster();
    let v1 = backend("reviews-v1", 80, None);
    let cases = [
        (
            json!({"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"rename": ["a"]}}], "backendRefs": [v1]}),
            "spec.rules[0].filters[0].requestHeaderModifier",
        ),
        (
            json!({"filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}], "backendRefs": [v1]}),
            "spec.rules[0].filters[0].type",
        ),
        (
            json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                   "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
                   "backendRefs": [v1]}),
            "spec.rules[0].filters.urlRewrite.path",
        ),
        (
            json!({"backendRefs": [{"name": "reviews-v1", "port": 80,
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}}]}]}),
            "spec.rules[0].backendRefs[0].filters[0].type",
        ),
        (
            json!({"backendRefs": [v1], "sessionPersistence": {"type": "Cookie"}}),
            "spec.rules[0].sessionPersistence",
        ),
        (json!({"backendRefs": [v1], "retry": {"attempts": 2}}), "spec.rules[0].retry"),
        (json!({"backendRefs": [v1], "timeouts": {"request": "soon"}}), "spec.rules[0].timeouts.request"),
    ];
    for (rule, field) in cases {
        let refusal = translate(
            "shop",
            "r",
            "",
            &http(json!([rule.clone()])),
            &("shop".into(), "reviews".into()),
            80,
            &index,
        )
        .expect_err(&rule.to_string());
        assert_eq!((refusal.reason, refusal.field.as_str()), ("UnsupportedValue", field), "{rule}");
    }
}

fn install(index: &mut Index, kind: RouteKind, name: &str, created: &str, spec: RouteSpec) {
    index.upsert_gateway_route(
        kind,
        key("shop", name),
        GatewayRouteInfo { generation: 1, created: created.into(), spec },
    );
}

#[test]
fn routes_of_a_service_are_ordered_by_the_apis_precedence() {
    let mut index = cluster();
    let to = |b: &str| json!([backend(b, 80, None)]);
    install(
        &mut index,
        RouteKind::Http,
        "old",
        "2026-01-01T00:00:00Z",
        http(json!([
            {"name": "prefix-short", "matches": [{"path": {"value": "/a"}}], "backendRefs": to("reviews-v1")},
            {"name": "regex", "matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}], "backendRefs": to("reviews-v1")},
        ])),
    );
    install(
        &mut index,
        RouteKind::Http,
        "new",
        "2026-02-01T00:00:00Z",
        http(json!([
            {"name": "prefix-long", "matches": [{"path": {"value": "/a/b"}}], "backendRefs": to("reviews-v2")},
            {"name": "exact", "matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": to("reviews-v2")},
            {"name": "method", "matches": [{"path": {"value": "/a"}, "method": "GET"}], "backendRefs": to("reviews-v2")},
            {"name": "newer-prefix-short", "matches": [{"path": {"value": "/a"}}], "backendRefs": to("reviews-v2")},
        ])),
    );
    install(
        &mut index,
        RouteKind::Grpc,
        "rpc",
        "2026-03-01T00:00:00Z",
        grpc(
            json!([{"name": "grpc-exact", "matches": [{"method": {"service": "s.S", "method": "M"}}], "backendRefs": to("reviews-v2")}]),
        ),
    );
    let service = index.destination(&key("shop", "reviews"), 80).service.expect("known");
    let order: Vec<&str> = service.routes.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(
        order,
        ["grpc-exact", "exact", "prefix-long", "method", "prefix-short", "newer-prefix-short", "regex"],
        "exact (longer first), then longer prefixes, a method match first among equal paths, the older route on a \
         tie; no route to the Service after them: a request no rule matches gets a 404 (GAMMA)"
    );
    let config = json!({"identity": {"identity": "spiffe://cluster.local/ns/shop/sa/web",
        "endpoint": "id:8080", "tokenFile": "/t", "trustBundleFile": "/b"}, "services": [service]});
    braid_api::config::Config::parse(&config.to_string()).expect("the proxy accepts what the server sends");
}

#[test]
fn a_consumer_route_applies_to_its_namespaces_clients_only_and_replaces_the_producer_routes_there() {
    let mut index = cluster();
    let ratings = key("other", "ratings");
    // The producer's own route, in other: every client gets it.
    index.upsert_gateway_route(
        RouteKind::Http,
        key("other", "producer"),
        GatewayRouteInfo {
            generation: 1,
            created: "2026-01-01T00:00:00Z".into(),
            spec: serde_json::from_value(
                json!({"parentRefs": [{"group": "", "kind": "Service", "name": "ratings"}],
                "rules": [{"name": "producer-rule", "backendRefs": [{"name": "ratings", "port": 80}]}]}),
            )
            .map(RouteSpec::Http)
            .unwrap(),
        },
    );
    // shop's consumer route for other/ratings: a response header, and the parent Service itself
    // as its backend, which needs no ReferenceGrant.
    let consumer = json!({"parentRefs": [{"group": "", "kind": "Service", "name": "ratings", "namespace": "other", "port": 80}],
        "rules": [{"name": "consumer-rule", "filters": [{"type": "ResponseHeaderModifier",
            "responseHeaderModifier": {"set": [{"name": "x-consumer", "value": "shop"}]}}],
            "backendRefs": [{"name": "ratings", "namespace": "other", "port": 80}]}]});
    install(
        &mut index,
        RouteKind::Http,
        "consumer",
        "2026-01-02T00:00:00Z",
        RouteSpec::Http(serde_json::from_value(consumer).unwrap()),
    );
    assert!(index.has_consumer_routes(&ratings, 80, "shop"));
    assert!(!index.has_consumer_routes(&ratings, 80, "other"), "the producer's own namespace has none");
    assert!(!index.has_consumer_routes(&ratings, 80, "elsewhere"));

    let names = |client: Option<&str>| {
        let service = index.destination_for(&ratings, 80, client).service.expect("known");
        let names: Vec<String> = service.routes.iter().filter_map(|r| r.name.clone()).collect();
        (names, service)
    };
    let (for_shop, service) = names(Some("shop"));
    assert_eq!(for_shop, ["consumer-rule"], "shop's clients: their own route only");
    let backend = &service.routes[0].backends[0].name;
    let endpoints = &service.backends.iter().find(|b| &b.name == backend).expect("backend").endpoints;
    assert_eq!(endpoints[0].address.to_string(), "10.1.0.4:8080", "the parent Service's own pods");
    assert_eq!(service.routes[0].response_headers.as_ref().map(|h| h.set[0].value.as_str()), Some("shop"));
    assert_eq!(names(Some("elsewhere")).0, ["producer-rule"], "other clients: the producer's route");
    assert_eq!(names(None).0, ["producer-rule"]);
}

#[test]
fn a_cross_namespace_backend_needs_a_reference_grant() {
    let mut index = cluster();
    let spec = http(json!([{"backendRefs": [{"name": "ratings", "namespace": "other", "port": 80}]}]));
    let refused = routes(&index, &spec);
    assert!(refused[0].fault.is_some(), "no grant: the only backend is left out and the rule answers 500");
    let grant = serde_json::from_value(json!({
        "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
        "to": [{"group": "", "kind": "Service"}]}))
    .unwrap();
    index.upsert_reference_grant(key("other", "shop-may"), grant);
    install(&mut index, RouteKind::Http, "r", "", spec);
    let service = index.destination(&key("shop", "reviews"), 80).service.expect("known");
    assert_eq!(service.routes[0].backends[0].name, "ratings.other:80", "{:#?}", service.routes);
    let ratings = service.backends.iter().find(|b| b.name == "ratings.other:80").expect("backend");
    assert_eq!(ratings.endpoints[0].address.to_string(), "10.1.0.4:8080");
    assert_eq!(ratings.endpoints[0].identity.as_deref(), Some("spiffe://cluster.local/ns/other/sa/ratings"));
}

fn meshroute(index: &mut Index) {
    let spec = serde_json::from_value(
        json!({"service": "reviews", "rules": [{"backends": [{"service": "reviews-v1"}]}]}),
    )
    .unwrap();
    index.upsert_route(
        key("shop", "legacy"),
        RouteInfo { generation: 1, created: String::new(), accepted: true, spec },
    );
}

#[test]
fn a_meshroute_on_the_same_port_wins_and_both_say_so() {
    let mut index = cluster();
    install(
        &mut index,
        RouteKind::Http,
        "r",
        "",
        http(json!([{"backendRefs": [backend("reviews-v2", 80, None)]}])),
    );
    let before = index.destination(&key("shop", "reviews"), 80).service.expect("known");
    assert_eq!(before.routes[0].backends[0].name, "reviews-v2", "the HTTPRoute applies alone");
    meshroute(&mut index);
    let after = index.destination(&key("shop", "reviews"), 80).service.expect("known");
    assert_eq!(after.routes[0].backends[0].name, "reviews-v1", "the MeshRoute's rule");
    assert!(
        after.routes.iter().all(|r| r.backends.iter().all(|b| b.name != "reviews-v2")),
        "nothing of the HTTPRoute"
    );
    let route = index.gateway_routes().remove(0).1;
    let verdict = &verdicts("shop", "r", &route, &index)[0];
    assert_eq!((verdict.accepted.status, verdict.accepted.reason), (Status::False, "OverriddenByMeshRoute"));
    assert!(verdict.accepted.message.contains("MeshRoute legacy (port 80)"), "{}", verdict.accepted.message);
    // What the MeshRoute's status names, by the MeshRoute's port.
    assert_eq!(index.gateway_routes_on(&key("shop", "reviews"), Some(80)), ["HTTPRoute shop/r"]);
    assert_eq!(index.gateway_routes_on(&key("shop", "reviews"), None), ["HTTPRoute shop/r"]);
    assert!(
        index.gateway_routes_on(&key("shop", "reviews"), Some(81)).is_empty(),
        "the HTTPRoute is for port 80"
    );
    assert!(index.gateway_routes_on(&key("shop", "reviews-v1"), None).is_empty());
}

fn verdict_of(index: &Index, spec: Value) -> Vec<Verdict> {
    let spec: HttpRouteSpec = serde_json::from_value(spec).expect("spec");
    let route = GatewayRouteInfo { generation: 4, created: String::new(), spec: RouteSpec::Http(spec) };
    verdicts("shop", "r", &route, index)
}

#[test]
fn the_status_of_each_refusal() {
    let index = cluster();
    let service =
        |name: &str, port: Option<i32>| json!({"group": "", "kind": "Service", "name": name, "port": port});
    let ok = json!([{"backendRefs": [backend("reviews-v1", 80, None)]}]);
    // (spec, Accepted (status, reason), ResolvedRefs (status, reason))
    let cases = [
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": ok}),
            (Status::True, "Accepted"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [service("reviews", None)], "rules": ok}),
            (Status::True, "Accepted"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [service("ghost", Some(80))], "rules": ok}),
            (Status::False, "NoMatchingParent"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(81))], "rules": ok}),
            (Status::False, "NoMatchingParent"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            // A consumer route: shop's route for other/ratings.
            json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "ratings", "namespace": "other"}], "rules": ok}),
            (Status::True, "Accepted"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "ghost", "namespace": "other"}], "rules": ok}),
            (Status::False, "NoMatchingParent"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": {}}],
            "backendRefs": [backend("reviews-v1", 80, None)]}]}),
            (Status::False, "UnsupportedValue"),
            (Status::True, "ResolvedRefs"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": [{"backendRefs": [backend("ghost", 80, None)]}]}),
            (Status::True, "Accepted"),
            (Status::False, "BackendNotFound"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": [{"backendRefs": [{"name": "ratings", "namespace": "other", "port": 80}]}]}),
            (Status::True, "Accepted"),
            (Status::False, "RefNotPermitted"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": [{"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}]}),
            (Status::True, "Accepted"),
            (Status::False, "InvalidKind"),
        ),
        (
            json!({"parentRefs": [service("reviews", Some(80))], "rules": [{"backendRefs": [backend("reviews-v1", 80, None)],
            "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ghost", "port": 80}}}]}]}),
            (Status::True, "Accepted"),
            (Status::False, "BackendNotFound"),
        ),
    ];
    for (spec, accepted, resolved) in cases {
        let verdicts = verdict_of(&index, spec.clone());
        assert_eq!(verdicts.len(), 1, "{spec}");
        let v = &verdicts[0];
        assert_eq!((v.accepted.status, v.accepted.reason), accepted, "{spec}: {}", v.accepted.message);
        assert_eq!((v.resolved.status, v.resolved.reason), resolved, "{spec}: {}", v.resolved.message);
    }
    let gateway = verdict_of(&index, json!({"parentRefs": [{"name": "my-gateway"}], "rules": ok}));
    assert!(gateway.is_empty(), "a Gateway parent is another controller's");
}

#[test]
fn the_status_keeps_other_controllers_entries_and_transition_times() {
    let index = cluster();
    let verdicts = verdict_of(
        &index,
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
        "rules": [{"backendRefs": [backend("reviews-v1", 80, None)]}]}),
    );
    let theirs: RouteStatus = serde_json::from_value(json!({"parents": [{"parentRef": {"name": "gw"},
        "controllerName": "example.com/gateway", "conditions": []}]}))
    .unwrap();
    let t0 = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap());
    let t1 = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-02T00:00:00Z".parse().unwrap());
    let first = desired_status(&theirs, &verdicts, 4, &t0);
    assert_eq!(first.parents.len(), 2);
    assert_eq!(first.parents[0], theirs.parents[0], "the gateway's entry is untouched");
    let ours = &first.parents[1];
    assert_eq!(ours.controller_name, CONTROLLER_NAME);
    let types: Vec<_> = ours
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.observed_generation))
        .collect();
    assert_eq!(types, [("Accepted", "True", Some(4)), ("ResolvedRefs", "True", Some(4))]);
    let again = desired_status(&first, &verdicts, 4, &t1);
    assert_eq!(again, first, "nothing changed: the same status, the same transition times");
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(
        json["parents"][1]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "reviews", "port": 80})
    );
}

#[test]
fn programmed_counts_the_proxies_that_run_the_routes_generation() {
    use super::status::{PROGRAMMED, programmed};
    use crate::discovery::registry::Programming;
    let index = cluster();
    let mut verdicts = verdict_of(
        &index,
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
        "rules": [{"backendRefs": [backend("reviews-v1", 80, None)]}]}),
    );
    let counts = |acked, total, refusals: &[&str]| Programming {
        acked,
        total,
        refusals: refusals.iter().map(|r| (*r).to_owned()).collect(),
    };
    let cases = [
        (counts(0, 0, &[]), Status::True, "NoProxies", "no proxy routes to Service shop/reviews yet"),
        (counts(3, 3, &[]), Status::True, "Programmed", "3/3 proxies run generation 7"),
        (
            counts(1, 3, &["bad regex"]),
            Status::False,
            "Pending",
            "1/3 proxies run generation 7; refused: bad regex",
        ),
    ];
    for (counts, status, reason, message) in cases {
        let observed = programmed(&verdicts[0], &counts, 7);
        assert_eq!((observed.type_, observed.status, observed.reason), (PROGRAMMED, status, reason));
        assert!(observed.message.starts_with(message), "{}", observed.message);
    }
    // Not accepted: nothing to program.
    let ghost = verdict_of(
        &index,
        json!({"parentRefs": [{"group": "", "kind": "Service", "name": "ghost"}], "rules": []}),
    );
    assert_eq!(programmed(&ghost[0], &counts(0, 0, &[]), 1).reason, "NotAccepted");
    // Written as a third condition of the parent's entry.
    verdicts[0].programmed = Some(programmed(&verdicts[0], &counts(2, 2, &[]), 7));
    let t0 = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-01-01T00:00:00Z".parse().unwrap());
    let status = desired_status(&RouteStatus::default(), &verdicts, 7, &t0);
    let types: Vec<_> = status.parents[0].conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Accepted", "ResolvedRefs", "braid.dev/Programmed"]);
}
