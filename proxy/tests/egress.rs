//! Egress on real loopback sockets: a destination outside the cluster, configured with its
//! external services as discovery sends them, reached through listeners that stand for
//! redirected connections. HTTP requests are told apart by Host, TLS by the ClientHello's server
//! name (a real rustls client), TCP by address; the unregistered are refused or let through by
//! the mode; TLS is originated for plaintext requests and checked against the given CA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::identity::Authority;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy whose configuration holds one external destination per `(address, egress)`.
fn config(destinations: &[(SocketAddr, String)]) -> String {
    let mut text = String::from(
        "admin: 127.0.0.1:0\noutbound: { listen: 127.0.0.1:0 }\ninbound: { listen: 127.0.0.1:0 }\nservices:",
    );
    text.push_str(if destinations.is_empty() { " []\n" } else { "\n" });
    for (i, (addr, egress)) in destinations.iter().enumerate() {
        text.push_str(&format!(
            "  - name: external-{i}\n    addresses: [\"{addr}\"]\n    backends: []\n    routes: []\n    egress: {egress}\n"
        ));
    }
    text
}

/// An HTTP server that answers every request with `name`, the Host it got, and whether it came
/// over TLS.
async fn http_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_http(listener, move |request: Request<Incoming>| async move {
        let host = request.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
        Ok(http::Response::new(full(format!("{name} host={host}"))))
    });
    addr
}

