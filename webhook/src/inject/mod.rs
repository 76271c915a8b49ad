//! What an injected pod looks like: the one pure function that decides whether a pod is meshed and
//! builds the JSON patch that meshes it. The webhook and `braid-webhook inject` both call
//! [`inject`], so a pod injected by the API server and a manifest injected on a laptop carry the
//! same sidecar (one source of truth for the template, as Linkerd does with its patch chart).
//!
//! Here: [`inject`] and what it decides; `settings` (the Mesh's proxy settings with the pod's
//! annotations applied), `containers` (the init container, the proxy and their volumes), `patch`
//! (the JSON patch that adds them), `config` and `error`.

mod config;
mod containers;
mod error;
mod patch;
mod settings;
pub mod workload;

use std::collections::BTreeMap;

use braid_api::contract::{INJECT, INJECT_DISABLED, INJECT_ENABLED, INJECTED, PROXY_CONTAINER};
use json_patch::Patch;
use k8s_openapi::api::core::v1::Pod;

pub use config::{ControlPlane, InjectConfig};
pub use containers::{INIT_CONTAINER, TOKEN_EXPIRATION_SECONDS, TOKEN_VOLUME, TRUST_VOLUME, XTABLES_VOLUME};
pub use error::InjectError;
use settings::PodSettings;
pub use settings::{
    PROXY_CPU_LIMIT, PROXY_CPU_REQUEST, PROXY_IMAGE, PROXY_LOG_LEVEL, PROXY_MEMORY_LIMIT,
    PROXY_MEMORY_REQUEST, SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS,
};

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Mesh the pod with this patch; `pod` is the input with the patch applied.
    Inject(Box<Injection>),
    /// Leave the pod as it is.
    Skip(SkipReason),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    pub pod: Pod,
}

/// Why a pod was left alone; each is also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Neither the namespace label nor the pod annotation asks for the mesh.
    NotEnabled,
    /// The pod is annotated `braid.dev/inject: disabled`.
    OptedOut,
    /// The pod shares the node's network namespace: redirecting it would redirect the node.
    HostNetwork,
    /// The pod carries the proxy already (a second pass of the webhook, or `braid-webhook inject`).
    AlreadyInjected,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotEnabled => "not_enabled",
            SkipReason::OptedOut => "opted_out",
            SkipReason::HostNetwork => "host_network",
            SkipReason::AlreadyInjected => "already_injected",
        }
    }

    /// A sentence for logs and `braid-webhook inject`'s stderr.
    pub fn message(self) -> &'static str {
        match self {
            SkipReason::NotEnabled => {
                "neither the namespace label nor the pod annotation braid.dev/inject is \"enabled\""
            }
            SkipReason::OptedOut => "the pod is annotated braid.dev/inject: disabled",
            SkipReason::HostNetwork => "the pod uses hostNetwork; redirecting it would redirect the node",
            SkipReason::AlreadyInjected => "the pod has the braid proxy already",
        }
    }
}

