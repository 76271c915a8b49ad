//! Egress: the app's connections to a destination outside the cluster, which discovery answered
//! with the external services registered for its port. A TLS connection is told apart by its
//! server name (SNI), an HTTP request by its Host, anything by its address; what matches goes on
//! to the address the app connected to (or over TLS the proxy originates), the rest too unless
//! the mesh allows registered destinations only. Counted per external service, never per host,
//! so an app calling many hosts makes no more series.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use braid_api::config::egress::{EgressAction, EgressConfig, ExternalServiceConfig};
use bytes::BytesMut;
use http::{Request, Response, StatusCode, Version};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tracing::debug;

use crate::client::UpstreamProtocol;
use crate::client::body::ProxyBody;
use crate::detect;
use crate::http::forward::forward_once;
use crate::http::headers::authority_of;
use crate::http::respond::local;
use crate::identity::tls;
use crate::metrics::{Direction, EgressDecision, EgressLabels, EgressProtocol, Label, RequestLabels, Tls};
use crate::state::ProxyState;
use crate::table::authority_host;

/// Where the system's roots are read from when `SSL_CERT_FILE` does not say (Debian's bundle,
/// which the proxy image carries).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A destination's egress, compiled: the configuration, and per external service (in its order)
/// the metrics label and the TLS to originate.
pub struct Egress {
    config: EgressConfig,
    services: Vec<Compiled>,
}

struct Compiled {
    label: Label,
    origination: Option<Arc<Origination>>,
}

/// TLS the proxy opens for an external service's plaintext requests.
pub struct Origination {
    pub port: u16,
    /// The name sent and checked; the request's host when `None`.
    server_name: Option<ServerName<'static>>,
    http1: Arc<rustls::ClientConfig>,
    http2: Arc<rustls::ClientConfig>,
    /// Tells pools built from different roots apart.
    pub roots_key: u64,
}

/// What becomes of a connection or a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Registered: the index of its external service.
    Registered(usize),
    /// Not registered, let through.
    Unregistered,
    /// Not registered, refused (the mesh allows registered destinations only).
    Denied,
}

impl Egress {
    pub fn compile(config: &EgressConfig) -> Result<Self, String> {
        let services = config
            .services
            .iter()
            .map(|service| {
                let origination = service.tls.as_ref().map(|_| origination(service)).transpose()?;
                Ok(Compiled { label: Label::new(&service.name), origination: origination.map(Arc::new) })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { config: config.clone(), services })
    }

    /// A connection the proxy does not parse as HTTP, with the server name of its ClientHello
    /// when it is TLS.
    pub fn decide_connection(&self, ip: IpAddr, server_name: Option<&str>) -> Decision {
        let found = self.config.for_tls(ip, server_name);
        self.decision(found)
    }

    /// An HTTP request for `host` (the Host or :authority, port and case as the app wrote them).
    pub fn decide_request(&self, ip: IpAddr, authority: &str) -> Decision {
        let host = host_of(authority);
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.config.for_http(ip, &host.to_ascii_lowercase())
        } else {
            self.config.for_http(ip, host)
        };
        self.decision(found)
    }

    fn decision(&self, found: Option<&ExternalServiceConfig>) -> Decision {
        match found {
            Some(service) => {
                let index = self.config.services.iter().position(|s| std::ptr::eq(s, service)).unwrap_or(0);
                Decision::Registered(index)
            }
            None if self.config.unregistered == EgressAction::Deny => Decision::Denied,
            None => Decision::Unregistered,
        }
    }

    fn label(&self, decision: &Decision) -> Label {
        match decision {
            Decision::Registered(index) => self.services[*index].label.clone(),
            _ => unregistered_label(),
        }
    }

    fn count(&self, state: &ProxyState, decision: &Decision, protocol: EgressProtocol) {
        let labels = EgressLabels {
            external_service: self.label(decision),
            protocol,
            decision: if *decision == Decision::Denied {
                EgressDecision::denied
            } else {
                EgressDecision::allowed
            },
        };
        state.metrics.egress.get_or_create(&labels).inc();
    }
}

