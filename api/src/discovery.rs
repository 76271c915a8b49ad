//! The discovery wire format (docs/discovery.md) between the proxy's client and the operator's
//! server: both link these types, so the server builds exactly what the proxy parses, and
//! neither links the other.
//!
//! One HTTP/2 stream per proxy, `POST /v1/discovery` over mTLS with the workload certificate.
//! Both bodies are newline-delimited JSON: the request body carries [`ProxyMessage`]s, the
//! response body [`ControlMessage`]s. A destination's payload is a [`ServiceConfig`], the very
//! model of the proxy's configuration file, so a destination streamed by the operator and one
//! written by hand are checked and applied by the same code.

use serde::{Deserialize, Serialize};

use crate::config::{PolicyConfig, ServiceConfig, TracingConfig};

/// The request path; the version is in the path so a later format can be served beside it.
pub const PATH: &str = "/v1/discovery";
/// Both bodies: one JSON document per line.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// Longest line either side accepts; a longer one ends the stream with an error.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Upper bounds, in milliseconds, of the latency buckets a [`Report`] counts in (Linkerd's);
/// one more bucket counts what is slower than the last.
pub const LATENCY_BUCKETS_MS: [u64; 22] =
    [1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000, 4000, 5000, 10000, 30000];
/// A response header of the server: how often, in seconds, it wants a [`Report`] of each
/// destination the proxy sent requests to. A proxy sends none unless the server asks, so a
/// newer proxy never sends a server something it does not know.
pub const REPORT_INTERVAL_HEADER: &str = "braid-report-interval";
/// A request header of the proxy: the optional parts of the messages it understands, separated
/// by commas. The server sends a part only to proxies that name it, so an older proxy never
/// gets a field it would refuse.
pub const PROXY_FEATURES_HEADER: &str = "braid-proxy-features";
/// [`InboundUpdate::tracing`].
pub const FEATURE_TRACING: &str = "tracing";
/// [`crate::config::EndpointConfig::pod`].
pub const FEATURE_ENDPOINT_POD: &str = "endpoint-pod";
/// [`crate::config::PolicyConfig::source`].
pub const FEATURE_POLICY_SOURCE: &str = "policy-source";

/// From the proxy. The first message must be `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ProxyMessage {
    /// Who the proxy runs for. The server checks that the pod exists and runs as the service
    /// account the client certificate names.
    Hello(Hello),
    /// Send a snapshot of this resource now and every change after it.
    Subscribe(Resource),
    /// No more updates for this resource (the proxy evicted an unused destination).
    Unsubscribe(Resource),
    /// The proxy applied this version of the resource.
    Ack(Ack),
    /// The proxy could not apply this version and keeps the previous one.
    Nack(Nack),
    /// What the proxy's requests to a destination's backends did since its last report (the
    /// canary checks are made of these).
    Report(Report),
}

/// Requests to the backends of one destination since the proxy's previous report: deltas, so
/// the server adds them up across proxies without remembering each one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// The destination's name as the server sent it (`ServiceConfig::name`).
    pub service: String,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendReport {
    /// The backend's name in the destination (`BackendConfig::name`).
    pub backend: String,
    /// Tries sent to the backend (a retried request counts once per try).
    pub requests: u64,
    /// Tries that failed: a 5xx, a gRPC status other than OK, or no answer at all.
    pub failures: u64,
    /// Tries per latency bucket ([`LATENCY_BUCKETS_MS`], then one for slower); trailing empty
    /// buckets are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_ms: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    pub pod_namespace: String,
    pub pod_name: String,
    /// The proxy's build version (the Mesh status counts proxies by version).
    pub proxy_version: String,
}

/// What a proxy can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Resource {
    /// A destination the app connects to: `IP:PORT` (the original destination of a redirected
    /// connection, a Service's cluster IP) or `NAME.NAMESPACE.svc.CLUSTER_DOMAIN:PORT`.
    Destination(String),
    /// The inbound policy of the proxy's own pod (the MeshPolicies that select it).
    Inbound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ack {
    pub resource: Resource,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nack {
    pub resource: Resource,
    pub version: u64,
    /// Why the proxy refused it (the configuration check's message).
    pub reason: String,
}

/// From the server.
// One message is alive at a time per stream; boxing the snapshot would only cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ControlMessage {
    /// The full current state of a subscribed destination; replaces any earlier one.
    Destination(DestinationUpdate),
    /// The full current inbound policy of the proxy's pod; replaces any earlier one.
    Inbound(InboundUpdate),
    /// The subscription (or the hello) was refused; nothing more comes for that resource.
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationUpdate {
    /// The subscribed name, exactly as the proxy sent it.
    pub destination: String,
    /// Grows with every change the server makes; acks and nacks name it.
    pub version: u64,
    /// How to reach the destination: a Service, or for a meshed pod's IP that pod alone with its
    /// identity; `None` when it is neither (outside the cluster, a pod without a proxy):
    /// connections to it are forwarded unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundUpdate {
    pub version: u64,
    /// `None`: no MeshPolicy selects the pod, every client may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// The Mesh's tracing settings; `None` when tracing is off, and always for a proxy that did
    /// not name [`FEATURE_TRACING`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Refusal {
    /// `None` when the whole stream is refused (a bad hello); the server then ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    pub reason: String,
}

/// One message as a line of the stream.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these types cannot fail: no maps with non-string keys, no custom serializers
    // that error. An empty line would be skipped by the reader, never misread.
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a discovery message is longer than {0} bytes")]
    TooLong(usize),
    #[error("a discovery message is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Splits a byte stream into messages: feed chunks with `push`, take messages with `next`.
#[derive(Debug)]
pub struct LineReader {
    buffer: Vec<u8>,
    /// The longest line accepted.
    limit: usize,
    /// Bytes of the line being received (after the buffer's last newline).
    open_line: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::with_limit(MAX_MESSAGE_BYTES)
    }
}

