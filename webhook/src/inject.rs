//! What an injected pod looks like: the one pure function that decides whether a pod is meshed and
//! builds the JSON patch that meshes it. The webhook and `braid-webhook inject` both call
//! [`inject`], so a pod injected by the API server and a manifest injected on a laptop carry the
//! same sidecar (one source of truth for the template, as Linkerd does with its patch chart).

use std::collections::BTreeMap;

use braid_api::config::{DefaultInboundPolicy, ProbeConfig};
use braid_api::contract::{
    ADMIN_PORT, DEFAULT_INBOUND_POLICY, INBOUND_PORT, INJECT, INJECT_DISABLED, INJECT_ENABLED, INJECTED,
    NEEDS_TRUST_BUNDLE, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID, TOKEN_AUDIENCE, TOKEN_FILE, TOKEN_MOUNT,
    TRUST_BUNDLE_KEY, TRUST_CONFIG_MAP, TRUST_MOUNT, env,
};
use braid_crds::mesh::{MeshSpec, ProxyResources};
use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::{
    api::core::v1::{
        Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
        EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
        ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde_json::Value;

use crate::{
    ports::{self, PortRange},
    quantity::parse_quantity,
};

// The names, paths and ports the proxy and the operator also rely on are the pod contract, in
// braid_api::contract; what only injection uses is here.
pub const SKIP_INBOUND_PORTS: &str = "braid.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "braid.dev/skip-outbound-ports";
pub const PROXY_CPU_REQUEST: &str = "braid.dev/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "braid.dev/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "braid.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "braid.dev/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "braid.dev/proxy-log-level";
pub const PROXY_IMAGE: &str = "braid.dev/proxy-image";

pub const INIT_CONTAINER: &str = "braid-init";

pub const TOKEN_VOLUME: &str = "braid-identity-token";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
pub const TRUST_VOLUME: &str = "braid-trust-anchors";
/// iptables takes a lock file under /run; the init container's root filesystem is read-only.
pub const XTABLES_VOLUME: &str = "braid-xtables-lock";

/// Where the proxy finds the identity and discovery services of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub identity_addr: String,
    pub discovery_addr: String,
}

impl Default for ControlPlane {
    fn default() -> Self {
        // Service names without the cluster domain, which is not always cluster.local; the pod's
        // resolv.conf search path completes them.
        Self {
            identity_addr: "braid-identity.braid-system.svc:8080".to_owned(),
            discovery_addr: "braid-discovery.braid-system.svc:8086".to_owned(),
        }
    }
}

/// Everything injection needs to know besides the pod: the Mesh's proxy settings, the proxy
/// version and the control plane's addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    pub proxy_image: String,
    pub proxy_version: String,
    pub log_level: String,
    pub resources: ProxyResources,
    pub trust_domain: String,
    /// What the pod admits when no MeshPolicy selects it, unless its annotation says otherwise.
    pub default_inbound_policy: DefaultInboundPolicy,
    pub control_plane: ControlPlane,
}

impl InjectConfig {
    pub fn from_mesh(mesh: &MeshSpec, proxy_version: &str, control_plane: &ControlPlane) -> Self {
        Self {
            proxy_image: mesh.proxy.image.clone(),
            proxy_version: proxy_version.to_owned(),
            log_level: mesh.proxy.log_level.clone(),
            resources: mesh.proxy.resources.clone(),
            trust_domain: mesh.trust_domain.clone(),
            default_inbound_policy: mesh.default_inbound_policy,
            control_plane: control_plane.clone(),
        }
    }

    /// The settings of a cluster without a Mesh object: the Mesh CRD's own defaults.
    pub fn defaults(proxy_version: &str, control_plane: &ControlPlane) -> Self {
        Self::from_mesh(&MeshSpec::default(), proxy_version, control_plane)
    }
}

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