/// A TLS server for `name` under `authority` (the leaf and its issuer), answering HTTP/1.1 with
/// "tls host=HOST"; and a raw-TLS echo when `echo`.
async fn tls_server(authority: &Authority, name: &str, echo: bool) -> SocketAddr {
    let (leaf, key) = authority.serving_for(name);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(format!("{leaf}{}", authority.issuer_pem).as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                if echo {
                    let (mut reader, mut writer) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    return;
                }
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let host =
                        request.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                    Ok::<_, std::convert::Infallible>(http::Response::new(full(format!("tls host={host}"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A TLS client with `server_name` as SNI, trusting `root_pem`; the bytes it got back for
/// "ping", or the error.
async fn tls_ping(listener: SocketAddr, server_name: &str, root_pem: &str) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(CertificateDer::pem_slice_iter(root_pem.as_bytes()).map(Result::unwrap));
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let stream = TcpStream::connect(listener).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut got = vec![0u8; 4];
    stream.read_exact(&mut got).await.map_err(|e| e.to_string())?;
    Ok(got)
}

/// `GET /` with `host` through `listener`.
async fn get_host(listener: SocketAddr, host: &str) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::get(format!("http://{listener}/")).header("host", host).body(full("")).unwrap();
    send(&http1_client(), request).await
}

#[tokio::test]
async fn registry_only_lets_registered_hosts_through_and_refuses_the_rest_with_a_reason() {
    let authority = Authority::new();
    let web = http_server("web").await;
    let tls = tls_server(&authority, "secure.example.test", true).await;
    let db = echo_server(b"").await;
    let deny = |services: &str| format!("{{ unregistered: deny, services: {services} }}");
    let destinations = [
        (web, deny("[{ name: shop/web, protocol: http, hosts: [\"*.example.test\"] }]")),
        (tls, deny("[{ name: shop/secure, protocol: tls, hosts: [secure.example.test] }]")),
        (db, deny(&format!("[{{ name: shop/db, protocol: tcp, addresses: [\"{}/32\"] }}]", db.ip()))),
    ];
    let proxy = Proxy::start_with(&config(&destinations), vec![web, tls, db]).await;
    let listener = |addr: SocketAddr| proxy.running().fixed_destinations[&addr];

    // HTTP, by Host: registered through, any port or case; the rest 403 with the reason.
    let (status, _, body) = get_host(listener(web), "API.example.test:8080").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "web host=API.example.test:8080"));
    let (status, headers, body) = get_host(listener(web), "evil.test").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(headers["braid-proxy-error"], "egress-denied");
    assert!(body.contains("\"evil.test\"") && body.contains("no MeshExternalService registers it"), "{body}");
    let (status, _, _) = get_host(listener(web), "example.test").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a wildcard does not match the bare domain");

    // TLS, by the ClientHello's server name: the app's own TLS passes through untouched (the
    // server's certificate is checked by the app, end to end).
    assert_eq!(tls_ping(listener(tls), "secure.example.test", &authority.root_pem).await.unwrap(), b"ping");
    let refused = tls_ping(listener(tls), "evil.test", &authority.root_pem).await;
    assert!(refused.is_err(), "an unregistered server name is closed before the server sees it: {refused:?}");

    // TCP, by address.
    let mut stream = TcpStream::connect(listener(db)).await.unwrap();
    stream.write_all(b"select 1").await.unwrap();
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"select 1");

    let metrics = proxy.metrics().await;
    let egress = |service: &str, protocol: &str, decision: &str| {
        metric(
            &metrics,
            "outbound_egress_total",
            &[("external_service", service), ("protocol", protocol), ("decision", decision)],
        )
    };
    assert_eq!(egress("shop/web", "http", "allowed"), Some(1.0), "{metrics}");
    assert_eq!(egress("unregistered", "http", "denied"), Some(2.0), "{metrics}");
    assert_eq!(egress("shop/secure", "tls", "allowed"), Some(1.0), "{metrics}");
    assert_eq!(egress("unregistered", "tls", "denied"), Some(1.0), "{metrics}");
    assert_eq!(egress("shop/db", "tcp", "allowed"), Some(1.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "request_total", &[("direction", "outbound"), ("dst_service", "shop/web")]),
        Some(1.0),
        "the allowed request is counted under its external service, not its host: {metrics}"
    );
}

#[tokio::test]
async fn allow_any_lets_the_unregistered_through_and_counts_them_together() {
    let web = http_server("web").await;
    let db = echo_server(b"hello\n").await;
    let allow =
        "{ unregistered: allow, services: [{ name: shop/web, protocol: http, hosts: [a.example.test] }] }";
    let destinations = [(web, allow.to_owned()), (db, allow.to_owned())];
    let proxy = Proxy::start_with(&config(&destinations), vec![web, db]).await;
    for host in ["one.test", "two.test", "a.example.test"] {
        let (status, _, body) = get_host(proxy.running().fixed_destinations[&web], host).await;
        assert_eq!((status, body), (StatusCode::OK, format!("web host={host}")));
    }
    // A server that speaks first is not held up by detection for long: its banner comes.
    let mut stream = TcpStream::connect(proxy.running().fixed_destinations[&db]).await.unwrap();
    let mut banner = [0u8; 6];
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"hello\n");
    let metrics = proxy.metrics().await;
    let egress = |service: &str, protocol: &str| {
        metric(
            &metrics,
            "outbound_egress_total",
            &[("external_service", service), ("protocol", protocol), ("decision", "allowed")],
        )
    };
    assert_eq!(
        egress("unregistered", "http"),
        Some(2.0),
        "one series for every unregistered host: {metrics}"
    );
    assert_eq!(egress("shop/web", "http"), Some(1.0), "{metrics}");
    assert_eq!(egress("unregistered", "tcp"), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn tls_is_originated_for_plaintext_requests_and_checked_against_the_given_ca() {
    let authority = Authority::new();
    let other = Authority::new();
    let https = tls_server(&authority, "secure.example.test", false).await;
    // The app calls port 80 of the external address; TLS goes to the port the service names.
    let plain = SocketAddr::new(https.ip(), free_port());
    let origination = |ca: &str| {
        format!(
            "{{ unregistered: deny, services: [{{ name: shop/secure, protocol: http, hosts: [secure.example.test], \
             tls: {{ port: {}, caBundle: {ca:?} }} }}] }}",
            https.port()
        )
    };
    let proxy = Proxy::start_with(&config(&[(plain, origination(&authority.root_pem))]), vec![plain]).await;
    let listener = proxy.running().fixed_destinations[&plain];
    let (status, _, body) = get_host(listener, "secure.example.test").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "tls host=secure.example.test"));
    // A second request reuses the TLS connection (a pool per server name).
    let (status, _, _) = get_host(listener, "secure.example.test").await;
    assert_eq!(status, StatusCode::OK);

    // A server whose certificate the given CA did not sign is not trusted: nothing is sent, and
    // the app gets the proxy's answer for an upstream it could not reach, with the reason.
    let distrusting = Proxy::start_with(&config(&[(plain, origination(&other.root_pem))]), vec![plain]).await;
    let (status, headers, body) =
        get_host(distrusting.running().fixed_destinations[&plain], "secure.example.test").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("braid-proxy-error"), "{headers:?}");
    assert!(body.contains("TLS handshake") && body.contains("invalid peer certificate"), "{body}");
}

#[tokio::test]
async fn a_bad_egress_configuration_is_rejected_whole() {
    let proxy = Proxy::start(&config(&[])).await;
    let bad = config(&[(
        "203.0.113.5:443".parse().unwrap(),
        "{ services: [{ name: a, protocol: tcp, hosts: [db.example.test] }] }".to_owned(),
    )]);
    std::fs::write(&proxy.config_path, bad).unwrap();
    eventually("the bad file to be refused", || async {
        let metrics = proxy.metrics().await;
        metric(&metrics, "config_reload_total", &[("result", "rejected")]).is_some_and(|n| n >= 1.0)
    })
    .await;
}
