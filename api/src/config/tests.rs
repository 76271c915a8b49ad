//! The configuration as a file gives it: parsed, refused with the field and the reason, and
//! written back.

use super::*;

const SEED: &str = r#"
admin: 127.0.0.1:9000
services:
  - name: reviews.default.svc.cluster.local
    hosts: [reviews]
    addresses: ["10.96.0.10:80"]
    backends:
      - name: v1
        endpoints: [{ address: "10.0.0.1:8080", meshed: true }]
      - name: v2
        endpoints: [{ address: "10.0.0.2:8080" }]
    routes:
      - name: get-v1
        matches: [{ path: { prefix: /v1 }, method: GET, headers: [{ name: x-user, regex: "a.*" }] }]
        backends: [{ name: v1 }]
        timeout: 5s
        retries: { attempts: 3, perTryTimeout: 2s, retryOn: [5xx, connect-failure] }
      - backends: [{ name: v1, weight: 80 }, { name: v2, weight: 20 }]
"#;

#[test]
fn parses_the_seed_routes() {
    let config = Config::parse(SEED).unwrap();
    let service = &config.services[0];
    assert_eq!(service.routes.len(), 2);
    let retries = service.routes[0].retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 3);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(retries.retry_on, vec![RetryOn::FiveXx, RetryOn::ConnectFailure]);
    assert_eq!(service.routes[0].timeout, Some(Duration::from_secs(5)));
    assert_eq!(service.routes[1].backends[1].weight, 20);
    assert!(service.backends[0].endpoints[0].meshed);
    assert_eq!(config.inbound, InboundConfig::default());
    assert_eq!(service.retry_budget.percent, 20.0);
}

#[test]
fn serializes_back_to_the_same_config() {
    let config = Config::parse(SEED).unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(Config::parse(&json).unwrap(), config);
}

/// The seed with the service's `loadBalancer` set to `value`.
fn with_load_balancer(value: &str) -> String {
    SEED.replace("    routes:\n", &format!("    loadBalancer: {value}\n    routes:\n"))
}

#[test]
fn parses_load_balancing_choices() {
    let config = Config::parse(&with_load_balancer(
        "{ algorithm: round-robin, hashOn: { header: x-session }, maxEjectedPercent: 10 }",
    ))
    .unwrap();
    let lb = &config.services[0].load_balancer;
    assert_eq!(lb.algorithm, Algorithm::RoundRobin);
    assert_eq!(lb.hash_on, Some(HashOn::Header("x-session".into())));
    assert_eq!(lb.max_ejected_percent, 10);
    let config =
        Config::parse(&with_load_balancer("{ algorithm: least-request, hashOn: sourceIp }")).unwrap();
    assert_eq!(config.services[0].load_balancer.hash_on, Some(HashOn::SourceIp));
    assert_eq!(Config::parse(SEED).unwrap().services[0].load_balancer, LoadBalancerConfig::default());
}

