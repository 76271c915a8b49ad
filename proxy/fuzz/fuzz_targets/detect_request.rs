//! Arbitrary bytes as the first bytes of a client connection: protocol detection must decide
//! without panicking, and a request it calls HTTP/1 is parsed by the proxy's HTTP/1.1 server and
//! routed through a real table, its traceparent rewritten. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use braid_api::config::Config;
use braid_proxy::detect::{Detected, HTTP2_PREFACE, detect};
use braid_proxy::http::h1_server::{Parsed, parse_request};
use braid_proxy::table::Table;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
services:
  - name: web.shop.svc.cluster.local
    hosts: [web]
    backends:
      - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
    routes:
      - { matches: [{ path: { regex: "/items/[0-9]+" }, headers: [{ name: x-user, regex: "t.*" }] }], backends: [{ name: a }] }
      - { matches: [{ path: { prefix: /api }, method: POST }], backends: [{ name: a }] }
      - { matches: [{ path: { exact: /login } }], backends: [{ name: a }] }
"#;

/// The outbound side's default bound on a request head.
const MAX_HEAD: usize = 16 * 1024;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = Config::parse(CONFIG).unwrap_or_else(|e| panic!("the fuzz config is valid: {e}"));
        Table::build(config, None, None).unwrap_or_else(|e| panic!("the fuzz config compiles: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    match detect(data) {
        Detected::Http2 => assert!(data.starts_with(HTTP2_PREFACE)),
        Detected::Http1 => {
            // The outbound side's own HTTP/1.1 server parses it (hyper's takes what it passes on).
            let mut read = bytes::BytesMut::from(data);
            let Ok(Parsed::Request { request, .. }) = parse_request(&mut read, MAX_HEAD) else { return };
            assert!(data.len() - read.len() <= MAX_HEAD, "a head over the bound was accepted");
            let (parts, _) = request.into_parts();
            if let Some(traceparent) = parts.headers.get("traceparent") {
                let _ = braid_proxy::trace_context::next_hop(traceparent);
            }
            let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("web");
            if let Some(service) = table().service_by_host(host) {
                let _ = service.route(&parts.method, parts.uri.path(), &parts.headers);
            }
        }
        Detected::Opaque | Detected::NeedMore => {}
    }
});