/// Decides whether `pod` is meshed and builds the patch that meshes it.
///
/// Opt-in: the namespace label or the pod annotation `braid.dev/inject=enabled`; the annotation
/// `disabled` wins over the namespace. Pods already injected are skipped, so applying the patch
/// and calling this again yields `Skip(AlreadyInjected)`.
pub fn inject(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Decision, InjectError> {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|map| map.get(key)).map(String::as_str);

    if annotation(INJECTED).is_some() || has_proxy_container(pod) {
        return Ok(Decision::Skip(SkipReason::AlreadyInjected));
    }
    let pod_choice = match annotation(INJECT) {
        None => None,
        Some(INJECT_ENABLED) => Some(true),
        Some(INJECT_DISABLED) => return Ok(Decision::Skip(SkipReason::OptedOut)),
        Some(other) => return Err(InjectError::InvalidInjectValue { value: other.to_owned() }),
    };
    let namespace_enabled = namespace_labels.get(INJECT).map(String::as_str) == Some(INJECT_ENABLED);
    if pod_choice.is_none() && !namespace_enabled {
        return Ok(Decision::Skip(SkipReason::NotEnabled));
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    if spec.host_network == Some(true) {
        return Ok(Decision::Skip(SkipReason::HostNetwork));
    }

    let settings = PodSettings::read(&annotation, spec, config)?;
    let init_containers =
        [containers::init_container(&settings, config), containers::proxy_container(&settings, config)];
    let volumes = containers::volumes();
    // The trust bundle is published where the namespace label is; elsewhere the pod asks for it.
    let needs_bundle = !namespace_enabled;
    let patch = patch::build_patch(
        pod,
        &init_containers,
        &volumes,
        &config.proxy_version,
        settings.default_policy,
        needs_bundle,
    )?;
    let pod = patch::apply(pod, &patch)?;
    Ok(Decision::Inject(Box::new(Injection { patch, pod })))
}

fn has_proxy_container(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|container| container.name == PROXY_CONTAINER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::config::DefaultInboundPolicy;
    use braid_api::contract::{DEFAULT_INBOUND_POLICY, NEEDS_TRUST_BUNDLE, env};
    use braid_crds::mesh::ProxySettings;
    use braid_crds::mesh::{MeshSpec, ProxyResources};
    use serde_json::json;

    fn pod(annotations: serde_json::Value, spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "spec": spec,
        }))
        .unwrap()
    }

    fn app_spec() -> serde_json::Value {
        json!({"containers": [{"name": "app", "image": "app:1"}]})
    }

    fn enabled() -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT.to_owned(), INJECT_ENABLED.to_owned())])
    }

    fn config() -> InjectConfig {
        InjectConfig::defaults("v1", &ControlPlane::default())
    }

    fn injected(decision: Result<Decision, InjectError>) -> Injection {
        match decision {
            Ok(Decision::Inject(injection)) => *injection,
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    fn skipped(decision: Result<Decision, InjectError>) -> SkipReason {
        match decision {
            Ok(Decision::Skip(reason)) => reason,
            other => panic!("expected a skip, got {other:?}"),
        }
    }

    #[test]
    fn opt_in_comes_from_the_namespace_or_the_pod_and_opt_out_wins() {
        let none = BTreeMap::new();
        assert_eq!(skipped(inject(&pod(json!({}), app_spec()), &none, &config())), SkipReason::NotEnabled);
        injected(inject(&pod(json!({}), app_spec()), &enabled(), &config()));
        injected(inject(&pod(json!({INJECT: "enabled"}), app_spec()), &none, &config()));
        assert_eq!(
            skipped(inject(&pod(json!({INJECT: "disabled"}), app_spec()), &enabled(), &config())),
            SkipReason::OptedOut
        );
        // Another label value on the namespace is not an opt-in.
        let other = BTreeMap::from([(INJECT.to_owned(), "true".to_owned())]);
        assert_eq!(skipped(inject(&pod(json!({}), app_spec()), &other, &config())), SkipReason::NotEnabled);
    }

    #[test]
    fn an_unknown_inject_annotation_value_is_an_error_not_a_guess() {
        let err = inject(&pod(json!({INJECT: "true"}), app_spec()), &BTreeMap::new(), &config()).unwrap_err();
        assert_eq!(err, InjectError::InvalidInjectValue { value: "true".to_owned() });
        assert!(err.to_string().contains("neither \"enabled\" nor \"disabled\""), "{err}");
    }

    #[test]
    fn injection_is_idempotent() {
        let first = injected(inject(&pod(json!(null), app_spec()), &enabled(), &config()));
        assert_eq!(skipped(inject(&first.pod, &enabled(), &config())), SkipReason::AlreadyInjected);
        // A proxy container added by hand (no annotation) also counts.
        let by_hand = pod(json!({}), json!({"containers": [{"name": "app"}, {"name": PROXY_CONTAINER}]}));
        assert_eq!(skipped(inject(&by_hand, &enabled(), &config())), SkipReason::AlreadyInjected);
    }

    #[test]
    fn host_network_pods_are_skipped_even_when_opted_in() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "agent"}]});
        assert_eq!(
            skipped(inject(&pod(json!({INJECT: "enabled"}), spec), &enabled(), &config())),
            SkipReason::HostNetwork
        );
    }

    #[test]
    fn bad_annotations_only_matter_on_pods_that_are_meshed() {
        let bad = json!({SKIP_INBOUND_PORTS: "http"});
        assert_eq!(
            skipped(inject(&pod(bad.clone(), app_spec()), &BTreeMap::new(), &config())),
            SkipReason::NotEnabled
        );
        let err = inject(&pod(bad, app_spec()), &enabled(), &config()).unwrap_err();
        assert_eq!(err.metric_label(), "invalid_ports");
    }

    #[test]
    fn resource_annotations_are_validated_against_each_other() {
        let too_much = json!({PROXY_CPU_REQUEST: "2", PROXY_CPU_LIMIT: "500m"});
        let err = inject(&pod(too_much, app_spec()), &enabled(), &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the proxy's cpu request \"2\" is more than its limit \"500m\"; set braid.dev/proxy-cpu-limit too"
        );
        // The Mesh's memory limit (128Mi) applies when only the request is annotated.
        let err = inject(&pod(json!({PROXY_MEMORY_REQUEST: "1Gi"}), app_spec()), &enabled(), &config())
            .unwrap_err();
        assert!(matches!(err, InjectError::RequestAboveLimit { resource: "memory", .. }), "{err}");
        let err = inject(&pod(json!({PROXY_IMAGE: "a b"}), app_spec()), &enabled(), &config()).unwrap_err();
        assert_eq!(err.metric_label(), "invalid_value");
    }

    #[test]
    fn the_admin_port_is_skipped_inbound_once() {
        let annotations = json!({SKIP_INBOUND_PORTS: "4191,80"});
        let injection = injected(inject(&pod(annotations, app_spec()), &enabled(), &config()));
        let init = &injection.pod.spec.unwrap().init_containers.unwrap()[0];
        assert!(init.args.as_ref().unwrap().contains(&"--skip-inbound-ports=4191,80".to_owned()));
    }

    #[test]
    fn a_meshed_pod_without_spec_is_an_error() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(inject(&pod, &enabled(), &config()).unwrap_err(), InjectError::NoSpec);
    }

    #[test]
    fn settings_come_from_the_mesh_and_default_to_the_crd_defaults() {
        let defaults = config();
        assert_eq!(defaults.trust_domain, "cluster.local");
        assert_eq!(defaults.proxy_image, "braid.dev/braid-proxy:dev");
        assert_eq!(defaults.resources.memory_limit, "128Mi");

        let mesh = MeshSpec {
            trust_domain: "example.org".to_owned(),
            proxy: ProxySettings {
                image: "proxy:2".to_owned(),
                log_level: "debug".to_owned(),
                resources: ProxyResources { cpu_limit: Some("2".to_owned()), ..ProxyResources::default() },
            },
            ..MeshSpec::default()
        };
        let config = InjectConfig::from_mesh(&mesh, "v2", &ControlPlane::default());
        let injection = injected(inject(&pod(json!({}), app_spec()), &enabled(), &config));
        let proxy = &injection.pod.spec.unwrap().init_containers.unwrap()[1];
        assert_eq!(proxy.image.as_deref(), Some("proxy:2"));
        let env = |name: &str| {
            proxy.env.iter().flatten().find(|var| var.name == name).and_then(|var| var.value.clone())
        };
        assert_eq!(env("BRAID_TRUST_DOMAIN").as_deref(), Some("example.org"));
        assert_eq!(env("BRAID_LOG").as_deref(), Some("debug"));
        assert_eq!(proxy.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0, "2");
        assert_eq!(injection.pod.metadata.annotations.unwrap()[INJECTED], "v2");
    }

    #[test]
    fn a_pods_image_annotation_never_chooses_what_runs_as_root() {
        let annotated = pod(json!({PROXY_IMAGE: "attacker.example/anything:1"}), app_spec());
        let injection = injected(inject(&annotated, &enabled(), &config()));
        let init = injection.pod.spec.unwrap().init_containers.unwrap();
        assert_eq!(init[0].name, INIT_CONTAINER);
        assert_eq!(
            init[0].image.as_deref(),
            Some("braid.dev/braid-proxy:dev"),
            "the Mesh's image, with NET_ADMIN"
        );
        assert_eq!(
            init[1].image.as_deref(),
            Some("attacker.example/anything:1"),
            "the unprivileged sidecar's"
        );
        assert_eq!(init[1].security_context.as_ref().unwrap().run_as_non_root, Some(true));
    }

    #[test]
    fn a_pod_meshed_by_its_annotation_outside_a_meshed_namespace_asks_for_the_trust_bundle() {
        let labels = |pod: &Pod| pod.metadata.labels.clone().unwrap_or_default();
        let by_annotation =
            injected(inject(&pod(json!({INJECT: "enabled"}), app_spec()), &BTreeMap::new(), &config()));
        assert_eq!(labels(&by_annotation.pod).get(NEEDS_TRUST_BUNDLE).map(String::as_str), Some("true"));
        let by_namespace = injected(inject(&pod(json!({}), app_spec()), &enabled(), &config()));
        assert!(!labels(&by_namespace.pod).contains_key(NEEDS_TRUST_BUNDLE), "published there already");
        let mut labelled = pod(json!({INJECT: "enabled"}), app_spec());
        labelled.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        let pod_labels = labels(&injected(inject(&labelled, &BTreeMap::new(), &config())).pod);
        assert_eq!((pod_labels["app"].as_str(), pod_labels[NEEDS_TRUST_BUNDLE].as_str()), ("web", "true"));
    }

    fn proxy_env(pod: &Pod) -> BTreeMap<String, String> {
        let spec = pod.spec.as_ref().expect("spec");
        let proxy = spec.init_containers.iter().flatten().find(|c| c.name == PROXY_CONTAINER).expect("proxy");
        proxy.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect()
    }

    #[test]
    fn the_default_inbound_policy_and_the_probes_reach_the_proxy_and_the_pod() {
        let spec = json!({"containers": [{"name": "app", "image": "app:1",
            "readinessProbe": {"httpGet": {"path": "/ready?full=1", "port": 8080}}}]});
        let meshed = injected(inject(&pod(json!({}), spec.clone()), &enabled(), &config())).pod;
        let env = proxy_env(&meshed);
        assert_eq!(env[env::DEFAULT_INBOUND_POLICY], "all-unauthenticated", "the Mesh's default");
        assert_eq!(env[env::INBOUND_PROBES], r#"[{"port":8080,"path":"/ready?full=1"}]"#);
        let annotations = meshed.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[DEFAULT_INBOUND_POLICY], "all-unauthenticated", "recorded for discovery");

        let closed = InjectConfig { default_inbound_policy: DefaultInboundPolicy::Deny, ..config() };
        let meshed = injected(inject(&pod(json!({"a": "b"}), spec.clone()), &enabled(), &closed)).pod;
        assert_eq!(proxy_env(&meshed)[env::DEFAULT_INBOUND_POLICY], "deny");
        assert_eq!(
            meshed.metadata.annotations.as_ref().expect("annotations")[DEFAULT_INBOUND_POLICY],
            "deny"
        );

        let own = json!({DEFAULT_INBOUND_POLICY: "all-authenticated"});
        let meshed = injected(inject(&pod(own, spec), &enabled(), &closed)).pod;
        assert_eq!(
            proxy_env(&meshed)[env::DEFAULT_INBOUND_POLICY],
            "all-authenticated",
            "the pod's own wins"
        );

        let no_probes = injected(inject(&pod(json!({}), app_spec()), &enabled(), &config())).pod;
        assert!(!proxy_env(&no_probes).contains_key(env::INBOUND_PROBES));
    }

    #[test]
    fn an_unknown_default_inbound_policy_refuses_the_pod_with_the_choices() {
        let bad = json!({DEFAULT_INBOUND_POLICY: "allow-all"});
        let err = inject(&pod(bad, app_spec()), &enabled(), &config()).unwrap_err();
        assert_eq!(err.metric_label(), "invalid_default_policy");
        let message = err.to_string();
        assert!(
            message.contains("braid.dev/default-inbound-policy")
                && message.contains("all-unauthenticated, all-authenticated or deny"),
            "{message}"
        );
    }
}