/// Why a pod that asked for the mesh cannot be injected. The webhook denies the pod with this
/// message: injecting something other than what the annotations say (no port exclusion, default
/// resources) would break the pod in a way that is much harder to trace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {INJECT}: {value:?} is neither \"enabled\" nor \"disabled\"")]
    InvalidInjectValue { value: String },
    #[error("annotation {annotation}: {reason}")]
    InvalidPorts { annotation: &'static str, reason: String },
    #[error("{source_name}: {reason}")]
    InvalidQuantity { source_name: String, reason: String },
    #[error(
        "the proxy's {resource} request {request:?} is more than its limit {limit:?}; \
         set braid.dev/proxy-{resource}-limit too"
    )]
    RequestAboveLimit { resource: &'static str, request: String, limit: String },
    #[error("annotation {annotation}: {value:?} must be non-empty and contain no whitespace")]
    InvalidValue { annotation: &'static str, value: String },
    #[error("annotation {DEFAULT_INBOUND_POLICY}: {0}")]
    InvalidDefaultPolicy(#[from] braid_api::config::UnknownDefaultPolicy),
    #[error("the pod has no spec")]
    NoSpec,
    #[error("cannot build the patch: {0}; this is a bug in braid-webhook")]
    Patch(String),
}

impl InjectError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            InjectError::InvalidInjectValue { .. } => "invalid_inject_value",
            InjectError::InvalidPorts { .. } => "invalid_ports",
            InjectError::InvalidQuantity { .. } => "invalid_quantity",
            InjectError::RequestAboveLimit { .. } => "request_above_limit",
            InjectError::InvalidValue { .. } => "invalid_value",
            InjectError::InvalidDefaultPolicy(_) => "invalid_default_policy",
            InjectError::NoSpec => "no_spec",
            InjectError::Patch(_) => "patch",
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
    let init_containers = [init_container(&settings, config), proxy_container(&settings, config)];
    let volumes = volumes();
    // The trust bundle is published where the namespace label is; elsewhere the pod asks for it.
    let needs_bundle = !namespace_enabled;
    let patch = build_patch(
        pod,
        &init_containers,
        &volumes,
        &config.proxy_version,
        settings.default_policy,
        needs_bundle,
    )?;
    let pod = apply(pod, &patch)?;
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

/// The Mesh's settings with the pod's annotations applied, validated.
struct PodSettings {
    image: String,
    log_level: String,
    resources: ResourceRequirements,
    skip_inbound: Vec<PortRange>,
    skip_outbound: Vec<PortRange>,
    /// Applied by the proxy from its start until discovery sends the pod's policy.
    default_policy: DefaultInboundPolicy,
    /// The kubelet's plaintext probes, which that policy admits too.
    probes: Vec<ProbeConfig>,
}

impl PodSettings {
    fn read<'a>(
        annotation: &dyn Fn(&str) -> Option<&'a str>,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        config: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let plain = |key: &'static str, default: &str| -> Result<String, InjectError> {
            match annotation(key) {
                None => Ok(default.to_owned()),
                Some(value) if value.is_empty() || value.contains(char::is_whitespace) => {
                    Err(InjectError::InvalidValue { annotation: key, value: value.to_owned() })
                }
                Some(value) => Ok(value.to_owned()),
            }
        };
        let ports = |key: &'static str| -> Result<Vec<PortRange>, InjectError> {
            annotation(key)
                .map(ports::parse_port_list)
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|reason| InjectError::InvalidPorts { annotation: key, reason })
        };

        // The admin port is always skipped inbound: the kubelet's probes must reach the proxy
        // itself, not be redirected into it as application traffic.
        let mut skip_inbound = vec![PortRange::single(ADMIN_PORT)];
        skip_inbound
            .extend(ports(SKIP_INBOUND_PORTS)?.into_iter().filter(|r| *r != PortRange::single(ADMIN_PORT)));

        let defaults = &config.resources;
        let cpu_request = quantity(annotation, PROXY_CPU_REQUEST, Some(&defaults.cpu_request), "cpuRequest")?;
        let memory_request =
            quantity(annotation, PROXY_MEMORY_REQUEST, Some(&defaults.memory_request), "memoryRequest")?;
        let cpu_limit = quantity(annotation, PROXY_CPU_LIMIT, defaults.cpu_limit.as_deref(), "cpuLimit")?;
        let memory_limit =
            quantity(annotation, PROXY_MEMORY_LIMIT, Some(&defaults.memory_limit), "memoryLimit")?;
        let mut requests = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for (resource, request, limit) in
            [("cpu", cpu_request, cpu_limit), ("memory", memory_request, memory_limit)]
        {
            if let (Some((request, request_value)), Some((limit, limit_value))) = (&request, &limit)
                && request_value > limit_value
            {
                return Err(InjectError::RequestAboveLimit {
                    resource,
                    request: request.clone(),
                    limit: limit.clone(),
                });
            }
            if let Some((request, _)) = request {
                requests.insert(resource.to_owned(), Quantity(request));
            }
            if let Some((limit, _)) = limit {
                limits.insert(resource.to_owned(), Quantity(limit));
            }
        }

        Ok(Self {
            image: plain(PROXY_IMAGE, &config.proxy_image)?,
            log_level: plain(PROXY_LOG_LEVEL, &config.log_level)?,
            resources: ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..Default::default()
            },
            skip_inbound,
            skip_outbound: ports(SKIP_OUTBOUND_PORTS)?,
            default_policy: match annotation(DEFAULT_INBOUND_POLICY) {
                Some(value) => value.parse()?,
                None => config.default_inbound_policy,
            },
            probes: braid_crds::pod::http_probes(spec),
        })
    }
}