fn refused(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn refuses_bad_files_with_the_field_and_the_reason() {
    let cases = [
        ("services: [", "not valid YAML"),
        ("servics: []", "unknown field"),
        (&SEED.replace("weight: 80", "weight: -1"), "not valid"),
        (&SEED.replace("timeout: 5s", "timeout: 5 seconds"), "is not a duration"),
        (
            &SEED.replace("{ name: v1 }", "{ name: v3 }"),
            "services[0].routes[0].backends[0].name: no backend named \"v3\"",
        ),
        (&SEED.replace("prefix: /v1", "prefix: v1"), "must start with /"),
        (
            &SEED.replace("a.*", "a("),
            "services[0].routes[0].matches[0].headers[0].regex: not a regular expression",
        ),
        (&SEED.replace("method: GET", "method: \"G T\""), "is not an HTTP method"),
        (
            &SEED.replace("meshed: true", "meshed: true, local: true"),
            "services[0].backends[0].endpoints[0].local: a local endpoint is this pod's own app",
        ),
        (&SEED.replace("attempts: 3", "attempts: 0"), "retries.attempts: must be between 1 and 10"),
        (&SEED.replace("weight: 80", "weight: 0").replace("weight: 20", "weight: 0"), "weights are all 0"),
        (
            &SEED.replace("hosts: [reviews]", "hosts: [reviews.default.svc.cluster.local]"),
            "used by two services",
        ),
        (
            &SEED.replace("    routes:\n      - name: get-v1", "    routez:\n      - name: get-v1"),
            "unknown field",
        ),
        (&SEED.replace("address: \"10.0.0.2:8080\"", "address: \"10.0.0.2\""), "not valid"),
        ("limits: { headTimeout: 0s }", "limits.headTimeout: must be at least 100ms"),
        ("limits: { headTimeout: soon }", "is not a duration"),
        ("limits: { maxConnectionsPerClient: 0 }", "limits.maxConnectionsPerClient: must be between 1 and"),
        (
            "limits: { maxConnections: 10, maxConnectionsPerClient: 11 }",
            "limits.maxConnectionsPerClient: must be between 1 and maxConnections",
        ),
        ("limits: { maxConnectionsPerClient: -1 }", "not valid"),
        ("limits: { idleTimeout: 10ms }", "limits.idleTimeout: must be at least 100ms"),
        ("limits: { idleTimeout: forever }", "is not a duration"),
        ("limits: { maxMirrorsInFlight: 0 }", "limits.maxMirrorsInFlight: must be at least 1"),
        ("limits: { mirrorTimeout: 0s }", "limits.mirrorTimeout: must be at least 1ms"),
        (
            &SEED.replace(
                "timeout: 5s",
                "timeout: 5s\n        requestHeaders: { set: [{ name: \"x y\", value: a }] }",
            ),
            "services[0].routes[0].requestHeaders.set: \"x y\" is not a header name",
        ),
        (
            &SEED.replace(
                "timeout: 5s",
                "timeout: 5s\n        responseHeaders: { add: [{ name: x, value: \"a\\nb\" }] }",
            ),
            "services[0].routes[0].responseHeaders.add: the value of \"x\" is not a header value",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        responseHeaders: { remove: [\"\"] }"),
            "services[0].routes[0].responseHeaders.remove: \"\" is not a header name",
        ),
        (
            &SEED.replace("method: GET,", "method: GET, queryParams: [{ name: q, regex: \"a(\" }],"),
            "services[0].routes[0].matches[0].queryParams[0].regex: not a regular expression",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        requestHeaders: { rename: [] }"),
            "unknown field",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        redirect: { status: 200 }"),
            "services[0].routes[0].redirect.status: 200 is not 301, 302, 303, 307 or 308",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        redirect: { scheme: ftp }"),
            "services[0].routes[0].redirect.scheme: \"ftp\" is not http or https",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        rewrite: { path: { replaceFullPath: v2 } }"),
            "services[0].routes[0].rewrite.path: \"v2\" must start with /",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        rewrite: { hostname: \"a b\" }"),
            "services[0].routes[0].rewrite.hostname: \"a b\" is not a host name",
        ),
        (
            &SEED
                .replace("timeout: 5s", "timeout: 5s\n        rateLimit: { requestsPerSecond: 0, burst: 1 }"),
            "services[0].routes[0].rateLimit.requestsPerSecond: must be from 1 to 1000000",
        ),
        (
            &SEED
                .replace("timeout: 5s", "timeout: 5s\n        rateLimit: { requestsPerSecond: 5, burst: 0 }"),
            "services[0].routes[0].rateLimit.burst: must be from 1 to 1000000",
        ),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        rateLimit: { requestsPerSecond: 5 }"),
            "missing field `burst`",
        ),
        (
            &SEED.replace(
                "timeout: 5s",
                "timeout: 5s\n        rateLimit: { requestsPerSecond: -5, burst: 1 }",
            ),
            "not valid",
        ),
        (
            &with_load_balancer("{ maxEjectedPercent: 101 }"),
            "services[0].loadBalancer.maxEjectedPercent: must be between 0 and 100",
        ),
        (
            &with_load_balancer("{ hashOn: { header: \"x user\" } }"),
            "services[0].loadBalancer.hashOn: the header or cookie name must be a token",
        ),
        (&with_load_balancer("{ hashOn: { cookie: \"\" } }"), "services[0].loadBalancer.hashOn"),
        (&with_load_balancer("{ algorithm: random }"), "unknown variant `random`"),
        (
            &SEED.replace("timeout: 5s", "timeout: 5s\n        retryBudget: { ttl: 0s }"),
            "services[0].routes[0].retryBudget.ttl: must be between 1s and 60s",
        ),
        (
            &SEED.replace("    routes:\n", "    maxRequests: 0\n    routes:\n"),
            "services[0].maxRequests: must be from 1 to 1000000",
        ),
        (
            &SEED.replace("    routes:\n", "    maxRequestsPerConnection: 0\n    routes:\n"),
            "services[0].maxRequestsPerConnection: must be from 1 to 1000000",
        ),
        (
            &SEED.replace("    routes:\n", "    maxConnections: 0\n    routes:\n"),
            "services[0].maxConnections: must be from 1 to 1000000",
        ),
        (
            &SEED.replace("    routes:\n", "    maxPendingRequests: 5\n    routes:\n"),
            "services[0].maxPendingRequests: requests wait for a connection only under maxConnections",
        ),
        (
            &SEED.replace(
                "    routes:\n",
                "    maxConnections: 2\n    maxPendingRequests: 2000000\n    routes:\n",
            ),
            "services[0].maxPendingRequests: must be from 0 to 1000000",
        ),
        (&with_load_balancer("{ hashOn: { body: x } }"), "unknown variant `body`"),
    ];
    for (text, expected) in cases {
        let error = refused(text);
        assert!(error.contains(expected), "expected {expected:?} in {error:?}");
    }
}

fn with_pod(pod: &str) -> String {
    SEED.replace("{ address: \"10.0.0.2:8080\" }", &format!("{{ address: \"10.0.0.2:8080\", pod: {pod} }}"))
}

#[test]
fn an_endpoint_names_its_pod_and_workload() {
    let text = with_pod(
        "{ namespace: shop, name: reviews-v2-7d9f-x2x, serviceAccount: reviews, \
         workload: { kind: deployment, name: reviews-v2 }, podTemplateHash: 7d9f }",
    );
    let config = Config::parse(&text).unwrap();
    let pod = config.services[0].backends[1].endpoints[0].pod.clone().unwrap();
    assert_eq!(pod.name, "reviews-v2-7d9f-x2x");
    assert_eq!(pod.workload, Some(Workload { kind: WorkloadKind::Deployment, name: "reviews-v2".into() }));
    assert_eq!(Config::parse(&serde_json::to_string(&config).unwrap()).unwrap(), config);
    assert_eq!(Config::parse(SEED).unwrap().services[0].backends[1].endpoints[0].pod, None);
}

#[test]
fn refuses_an_endpoint_pod_that_is_not_named_as_kubernetes_names() {
    let at = "services[0].backends[1].endpoints[0].pod";
    let cases = [
        ("{ namespace: shop }", "missing field `name`".to_owned()),
        ("{ namespace: shop, name: \"\" }", format!("{at}.name: must be a Kubernetes name")),
        ("{ namespace: Shop, name: a }", format!("{at}.namespace: must be a Kubernetes name")),
        // A quote or a line break would end the label value in the metrics text.
        ("{ namespace: shop, name: \"a\\\"b\" }", format!("{at}.name: must be a Kubernetes name")),
        ("{ namespace: shop, name: \"a\\nb\" }", format!("{at}.name: must be a Kubernetes name")),
        (
            "{ namespace: shop, name: a, workload: { kind: deployment, name: \"x y\" } }",
            format!("{at}.workload.name: must be a Kubernetes name"),
        ),
        (
            "{ namespace: shop, name: a, workload: { kind: cronjob, name: x } }",
            "unknown variant `cronjob`".to_owned(),
        ),
        ("{ namespace: shop, name: a, serviceAccount: \"s/a\" }", format!("{at}.serviceAccount: must be")),
        ("{ namespace: shop, name: a, podTemplateHash: \"x}\" }", format!("{at}.podTemplateHash: must be")),
        (&format!("{{ namespace: shop, name: {} }}", "a".repeat(254)), format!("{at}.name: must be")),
        ("{ namespace: shop, name: a, labels: {} }", "unknown field `labels`".to_owned()),
    ];
    for (pod, expected) in cases {
        let error = refused(&with_pod(pod));
        assert!(error.contains(&expected), "{pod}: expected {expected:?} in {error:?}");
    }
}

#[test]
fn an_empty_file_is_an_empty_config() {
    assert_eq!(Config::parse("{}").unwrap(), Config::empty());
}

#[test]
fn the_discovery_section_is_checked() {
    let good = "discovery: { endpoint: \"braid-discovery.braid-system.svc:8086\", podNamespace: shop, podName: web-0 }";
    let config = Config::parse(good).unwrap();
    let discovery = config.discovery.as_ref().unwrap();
    assert_eq!(discovery.server_name(), "braid-discovery.braid-system.svc");
    assert_eq!(discovery.initial_timeout, Duration::from_secs(3));
    assert_eq!(discovery.idle_timeout, Duration::from_secs(600));
    let error = config.check_discovery_identity().unwrap_err().to_string();
    assert!(error.contains("needs this proxy's identity"), "{error}");
    let cases = [
        (good.replace(":8086", ""), "discovery.endpoint: must be host:port"),
        (good.replace("podName: web-0", "podName: \"\""), "discovery.podName: must not be empty"),
        (good.replace("podName: web-0", "podName: web-0, initialTimeout: 0s"), "discovery.initialTimeout"),
        (good.replace("podName: web-0", "podName: web-0, idleTimeout: 500ms"), "discovery.idleTimeout"),
        (good.replace("podName: web-0", "podName: web-0, serverName: \"a b\""), "discovery.serverName"),
        (good.replace("podName: web-0", "podName: web-0, bogus: 1"), "unknown field"),
        (
            good.replace(
                "podName: web-0",
                "podName: web-0, startupPolicy: { probes: [{ port: 0, path: /h }] }",
            ),
            "discovery.startupPolicy.probes[0].port: must be between 1 and 65535",
        ),
        (
            good.replace(
                "podName: web-0",
                "podName: web-0, startupPolicy: { probes: [{ port: 80, path: h }] }",
            ),
            "discovery.startupPolicy.probes[0].path: \"h\" must start with /",
        ),
        (
            good.replace("podName: web-0", "podName: web-0, startupPolicy: { rules: [{ from: [{}] }] }"),
            "discovery.startupPolicy.rules[0].from[0]: name exactly one of",
        ),
        (good.replace("podName: web-0", "podName: web-0, startupPolicy: { mtls: OPEN }"), "unknown variant"),
        (
            good.replace(
                "podName: web-0",
                "podName: web-0, startupPolicy: { source: { meshPolicies: [a, \"b,c\"] } }",
            ),
            "discovery.startupPolicy.source.meshPolicies[1]: \"b,c\" is not a MeshPolicy name",
        ),
        (
            good.replace(
                "podName: web-0",
                "podName: web-0, startupPolicy: { source: { meshPolicies: [\"\"] } }",
            ),
            "discovery.startupPolicy.source.meshPolicies[0]",
        ),
        (
            good.replace("podName: web-0", "podName: web-0, startupPolicy: { source: { default: open } }"),
            "unknown variant",
        ),
    ];
    for (text, expected) in cases {
        let error = refused(&text);
        assert!(error.contains(expected), "expected {expected:?} in {error:?}");
    }
}

#[test]
fn default_inbound_policies_are_named_as_linkerd_names_them_and_open_no_more_than_they_say() {
    for policy in DefaultInboundPolicy::ALL {
        assert_eq!(policy.as_str().parse::<DefaultInboundPolicy>(), Ok(policy));
    }
    let error = "allow-all".parse::<DefaultInboundPolicy>().unwrap_err().to_string();
    assert!(
        error.contains("\"allow-all\"") && error.contains("all-unauthenticated, all-authenticated or deny"),
        "{error}"
    );

    let probes = vec![ProbeConfig { port: 8080, path: "/healthz".into() }];
    let open = DefaultInboundPolicy::AllUnauthenticated.policy(probes.clone());
    assert_eq!((open.mtls, open.rules.len()), (MtlsMode::Permissive, 1));
    let meshed = DefaultInboundPolicy::AllAuthenticated.policy(probes.clone());
    assert_eq!((meshed.mtls, meshed.rules.len()), (MtlsMode::Strict, 1));
    let closed = DefaultInboundPolicy::Deny.policy(probes.clone());
    assert_eq!((closed.mtls, closed.rules.len()), (MtlsMode::Strict, 0));
    assert_eq!(closed.probes, probes, "the kubelet's probes pass every default");
}

#[test]
fn the_limits_that_bound_one_client_have_defaults_and_can_be_set() {
    let limits = Config::parse("{}").unwrap().limits;
    assert_eq!(limits.connections_per_client(), 1000, "a tenth of maxConnections");
    assert_eq!(limits.idle_timeout, Duration::from_secs(3600));
    assert_eq!((limits.max_mirrors_in_flight, limits.mirror_timeout), (100, Duration::from_secs(10)));
    let small = Config::parse("limits: { maxConnections: 5 }").unwrap().limits;
    assert_eq!(small.connections_per_client(), 1, "never 0");
    let set = Config::parse(
        "limits: { maxConnectionsPerClient: 7, idleTimeout: 2m, maxMirrorsInFlight: 3, mirrorTimeout: 250ms }",
    )
    .unwrap()
    .limits;
    assert_eq!(set.connections_per_client(), 7);
    assert_eq!(set.idle_timeout, Duration::from_secs(120));
    assert_eq!((set.max_mirrors_in_flight, set.mirror_timeout), (3, Duration::from_millis(250)));
}

fn egress(services: &str) -> String {
    format!(
        "services:\n  - name: egress\n    addresses: [\"203.0.113.5:443\"]\n    backends: []\n    routes: []\n    egress:\n      unregistered: deny\n      services: {services}\n"
    )
}

#[test]
fn an_external_destination_is_read_with_its_services() {
    let config = Config::parse(&egress(
        "[{ name: shop/stripe, protocol: tls, hosts: [api.stripe.com] }, \
          { name: shop/web, protocol: http, hosts: [\"*.example.com\"], tls: { port: 443, caBundle: \"-----BEGIN CERTIFICATE-----\\n\" } }, \
          { name: shop/db, protocol: tcp, addresses: [203.0.113.0/24, \"2001:db8::/32\"] }]",
    ))
    .unwrap();
    let egress = config.services[0].egress.as_ref().unwrap();
    assert_eq!(egress.unregistered, super::egress::EgressAction::Deny);
    assert_eq!(egress.services.len(), 3);
    assert_eq!(egress.services[1].tls.as_ref().unwrap().port, 443);
    assert_eq!(egress.services[2].addresses[1].to_string(), "2001:db8::/32");
}

#[test]
fn refuses_bad_external_destinations_with_the_field_and_the_reason() {
    let cases = [
        (
            "[{ name: a, protocol: tls, hosts: [API.example.com] }]",
            "egress.services[0].hosts[0]: must be a lower-case DNS name",
        ),
        (
            "[{ name: a, protocol: tls, hosts: [\"*\"] }]",
            "egress.services[0].hosts[0]: must be a lower-case DNS name",
        ),
        (
            "[{ name: a, protocol: tcp, hosts: [db.example.com] }]",
            "egress.services[0].hosts: a tcp service is told by its addresses",
        ),
        ("[{ name: a, protocol: tcp }]", "egress.services[0].addresses: a tcp service needs addresses"),
        ("[{ name: a, protocol: http }]", "egress.services[0]: needs hosts or addresses"),
        ("[{ name: a, protocol: tcp, addresses: [10.0.0.0/40] }]", "is not an IP address or a network"),
        (
            "[{ name: a, protocol: tls, hosts: [a.b], tls: { port: 443 } }]",
            "egress.services[0].tls: TLS is originated for plaintext HTTP only",
        ),
        (
            "[{ name: a, protocol: http, hosts: [a.b], tls: { port: 0 } }]",
            "egress.services[0].tls.port: must be between 1 and 65535",
        ),
        (
            "[{ name: a, protocol: http, hosts: [a.b], tls: { port: 443, serverName: \"*.b\" } }]",
            "egress.services[0].tls.serverName",
        ),
        (
            "[{ name: a, protocol: http, hosts: [a.b], tls: { port: 443, caBundle: junk } }]",
            "egress.services[0].tls.caBundle: must hold PEM certificates",
        ),
        (
            "[{ name: a, protocol: http, hosts: [a.b] }, { name: a, protocol: http, hosts: [c.d] }]",
            "egress.services[1].name",
        ),
        ("[{ name: a, protocol: udp, hosts: [a.b] }]", "unknown variant"),
        ("[{ name: a, protocol: http, hosts: [a.b], weight: 1 }]", "unknown field"),
    ];
    for (services, expected) in cases {
        let error = refused(&egress(services));
        assert!(error.contains(expected), "{services}: {error}");
    }
    let with_backends = egress("[]").replace("backends: []", "backends: [{ name: b, endpoints: [] }]");
    assert!(
        refused(&with_backends)
            .contains("services[0].egress: an external destination has no backends or routes")
    );
}

#[test]
fn takes_a_collector_address_apart() {
    let endpoint =
        |collector: &str| TracingConfig { collector: collector.to_owned(), sampling_percent: 1.0 }.endpoint();
    let parts = |host: &str, port, path: &str| {
        Ok(CollectorEndpoint { host: host.to_owned(), port, traces_path: path.to_owned() })
    };
    assert_eq!(endpoint("http://jaeger.tracing:4318"), parts("jaeger.tracing", 4318, "/v1/traces"));
    assert_eq!(endpoint("http://collector"), parts("collector", 4318, "/v1/traces"));
    assert_eq!(endpoint("http://10.0.0.7:55681/otlp/"), parts("10.0.0.7", 55681, "/otlp/v1/traces"));
    assert_eq!(endpoint("http://[fd00::7]:4318"), parts("fd00::7", 4318, "/v1/traces"));
    for (bad, reason) in [
        ("https://collector:4318", "not an http:// URL"),
        ("collector:4318", "not an http:// URL"),
        ("http://:4318", "no valid host"),
        ("http://collector:0", "port must be a number"),
        ("http://collector:70000", "port must be a number"),
        ("http://user@collector", "no valid host"),
        ("http://[fd00::7:4318", "unclosed ["),
        ("http://collector/v1?x=1", "no query"),
    ] {
        let error = endpoint(bad).unwrap_err();
        assert!(error.contains(reason), "{bad}: {error}");
    }
}

#[test]
fn refuses_bad_tracing_settings_with_the_field_and_the_reason() {
    let parsed = Config::parse("tracing: { collector: \"http://jaeger:4318\" }").unwrap();
    assert_eq!(parsed.tracing.map(|t| t.sampling_percent), Some(1.0), "the default rate");
    for (text, reason) in [
        (
            "tracing: { collector: \"grpc://jaeger:4317\" }",
            "tracing.collector: \"grpc://jaeger:4317\" is not an http:// URL",
        ),
        (
            "tracing: { collector: \"http://jaeger\", samplingPercent: 101 }",
            "tracing.samplingPercent: must be between 0 and 100",
        ),
        (
            "tracing: { collector: \"http://jaeger\", samplingPercent: -1 }",
            "tracing.samplingPercent: must be between 0 and 100",
        ),
        (
            "tracing: { collector: \"http://jaeger\", samplingPercent: .nan }",
            "tracing.samplingPercent: must be between 0 and 100",
        ),
        ("tracing: { samplingPercent: 5 }", "missing field `collector`"),
        ("tracing: { collector: \"http://jaeger\", rate: 5 }", "unknown field"),
    ] {
        let error = refused(text);
        assert!(error.contains(reason), "{text}: {error}");
    }
}

#[test]
fn a_workload_kind_names_linkerds_labels() {
    for (kind, label) in [
        (WorkloadKind::Deployment, "deployment"),
        (WorkloadKind::ReplicaSet, "replicaset"),
        (WorkloadKind::StatefulSet, "statefulset"),
        (WorkloadKind::DaemonSet, "daemonset"),
        (WorkloadKind::Job, "job"),
    ] {
        assert_eq!(kind.as_str(), label);
        assert_eq!(kind.dst_label(), format!("dst_{label}"));
    }
}