fn unregistered_label() -> Label {
    static UNREGISTERED: OnceLock<Label> = OnceLock::new();
    UNREGISTERED.get_or_init(|| Label::new("unregistered")).clone()
}

/// The host of an authority, without its port or a trailing dot.
fn host_of(authority: &str) -> &str {
    authority_host(authority).trim_end_matches('.')
}

fn origination(service: &ExternalServiceConfig) -> Result<Origination, String> {
    let tls_config = service.tls.as_ref().ok_or("no tls")?;
    let roots = match &tls_config.ca_bundle {
        Some(pem) => Arc::new(
            tls::roots_from_pem(pem.as_bytes())
                .map_err(|e| format!("external service {}: tls.caBundle: {e}", service.name))?,
        ),
        None => system_roots().map_err(|e| format!("external service {}: {e}", service.name))?,
    };
    let server_name = tls_config
        .server_name
        .as_ref()
        .map(|name| ServerName::try_from(name.clone()))
        .transpose()
        .map_err(|e| format!("external service {}: tls.serverName: {e}", service.name))?;
    let config = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, String> {
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    let roots_key = crate::balance::hash_of(tls_config.ca_bundle.as_deref().unwrap_or(SYSTEM_ROOTS));
    Ok(Origination {
        port: tls_config.port,
        server_name,
        http1: config(b"http/1.1")?,
        http2: config(b"h2")?,
        roots_key,
    })
}

/// The system's roots, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let path = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_ROOTS.to_owned());
            let pem = std::fs::read(&path).map_err(|e| {
                format!("the system's CA certificates ({path}) cannot be read ({e}): give tls.caBundle")
            })?;
            tls::roots_from_pem(&pem)
                .map(Arc::new)
                .map_err(|e| format!("the system's CA certificates ({path}): {e}: give tls.caBundle"))
        })
        .clone()
}

impl Origination {
    /// The name to send and check for a request to `host`.
    fn server_name(&self, host: &str) -> Option<ServerName<'static>> {
        self.server_name.clone().or_else(|| ServerName::try_from(host.to_owned()).ok())
    }

    pub fn config(&self, protocol: UpstreamProtocol) -> Arc<rustls::ClientConfig> {
        match protocol {
            UpstreamProtocol::Http1 => self.http1.clone(),
            UpstreamProtocol::Http2 => self.http2.clone(),
        }
    }
}

/// An opaque (non-HTTP) connection to an external destination: its ClientHello is read when it
/// is TLS, and it goes on unchanged, or is closed.
pub async fn connection(
    state: &ProxyState,
    egress: &Egress,
    addr: SocketAddr,
    stream: &mut TcpStream,
    prefix: &mut BytesMut,
    timeout: std::time::Duration,
) -> Option<Decision> {
    let (server_name, protocol) = if detect::may_be_tls(prefix) {
        let hello = detect::read_client_hello(stream, prefix, timeout).await?;
        (hello.server_name, EgressProtocol::tls)
    } else {
        (None, EgressProtocol::tcp)
    };
    let decision = egress.decide_connection(addr.ip(), server_name.as_deref());
    egress.count(state, &decision, protocol);
    if decision == Decision::Denied {
        debug!(%addr, server_name = server_name.as_deref().unwrap_or(""), "egress to an unregistered destination: closed");
    }
    Some(decision)
}

