//! Reading a meshed pod's proxy admin port (4191) from outside the cluster, as `braid routes` and
//! `braid identity` do. The proxy answers /config to loopback clients only, so the request goes
//! through a port-forward (the kubelet connects to 127.0.0.1:4191 inside the pod), not through
//! the API server's pod proxy, which connects to the pod's IP. One HTTP/1.0 GET per forward.
//!
//! `check_pod` and `parse_response` are pure and tested without a cluster; `get` uses it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The proxy's admin port.
pub const ADMIN_PORT: u16 = 4191;
/// The injected proxy container (a native sidecar: an init container that keeps running).
pub const PROXY_CONTAINER: &str = "braid-proxy";
/// How long the proxy may take to answer, port-forward included.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// More than any /config holds for a pod; a bound so a wrong port cannot fill memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "no pod {name} in namespace {namespace}: `kubectl get pods -n {namespace}` lists them (or pass -n NAMESPACE)"
    )]
    NoPod { namespace: String, name: String },
    #[error("cannot read pod {namespace}/{name}: {source}")]
    ReadPod { namespace: String, name: String, source: kube::Error },
    #[error(
        "pod {namespace}/{name} has no {PROXY_CONTAINER} container, so it is not in the mesh: label its namespace \
         (`kubectl label namespace {namespace} braid.dev/inject=enabled`) or annotate its pod template \
         (braid.dev/inject: enabled), then restart it (`kubectl rollout restart deployment/… -n {namespace}`)"
    )]
    NotMeshed { namespace: String, name: String },
    #[error(
        "pod {namespace}/{name} is {phase}, so its proxy is not running: `kubectl describe pod {name} -n {namespace}` says why"
    )]
    NotRunning { namespace: String, name: String, phase: String },
    #[error(
        "cannot port-forward to pod {namespace}/{name}: {source} (it needs the pods/portforward permission, as `kubectl port-forward` does)"
    )]
    PortForward { namespace: String, name: String, source: kube::Error },
    #[error(
        "the proxy of pod {namespace}/{name} did not answer on port {ADMIN_PORT}{detail}: \
         `kubectl logs {name} -n {namespace} -c {PROXY_CONTAINER}` shows whether it runs"
    )]
    NoAnswer { namespace: String, name: String, detail: String },
    #[error("the proxy of pod {namespace}/{name} answered {path} with {status}: {body}")]
    Status { namespace: String, name: String, path: String, status: u16, body: String },
    #[error(
        "the proxy of pod {namespace}/{name} sent something that is not an HTTP answer to {path} ({reason}): is port {ADMIN_PORT} its admin port?"
    )]
    Malformed { namespace: String, name: String, path: String, reason: String },
}

/// Whether `pod` has a proxy that can answer: it must carry the proxy container and run.
pub fn check_pod(pod: &Pod) -> Result<(), AdminError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if !has_proxy(pod) {
        return Err(AdminError::NotMeshed { namespace, name });
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".to_owned());
    if phase != "Running" {
        return Err(AdminError::NotRunning { namespace, name, phase });
    }
    Ok(())
}

/// Whether the pod spec carries the injected proxy.
pub fn has_proxy(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.init_containers.iter().flatten().chain(&spec.containers).any(|c| c.name == PROXY_CONTAINER)
    })
}

/// What `parse_response` makes of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The answer is not all there yet.
    Incomplete,
    Complete {
        status: u16,
        body: String,
    },
}

/// An HTTP/1.x answer: the status and the body (its Content-Length's worth, or everything up to
/// the end of the connection when `ended` and it has none). The admin server sends no chunked
/// body to an HTTP/1.0 request.
pub fn parse_response(bytes: &[u8], ended: bool) -> Result<Parsed, String> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        if ended {
            return Err(if bytes.is_empty() {
                "the connection closed without an answer".to_owned()
            } else {
                "the answer ended inside its header".to_owned()
            });
        }
        return Ok(Parsed::Incomplete);
    };
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| "the header is not text".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("the first line is {status_line:?}, not an HTTP status line"));
    }
    let status: u16 = code.parse().map_err(|_| format!("the status {code:?} is not a number"))?;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length {value:?} is not a number"))?,
            );
        }
    }
    let body = &bytes[head_end + 4..];
    let body = match length {
        Some(length) if body.len() >= length => &body[..length],
        Some(_) if ended => return Err("the connection closed before the whole body arrived".to_owned()),
        Some(_) => return Ok(Parsed::Incomplete),
        None if ended => body,
        None => return Ok(Parsed::Incomplete),
    };
    let body = String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8 text".to_owned())?;
    Ok(Parsed::Complete { status, body })
}

