//! MeshExternalService: a destination outside the cluster that meshed apps may call, by host
//! name or address, and whether the proxy originates TLS for it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A destination outside the cluster that meshed apps may call. It applies to the apps of its
/// own namespace; one in the mesh's namespace applies to every namespace. With the Mesh's
/// `egress.mode: RegistryOnly`, a connection or request outside the cluster that no
/// MeshExternalService registers is refused.
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a copy-paste slip.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "MeshExternalService",
    namespaced,
    shortname = "mes",
    category = "braid",
    doc = "A destination outside the cluster that meshed apps may call.",
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hosts",
        description = "Host names it answers to"
    ),
    printcolumn(
        name = "Addresses",
        type_ = "string",
        json_path = ".spec.addresses",
        description = "Networks whose addresses belong to it"
    ),
    printcolumn(name = "Ports", type_ = "string", json_path = ".spec.ports[*].port", description = "Ports"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.hosts) || has(self.addresses)",
     "message": "a MeshExternalService needs hosts or addresses: that is how its connections are told apart"},
    {"rule": "!self.ports.exists(p, p.protocol == 'TCP') || has(self.addresses)",
     "message": "a TCP port is told apart by address only (a TCP connection names no host): give addresses"}
]))]
#[serde(rename_all = "camelCase")]
pub struct MeshExternalServiceSpec {
    /// Host names it answers to: exact (`api.stripe.com`) or a wildcard for one or more labels
    /// (`*.googleapis.com`, which does not match `googleapis.com` itself). An HTTP request is
    /// matched by its Host, a TLS connection by its server name (SNI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub hosts: Vec<String>,

    /// Networks whose addresses belong to it (`203.0.113.0/24`, `198.51.100.7`), whatever the
    /// connection carries: for protocols that name no host (a database), or a fixed range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 2, max = 43), regex(pattern = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"))
    )]
    pub addresses: Vec<String>,

    /// The ports apps call it on.
    #[schemars(length(min = 1, max = 32))]
    pub ports: Vec<ExternalPort>,
}

/// One port of an external service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.tls) || self.protocol == 'HTTP'",
     "message": "TLS is originated for plaintext HTTP only; TLS and TCP connections pass as the app sends them"}
]))]
pub struct ExternalPort {
    /// The port apps connect to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP (plaintext requests, matched by Host), TLS (the app's own TLS, matched by server
    /// name and passed through unread) or TCP (matched by address).
    pub protocol: ExternalProtocol,
    /// The proxy sends the app's plaintext requests on over TLS it opens (TLS origination), so
    /// the app calls `http://HOST:PORT` and the external service sees HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum ExternalProtocol {
    HTTP,
    TLS,
    TCP,
}

/// TLS the proxy originates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTls {
    /// The port TLS goes to, usually 443.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The name sent as SNI and checked in the server's certificate; the request's host when
    /// not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub server_name: Option<String>,
    /// PEM certificates the server's chain must lead to; the system's roots (Debian's
    /// ca-certificates, in the proxy image) when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub ca_bundle: Option<String>,
}