/// An HTTP request to an external destination.
pub async fn request(
    state: &ProxyState,
    egress: &Egress,
    addr: SocketAddr,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let authority = authority_of(&request).unwrap_or("");
    let decision = egress.decide_request(addr.ip(), authority);
    egress.count(state, &decision, EgressProtocol::http);
    let origination = match &decision {
        Decision::Denied => {
            let host = host_of(authority).to_owned();
            return local(
                StatusCode::FORBIDDEN,
                "egress-denied",
                format!(
                    "braid-proxy: {host:?} at {addr} is outside the cluster and no MeshExternalService registers \
                     it; the Mesh allows registered destinations only (spec.egress.mode: RegistryOnly)\n"
                ),
            );
        }
        Decision::Registered(index) => egress.services[*index].origination.clone(),
        Decision::Unregistered => None,
    };
    // The name to originate TLS for, taken before the request is taken apart.
    let host = origination.as_ref().map(|_| host_of(authority).to_ascii_lowercase());
    let (mut parts, body) = request.into_parts();
    let protocol =
        if parts.version == Version::HTTP_2 { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
    let label = egress.label(&decision);
    let labels = RequestLabels {
        direction: Direction::outbound,
        authority: label.clone(),
        target_addr: crate::metrics::TargetAddr::none(),
        dst_service: label,
        route: Label::empty(),
        client_id: Label::empty(),
        tls: Tls::NotYetKnown,
    };
    let metrics = state.metrics.request_metrics(&labels);
    let pool = match origination {
        None => state.pool(addr, protocol),
        Some(origination) => {
            let host = host.unwrap_or_default();
            let Some(server_name) = origination.server_name(&host) else {
                return local(
                    StatusCode::BAD_REQUEST,
                    "egress-no-server-name",
                    format!("braid-proxy: {host:?} is no name to originate TLS for\n"),
                );
            };
            let tls_addr = SocketAddr::new(addr.ip(), origination.port);
            state.originating_pool(tls_addr, protocol, server_name, &origination)
        }
    };
    forward_once(&pool, &metrics, &mut parts, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(unregistered: &str) -> Egress {
        let config: EgressConfig = serde_json::from_value(serde_json::json!({
            "unregistered": unregistered,
            "services": [
                {"name": "shop/stripe", "protocol": "tls", "hosts": ["api.stripe.com"]},
                {"name": "shop/web", "protocol": "http", "hosts": ["*.example.com"]},
                {"name": "shop/db", "protocol": "tcp", "addresses": ["203.0.113.0/24"]},
            ],
        }))
        .unwrap();
        Egress::compile(&config).unwrap()
    }

    #[test]
    fn requests_are_matched_by_host_without_port_case_or_trailing_dot() {
        let egress = egress("deny");
        let outside: IpAddr = "198.51.100.1".parse().unwrap();
        for authority in
            ["www.example.com", "WWW.Example.COM:8080", "www.example.com.", "www.example.com.:80"]
        {
            assert_eq!(egress.decide_request(outside, authority), Decision::Registered(1), "{authority}");
        }
        assert_eq!(egress.decide_request(outside, "example.com"), Decision::Denied);
        assert_eq!(egress.decide_request(outside, "[2001:db8::1]:80"), Decision::Denied);
        assert_eq!(egress.decide_request(outside, ""), Decision::Denied, "no Host at all");
        assert_eq!(egress.decide_request("203.0.113.7".parse().unwrap(), "x"), Decision::Registered(2));
    }

    #[test]
    fn connections_are_matched_by_server_name_or_address_and_the_rest_follow_the_mode() {
        let outside: IpAddr = "198.51.100.1".parse().unwrap();
        for (mode, rest) in [("deny", Decision::Denied), ("allow", Decision::Unregistered)] {
            let egress = egress(mode);
            assert_eq!(egress.decide_connection(outside, Some("api.stripe.com")), Decision::Registered(0));
            assert_eq!(egress.decide_connection(outside, Some("evil.test")), rest);
            assert_eq!(egress.decide_connection(outside, None), rest, "plain TCP names nothing");
            assert_eq!(
                egress.decide_connection("203.0.113.1".parse().unwrap(), None),
                Decision::Registered(2)
            );
        }
    }

    #[test]
    fn a_bad_ca_bundle_is_refused_with_the_services_name() {
        let config: EgressConfig = serde_json::from_value(serde_json::json!({
            "services": [{"name": "shop/web", "protocol": "http", "hosts": ["a.example.com"],
                          "tls": {"port": 443, "caBundle": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}],
        }))
        .unwrap();
        let error = Egress::compile(&config).err().unwrap();
        assert!(error.contains("external service shop/web: tls.caBundle"), "{error}");
    }
}
