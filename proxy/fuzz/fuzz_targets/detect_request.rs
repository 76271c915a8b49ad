//! Arbitrary bytes as the first bytes of a client connection: protocol detection must decide
//! without panicking, and a request it calls HTTP/1 is parsed (as hyper does, with httparse) and
//! routed through a real table, its traceparent rewritten. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use braid_proxy::config::Config;
use braid_proxy::detect::{Detected, HTTP2_PREFACE, detect};
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
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = request.parse(data) {
                let (Some(method), Some(path)) = (request.method, request.path) else { return };
                let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
                let mut map = http::HeaderMap::new();
                for header in request.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(header.name.as_bytes()),
                        http::HeaderValue::from_bytes(header.value),
                    ) {
                        if name == "traceparent" {
                            let _ = braid_proxy::trace_context::next_hop(&value);
                        }
                        map.append(name, value);
                    }
                }
                let host = map.get("host").and_then(|h| h.to_str().ok()).unwrap_or("web");
                if let Some(service) = table().service_by_host(host) {
                    let _ = service.route(&method, path, &map);
                }
            }
        }
        Detected::Opaque | Detected::NeedMore => {}
    }
});
