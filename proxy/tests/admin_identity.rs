//! The admin port's /identity: the workload certificate chain the proxy presents to its peers,
//! as PEM that parses back to the certificate it holds (leaf first, then the issuer, which the
//! mesh's root signed), with its SPIFFE id, issuer, validity and renewal time; and a clear
//! answer from a proxy that has no identity, or no certificate yet.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use http::StatusCode;
use support::identity::{Authority, IdentityFiles, IdentityServer};
use support::*;
use x509_parser::pem::Pem;

const WEB: &str = "spiffe://test.local/ns/shop/sa/web";

fn ders(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes()).map(|block| block.unwrap().contents).collect()
}

#[tokio::test]
async fn identity_serves_the_chain_the_proxy_presents_with_its_fields() {
    let identity = IdentityServer::start(Authority::new()).await;
    let files = IdentityFiles::new(&identity.bundle.lock().unwrap(), WEB);
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}",
        files.config(WEB, identity.addr)
    );
    let proxy = Proxy::start(&config).await;
    eventually("the proxy holds a certificate", || async { proxy.admin("/ready").await.0 == StatusCode::OK })
        .await;

    let (status, body) = proxy.admin("/identity").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["identity"], WEB);

    // The PEM is exactly the chain the proxy holds: the same DER, leaf first.
    let chain = ders(answer["chain"].as_str().unwrap());
    let store = proxy.running().state.identity.as_ref().unwrap().current().unwrap();
    let held: Vec<Vec<u8>> = store.key.cert.iter().map(|der| der.as_ref().to_vec()).collect();
    assert_eq!(chain, held);
    assert_eq!(chain.len(), 2, "the workload certificate and its issuer");
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let (_, issuer) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    let root_der = ders(&identity.authority.lock().unwrap().root_pem).remove(0);
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    issuer.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(braid_api::identity::spiffe_id_of(&chain[0]).as_deref(), Some(WEB));

    assert_eq!(answer["issuer"], leaf.issuer().to_string());
    assert_eq!(answer["serialNumber"], leaf.raw_serial_as_string());
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert_eq!(answer["notBefore"].as_i64(), Some(not_before));
    assert_eq!(answer["notAfter"].as_i64(), Some(not_after));
    // renewAtPercent defaults to 70.
    assert_eq!(answer["renewAt"].as_i64(), Some(not_before + (not_after - not_before) * 70 / 100));
}

#[tokio::test]
async fn identity_says_why_there_is_no_certificate() {
    let plain = Proxy::start(
        "admin: 127.0.0.1:0\noutbound: { listen: 127.0.0.1:0 }\ninbound: { listen: 127.0.0.1:0 }\n",
    )
    .await;
    let (status, body) = plain.admin("/identity").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.starts_with("this proxy has no workload identity"), "{body}");

    // An identity whose endpoint does not answer: no certificate yet.
    let authority = Authority::new();
    let files = IdentityFiles::new(&authority.root_pem, WEB);
    let (_refusing, addr) = refusing_addr();
    let config = format!(
        "admin: 127.0.0.1:0\noutbound: {{ listen: 127.0.0.1:0 }}\ninbound: {{ listen: 127.0.0.1:0 }}\n{}",
        files.config(WEB, addr)
    );
    let waiting = Proxy::start(&config).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = waiting.admin("/identity").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("no workload certificate yet"), "{body}");

    let (status, body) = waiting.admin("/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("/identity"), "{body}");
}