/// The annotation's quantity, or the Mesh's; validated either way, with an error naming where the
/// value came from.
fn quantity<'a>(
    annotation: &dyn Fn(&str) -> Option<&'a str>,
    key: &'static str,
    default: Option<&str>,
    mesh_field: &str,
) -> Result<Option<(String, f64)>, InjectError> {
    let (value, source_name) = match (annotation(key), default) {
        (Some(value), _) => (value.trim(), format!("annotation {key}")),
        (None, Some(value)) => (value, format!("Mesh default spec.proxy.resources.{mesh_field}")),
        (None, None) => return Ok(None),
    };
    let parsed =
        parse_quantity(value).map_err(|reason| InjectError::InvalidQuantity { source_name, reason })?;
    Ok(Some((value.to_owned(), parsed)))
}

/// `braid-init`: installs the iptables redirect, then exits. It runs first, before the proxy, so
/// that no traffic of the pod (not even of other init containers) escapes the redirect.
///
/// Its image is always the Mesh's: it runs as root with NET_ADMIN and NET_RAW, so a pod's
/// `braid.dev/proxy-image` (which anyone who may create a pod can write) chooses only the
/// unprivileged proxy's image.
fn init_container(settings: &PodSettings, config: &InjectConfig) -> Container {
    let mut args = vec![
        format!("--proxy-uid={PROXY_UID}"),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--skip-inbound-ports={}", ports::render(&settings.skip_inbound)),
    ];
    if !settings.skip_outbound.is_empty() {
        args.push(format!("--skip-outbound-ports={}", ports::render(&settings.skip_outbound)));
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        command: Some(vec!["braid-proxy".to_owned(), "init".to_owned()]),
        args: Some(args),
        // Counted in the pod's effective request like any init container; the proxy's figures
        // keep the pod's footprint what the Mesh says it is.
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            // Root with NET_ADMIN and NET_RAW is what writing netfilter rules takes; nothing else.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.to_owned(),
            mount_path: "/run".to_owned(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

/// `braid-proxy` as a native sidecar (an init container with restartPolicy Always): it starts
/// before the app containers and the kubelet waits for its startup probe, so the app never sends
/// traffic into a proxy that is not listening; it stops after them, so Jobs complete.
fn proxy_container(settings: &PodSettings, config: &InjectConfig) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_owned(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    };
    let mut env = vec![
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        field(env::POD_IP, "status.podIP"),
        field(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
        value(env::IDENTITY_ADDR, &config.control_plane.identity_addr),
        value(env::DISCOVERY_ADDR, &config.control_plane.discovery_addr),
        value(env::TRUST_DOMAIN, &config.trust_domain),
        value(env::LOG, &settings.log_level),
        value(env::INBOUND_SKIP_PORTS, &ports::render(&settings.skip_inbound)),
    ];
    if !settings.skip_outbound.is_empty() {
        env.push(value(env::OUTBOUND_SKIP_PORTS, &ports::render(&settings.skip_outbound)));
    }
    env.push(value(env::DEFAULT_INBOUND_POLICY, settings.default_policy.as_str()));
    if !settings.probes.is_empty() {
        // Serializing a Vec of plain structs cannot fail; an empty list would only mean the
        // probes wait for discovery, not that anything more is let in.
        let probes = serde_json::to_string(&settings.probes).unwrap_or_default();
        env.push(value(env::INBOUND_PROBES, &probes));
    }
    let admin_get = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    };
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: number.into(),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        restart_policy: Some("Always".to_owned()),
        env: Some(env),
        ports: Some(vec![port("braid-inbound", INBOUND_PORT), port("braid-admin", ADMIN_PORT)]),
        // Polled every second for up to two minutes: the app containers wait for it.
        startup_probe: Some(admin_get("/ready", 1, 120)),
        readiness_probe: Some(admin_get("/ready", 10, 3)),
        liveness_probe: Some(admin_get("/live", 10, 3)),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID.into()),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Default::default() }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_MOUNT.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: TRUST_VOLUME.to_owned(),
                mount_path: TRUST_MOUNT.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), ..Default::default() }
}

