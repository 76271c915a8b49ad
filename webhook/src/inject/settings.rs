//! The pod's annotations that override the Mesh's proxy settings (image, log level, resources,
//! skipped ports, default inbound policy), read and validated into the settings of its proxy.

use std::collections::BTreeMap;

use braid_api::config::{DefaultInboundPolicy, ProbeConfig};
use braid_api::contract::{ADMIN_PORT, DEFAULT_INBOUND_POLICY};
use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::config::InjectConfig;
use super::error::InjectError;
use crate::ports::{self, PortRange};
use crate::quantity::parse_quantity;

// The names the proxy and the operator also rely on are the pod contract, in
// braid_api::contract; the annotations only injection reads are here.
pub const SKIP_INBOUND_PORTS: &str = "braid.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "braid.dev/skip-outbound-ports";
pub const PROXY_CPU_REQUEST: &str = "braid.dev/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "braid.dev/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "braid.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "braid.dev/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "braid.dev/proxy-log-level";
pub const PROXY_IMAGE: &str = "braid.dev/proxy-image";

/// The Mesh's settings with the pod's annotations applied, validated.
pub(super) struct PodSettings {
    pub(super) image: String,
    pub(super) log_level: String,
    pub(super) resources: ResourceRequirements,
    pub(super) skip_inbound: Vec<PortRange>,
    pub(super) skip_outbound: Vec<PortRange>,
    /// Applied by the proxy from its start until discovery sends the pod's policy.
    pub(super) default_policy: DefaultInboundPolicy,
    /// The kubelet's plaintext probes, which that policy admits too.
    pub(super) probes: Vec<ProbeConfig>,
}

impl PodSettings {
    pub(super) fn read<'a>(
        annotation: &dyn Fn(&str) -> Option<&'a str>,
        spec: &PodSpec,
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
