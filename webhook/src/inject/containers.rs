//! The containers and volumes an injected pod gets: `braid-init`, the `braid-proxy` sidecar, its
//! identity token, the trust anchors and the xtables lock directory.

use braid_api::contract::{
    ADMIN_PORT, INBOUND_PORT, LIVE_PATH, OUTBOUND_PORT, PROXY_CONTAINER, PROXY_UID, READY_PATH,
    TOKEN_AUDIENCE, TOKEN_FILE, TOKEN_MOUNT, TRUST_BUNDLE_KEY, TRUST_CONFIG_MAP, TRUST_MOUNT, env,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::InjectConfig;
use super::settings::PodSettings;
use crate::ports;

pub const INIT_CONTAINER: &str = "braid-init";

pub const TOKEN_VOLUME: &str = "braid-identity-token";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
pub const TRUST_VOLUME: &str = "braid-trust-anchors";
/// iptables takes a lock file under /run; the init container's root filesystem is read-only.
pub const XTABLES_VOLUME: &str = "braid-xtables-lock";

/// `braid-init`: installs the iptables redirect, then exits. It runs first, before the proxy, so
/// that no traffic of the pod (not even of other init containers) escapes the redirect.
///
/// Its image is always the Mesh's: it runs as root with NET_ADMIN and NET_RAW, so a pod's
/// `braid.dev/proxy-image` (which anyone who may create a pod can write) chooses only the
/// unprivileged proxy's image.
pub(super) fn init_container(settings: &PodSettings, config: &InjectConfig) -> Container {
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
pub(super) fn proxy_container(settings: &PodSettings, config: &InjectConfig) -> Container {
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
        startup_probe: Some(admin_get(READY_PATH, 1, 120)),
        readiness_probe: Some(admin_get(READY_PATH, 10, 3)),
        liveness_probe: Some(admin_get(LIVE_PATH, 10, 3)),
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

pub(super) fn volumes() -> [Volume; 3] {
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