fn volumes() -> [Volume; 3] {
    [
        // A token only the braid identity service accepts (audience braid), short-lived and
        // rotated by the kubelet; the proxy trades it for its workload certificate.
        Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_owned()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: TOKEN_FILE.to_owned(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TRUST_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: TRUST_CONFIG_MAP.to_owned(),
                items: Some(vec![KeyToPath {
                    key: TRUST_BUNDLE_KEY.to_owned(),
                    path: TRUST_BUNDLE_KEY.to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: XTABLES_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

/// The JSON patch. Arrays and maps the pod does not have are added whole (adding under a missing
/// parent is an error in RFC 6902); existing ones are extended. The init containers go in front
/// of the pod's own, so those run with the redirect installed and the proxy started.
fn build_patch(
    pod: &Pod,
    init_containers: &[Container; 2],
    volumes: &[Volume; 3],
    proxy_version: &str,
    default_policy: DefaultInboundPolicy,
    needs_bundle: bool,
) -> Result<Patch, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let add = |tokens: &[&str], value: Value| {
        PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens.iter().copied()), value })
    };
    let mut ops = Vec::new();

    match spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], to_json(init_containers)?)),
        Some(_) => {
            for (index, container) in ["0", "1"].into_iter().zip(init_containers) {
                ops.push(add(&["spec", "initContainers", index], to_json(container)?));
            }
        }
    }
    match spec.volumes {
        None => ops.push(add(&["spec", "volumes"], to_json(volumes)?)),
        Some(_) => {
            for volume in volumes {
                ops.push(add(&["spec", "volumes", "-"], to_json(volume)?));
            }
        }
    }
    if needs_bundle {
        match &pod.metadata.labels {
            None => ops.push(add(&["metadata", "labels"], serde_json::json!({ NEEDS_TRUST_BUNDLE: "true" }))),
            Some(_) => ops.push(add(&["metadata", "labels", NEEDS_TRUST_BUNDLE], Value::from("true"))),
        }
    }
    // The resolved default inbound policy is recorded on the pod, where discovery reads it and
    // `kubectl get pod -o yaml` shows it.
    match &pod.metadata.annotations {
        None => ops.push(add(
            &["metadata", "annotations"],
            serde_json::json!({ INJECTED: proxy_version, DEFAULT_INBOUND_POLICY: default_policy.as_str() }),
        )),
        // The token escapes the "/" in the key: /metadata/annotations/braid.dev~1injected.
        Some(annotations) => {
            ops.push(add(&["metadata", "annotations", INJECTED], Value::from(proxy_version)));
            if !annotations.contains_key(DEFAULT_INBOUND_POLICY) {
                ops.push(add(
                    &["metadata", "annotations", DEFAULT_INBOUND_POLICY],
                    Value::from(default_policy.as_str()),
                ));
            }
        }
    }
    Ok(Patch(ops))
}

/// Applies `patch` the way the API server will, and reads the result back as a Pod: if the patch
/// did not apply or produced something that is not a Pod, we fail here rather than in the API
/// server.
fn apply(pod: &Pod, patch: &Patch) -> Result<Pod, InjectError> {
    let mut document = serde_json::to_value(pod).map_err(|err| InjectError::Patch(err.to_string()))?;
    json_patch::patch(&mut document, &patch.0).map_err(|err| InjectError::Patch(err.to_string()))?;
    serde_json::from_value(document).map_err(|err| InjectError::Patch(err.to_string()))
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Value, InjectError> {
    serde_json::to_value(value).map_err(|err| InjectError::Patch(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_crds::mesh::ProxySettings;
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