/// GETs `path` from the admin port of pod `namespace/name`'s proxy through a port-forward; the
/// body of a 200 answer. Every other outcome is an error that says what to do.
pub async fn get(client: &Client, namespace: &str, name: &str, path: &str) -> Result<String, AdminError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get_opt(name)
        .await
        .map_err(|source| AdminError::ReadPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| AdminError::NoPod { namespace: namespace.to_owned(), name: name.to_owned() })?;
    check_pod(&pod)?;
    let mut forwarder = pods.portforward(name, &[ADMIN_PORT]).await.map_err(|source| {
        AdminError::PortForward { namespace: namespace.to_owned(), name: name.to_owned(), source }
    })?;
    let no_answer = |detail: String| AdminError::NoAnswer {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        detail,
    };
    let Some(mut stream) = forwarder.take_stream(ADMIN_PORT) else {
        forwarder.abort();
        return Err(no_answer(" (the port-forward opened no stream)".to_owned()));
    };
    let forward_error = forwarder.take_error(ADMIN_PORT);
    let exchange = async {
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost:{ADMIN_PORT}\r\nAccept: */*\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!(" ({e})"))?;
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = stream.read(&mut chunk).await.map_err(|e| format!(" ({e})"))?;
            bytes.extend_from_slice(&chunk[..read]);
            if bytes.len() > MAX_ANSWER_BYTES {
                return Err(format!(" (more than {MAX_ANSWER_BYTES} bytes)"));
            }
            match parse_response(&bytes, read == 0) {
                Ok(Parsed::Complete { status, body }) => return Ok(Ok((status, body))),
                Ok(Parsed::Incomplete) => {}
                Err(reason) if bytes.is_empty() => return Err(format!(" ({reason})")),
                Err(reason) => return Ok(Err(reason)),
            }
        }
    };
    let outcome = tokio::time::timeout(ANSWER_TIMEOUT, exchange).await;
    drop(stream);
    forwarder.abort();
    let answer = match outcome {
        Err(_) => return Err(no_answer(format!(" within {} s", ANSWER_TIMEOUT.as_secs()))),
        Ok(Err(detail)) => {
            // The kubelet reports why it could not connect (nothing listens on the port) on the
            // error channel; it says more than the closed stream.
            let reason = match forward_error {
                Some(error) => tokio::time::timeout(Duration::from_secs(1), error).await.ok().flatten(),
                None => None,
            };
            return Err(no_answer(reason.map_or(detail, |reason| format!(" ({})", reason.trim()))));
        }
        Ok(Ok(answer)) => answer,
    };
    match answer {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(AdminError::Status {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            path: path.to_owned(),
            status,
            body: body.trim().to_owned(),
        }),
        Err(reason) => Err(AdminError::Malformed {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            path: path.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(init: &[&str], containers: &[&str], phase: &str) -> Pod {
        let container = |name: &&str| Container { name: (*name).to_owned(), ..Container::default() };
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                init_containers: Some(init.iter().map(container).collect()),
                containers: containers.iter().map(container).collect(),
                ..PodSpec::default()
            }),
            status: Some(PodStatus { phase: Some(phase.into()), ..PodStatus::default() }),
        }
    }

    #[test]
    fn only_a_running_pod_with_the_proxy_can_answer() {
        assert!(check_pod(&pod(&["braid-init", "braid-proxy"], &["app"], "Running")).is_ok());
        assert!(check_pod(&pod(&[], &["app", "braid-proxy"], "Running")).is_ok(), "as a plain container");
        let bare = check_pod(&pod(&[], &["app"], "Running")).unwrap_err().to_string();
        assert!(bare.starts_with("pod shop/web-1 has no braid-proxy container"), "{bare}");
        assert!(bare.contains("kubectl label namespace shop braid.dev/inject=enabled"), "{bare}");
        let pending = check_pod(&pod(&["braid-proxy"], &["app"], "Pending")).unwrap_err().to_string();
        assert_eq!(
            pending,
            "pod shop/web-1 is Pending, so its proxy is not running: `kubectl describe pod web-1 -n shop` says why"
        );
    }

    #[test]
    fn an_answer_is_complete_at_its_content_length() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n{}\n";
        assert_eq!(parse_response(&answer[..20], false), Ok(Parsed::Incomplete));
        assert_eq!(parse_response(&answer[..answer.len() - 1], false), Ok(Parsed::Incomplete));
        let full = [&answer[..], b"\n"].concat();
        assert_eq!(parse_response(&full, false), Ok(Parsed::Complete { status: 200, body: "{}\n\n".into() }));
        let no_length = b"HTTP/1.0 403 Forbidden\r\n\r\nloopback only\n";
        assert_eq!(parse_response(no_length, false), Ok(Parsed::Incomplete));
        assert_eq!(
            parse_response(no_length, true),
            Ok(Parsed::Complete { status: 403, body: "loopback only\n".into() })
        );
    }

    #[test]
    fn what_is_not_an_http_answer_is_an_error_not_a_panic() {
        assert_eq!(parse_response(b"", true), Err("the connection closed without an answer".into()));
        assert!(
            parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false)
                .unwrap_err()
                .contains("not an HTTP status line")
        );
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", false).unwrap_err().contains("not a number"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n\xff\xfe", true).unwrap_err().contains("UTF-8"));
        assert_eq!(parse_response(b"HTTP/1.1 200", true), Err("the answer ended inside its header".into()));
    }
}