impl LineReader {
    /// Lines up to `limit` bytes; a longer one is refused as it arrives, before it is buffered.
    pub fn with_limit(limit: usize) -> Self {
        Self { buffer: Vec::new(), limit, open_line: 0 }
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        // Each byte is looked at once, so a long line sent in small pieces costs linear time.
        let mut open_line = self.open_line;
        for &byte in chunk {
            if byte == b'\n' {
                open_line = 0;
            } else {
                open_line += 1;
                if open_line > self.limit {
                    return Err(DecodeError::TooLong(self.limit));
                }
            }
        }
        self.open_line = open_line;
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete message, skipping empty lines; `None` until a whole line is there.
    // Generic over the message type, so not an `Iterator`.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: for<'de> Deserialize<'de>>(&mut self) -> Option<Result<T, DecodeError>> {
        loop {
            let end = self.buffer.iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            return Some(serde_json::from_slice(line).map_err(DecodeError::from));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_shape() {
        let subscribe = ProxyMessage::Subscribe(Resource::Destination("10.96.0.12:8080".into()));
        assert_eq!(encode(&subscribe), b"{\"subscribe\":{\"destination\":\"10.96.0.12:8080\"}}\n");
        assert_eq!(encode(&ProxyMessage::Subscribe(Resource::Inbound)), b"{\"subscribe\":\"inbound\"}\n");
        let ack = ProxyMessage::Ack(Ack { resource: Resource::Inbound, version: 7 });
        assert_eq!(encode(&ack), b"{\"ack\":{\"resource\":\"inbound\",\"version\":7}}\n");
        let none = ControlMessage::Destination(DestinationUpdate {
            destination: "10.1.2.3:80".into(),
            version: 3,
            service: None,
        });
        assert_eq!(encode(&none), b"{\"destination\":{\"destination\":\"10.1.2.3:80\",\"version\":3}}\n");
    }

    #[test]
    fn a_report_has_the_documented_shape() {
        let report = ProxyMessage::Report(Report {
            service: "web.shop.svc.cluster.local:80".into(),
            backends: vec![BackendReport {
                backend: "web-v2".into(),
                requests: 3,
                failures: 1,
                latency_ms: vec![0, 2, 1],
            }],
        });
        assert_eq!(
            String::from_utf8(encode(&report)).unwrap(),
            "{\"report\":{\"service\":\"web.shop.svc.cluster.local:80\",\"backends\":[{\"backend\":\"web-v2\",\"requests\":3,\"failures\":1,\"latencyMs\":[0,2,1]}]}}\n"
        );
    }

    #[test]
    fn the_reader_splits_lines_across_chunks_and_refuses_garbage() {
        let mut reader = LineReader::default();
        let line = encode(&ProxyMessage::Subscribe(Resource::Inbound));
        let (first, second) = line.split_at(5);
        reader.push(first).unwrap();
        assert!(reader.next::<ProxyMessage>().is_none());
        reader.push(second).unwrap();
        reader.push(b"\n{\"bogus\":1}\n").unwrap();
        assert_eq!(
            reader.next::<ProxyMessage>().unwrap().unwrap(),
            ProxyMessage::Subscribe(Resource::Inbound)
        );
        assert!(matches!(reader.next::<ProxyMessage>(), Some(Err(DecodeError::Invalid(_)))));
        assert!(reader.next::<ProxyMessage>().is_none());
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut reader = LineReader::default();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut result = Ok(());
        for _ in 0..5 {
            result = reader.push(&chunk);
        }
        assert!(matches!(result, Err(DecodeError::TooLong(MAX_MESSAGE_BYTES))));
    }

    #[test]
    fn a_lower_limit_refuses_a_long_line_as_it_arrives_and_lines_under_it_pass() {
        let mut reader = LineReader::with_limit(16);
        reader.push(b"{\"subscribe\":\"inbound\"}\n".get(..17).unwrap_or_default()).unwrap_err();
        let mut reader = LineReader::with_limit(32);
        reader.push(b"{\"subscribe\":\"inbound\"}\n{\"subscribe\":").unwrap();
        assert!(matches!(
            reader.next::<ProxyMessage>(),
            Some(Ok(ProxyMessage::Subscribe(Resource::Inbound)))
        ));
        // The open line counts across pushes, one byte at a time too.
        for _ in 0..19 {
            reader.push(b"x").unwrap();
        }
        let error = reader.push(b"x").unwrap_err();
        assert_eq!(error.to_string(), "a discovery message is longer than 32 bytes");
    }
}
