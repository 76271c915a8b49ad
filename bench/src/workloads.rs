//! The workloads beyond the headline's (`braid-bench workloads`): large bodies both ways, many
//! connections, a new connection per request, gRPC unary and server streaming, and a sidecar
//! holding a mesh-sized route table. What each one sends, which peers can carry it, the large
//! table as each proxy is configured with it, and the targets each peer is held to.

use crate::Error;

/// Where a workload's requests end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The nginx origin of the headline benchmark (HTTP/1.1).
    Nginx,
    /// braid-testapps' grpc-echo (HTTP/2 only), so the proxies must speak HTTP/2 to it.
    Grpc,
}

/// What one request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// GET of a static file of `bytes` bytes at `path`.
    Get { path: &'static str, bytes: usize },
    /// POST of `bytes` bytes to /upload, answered 204.
    Post { bytes: usize },
    /// gRPC `Echo`: one message of `bytes` characters each way.
    Unary { bytes: usize },
    /// gRPC `EchoRepeat`: one request, `replies` messages of `bytes` characters back.
    ServerStream { bytes: usize, replies: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    /// As the report's heading says it.
    pub what: &'static str,
    pub request: Request,
    /// Of the paced runs, requests (gRPC: calls) per second.
    pub rate: u32,
    /// Client connections (gRPC: concurrent calls over one HTTP/2 connection).
    pub connections: u32,
    /// Whether a connection carries more than one request.
    pub keepalive: bool,
    /// Whether proxy A holds the large route table (`TABLE_SERVICES` services beside the one
    /// measured).
    pub table: bool,
}

impl Workload {
    pub fn origin(&self) -> Origin {
        match self.request {
            Request::Unary { .. } | Request::ServerStream { .. } => Origin::Grpc,
            _ => Origin::Nginx,
        }
    }
}

/// Services and endpoints per service of the large table; none of them is the one measured.
pub const TABLE_SERVICES: usize = 1_000;
pub const TABLE_ENDPOINTS_PER_SERVICE: usize = 10;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The workloads, in the order they run. Rates are chosen so that the direct path keeps up on
/// this machine's one client core (1 MiB at 50/s is 50 MiB/s each way through two proxies).
pub const ALL: [Workload; 9] = [
    Workload {
        name: "64k-down",
        what: "GET of a 64 KiB body, 16 keep-alive connections",
        request: Request::Get { path: "/64k", bytes: 64 * KIB },
        rate: 500,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "1m-down",
        what: "GET of a 1 MiB body, 16 keep-alive connections",
        request: Request::Get { path: "/1m", bytes: MIB },
        rate: 50,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "64k-up",
        what: "POST of a 64 KiB body (answered 204), 16 keep-alive connections",
        request: Request::Post { bytes: 64 * KIB },
        rate: 500,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "1m-up",
        what: "POST of a 1 MiB body (answered 204), 16 keep-alive connections",
        request: Request::Post { bytes: MIB },
        rate: 50,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "c1000",
        what: "GET of 1 KiB over 1,000 concurrent keep-alive connections",
        request: Request::Get { path: "/1k", bytes: KIB },
        rate: 1000,
        connections: 1000,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "new-conn",
        what: "GET of 1 KiB, a new client connection per request (16 at a time)",
        request: Request::Get { path: "/1k", bytes: KIB },
        rate: 1000,
        connections: 16,
        keepalive: false,
        table: false,
    },
    Workload {
        name: "grpc-unary",
        what: "gRPC unary call (1 KiB message each way), HTTP/2 from the client, 16 concurrent calls",
        request: Request::Unary { bytes: KIB },
        rate: 1000,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "grpc-stream",
        what: "gRPC server streaming (1 KiB request, 10 replies of 1 KiB), HTTP/2 from the client, 16 \
               concurrent calls",
        request: Request::ServerStream { bytes: KIB, replies: 10 },
        rate: 200,
        connections: 16,
        keepalive: true,
        table: false,
    },
    Workload {
        name: "table",
        what: "GET of 1 KiB, 16 keep-alive connections, proxy A holding 1,000 other services with 10 endpoints \
               each",
        request: Request::Get { path: "/1k", bytes: KIB },
        rate: 1000,
        connections: 16,
        keepalive: true,
        table: true,
    },
];

/// The files the GET workloads fetch from the nginx origin (name, size), besides /1k.
pub fn files() -> impl Iterator<Item = (&'static str, usize)> {
    ALL.iter().filter_map(|w| match w.request {
        Request::Get { path, bytes } if path != "/1k" => Some((path.trim_start_matches('/'), bytes)),
        _ => None,
    })
}

pub fn find(name: &str) -> Option<&'static Workload> {
    ALL.iter().find(|w| w.name == name)
}

/// The WORKLOADS knob: names, space-separated, or "all".
pub fn list(text: &str) -> Result<Vec<&'static Workload>, Error> {
    let names: Vec<&str> = text.split_whitespace().collect();
    if names == ["all"] {
        return Ok(ALL.iter().collect());
    }
    let mut out: Vec<&'static Workload> = Vec::new();
    for name in names {
        let workload = find(name).ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().map(|w| w.name).collect();
            Error::parse(
                "WORKLOADS",
                format!("unknown workload {name:?} (all, or some of: {})", known.join(" ")),
            )
        })?;
        if !out.contains(&workload) {
            out.push(workload);
        }
    }
    if out.is_empty() {
        return Err(Error::parse("WORKLOADS", "no workload given"));
    }
    Ok(out)
}

/// Why `peer` (a peer name such as "haproxy-mtls") does not carry `workload`, or None when it does.
pub fn not_offered(workload: &Workload, peer: &str) -> Option<&'static str> {
    let kind = peer.strip_suffix("-mtls").unwrap_or(peer);
    if peer.ends_with("-redirect") {
        return Some("the redirect path is measured by `pairs` only");
    }
    if workload.origin() == Origin::Grpc && matches!(kind, "nginx" | "splice" | "floor") {
        return Some(match kind {
            "nginx" => "nginx's gRPC proxying (grpc_pass) is a separate module set-up, not configured here",
            _ => "a TCP relay: it carries gRPC as bytes, and is the floor of the headline benchmark only",
        });
    }
    if workload.table && !matches!(kind, "braid" | "braid-nopgo" | "haproxy") {
        return Some("the large table is written for braid-proxy and HAProxy only");
    }
    if workload.table && peer.ends_with("-mtls") {
        return Some("the large table is measured in plaintext only");
    }
    None
}

/// The address of the table's endpoint `n` (0 to 62,499 apart): 10.98.x.y:8080.
fn endpoint_address(n: usize) -> String {
    format!("10.{}.{}.{}:8080", 98 + n / 62_500, n / 250 % 250, n % 250 + 1)
}

/// The large table as braid-proxy's config holds it: YAML items for the end of its `services:`
/// list. Service i has the Service address 10.97.x.y:80 and 10 endpoints 10.98–10.127.x.y:8080,
/// none of them dialled (only the measured service takes traffic).
pub fn braid_table() -> String {
    let mut out = String::with_capacity(TABLE_SERVICES * 700);
    for i in 0..TABLE_SERVICES {
        out += &format!(
            "  - name: svc-{i}.bench.svc.cluster.local\n    addresses: [\"10.97.{}.{}:80\"]\n    backends:\n      - name: svc-{i}\n        endpoints:\n",
            i / 250,
            i % 250 + 1
        );
        for e in 0..TABLE_ENDPOINTS_PER_SERVICE {
            let n = i * TABLE_ENDPOINTS_PER_SERVICE + e;
            out += &format!("          - {{ address: \"{}\", meshed: true }}\n", endpoint_address(n));
        }
        out += &format!("    routes:\n      - backends: [{{ name: svc-{i}, weight: 100 }}]\n");
    }
    out
}

/// The large table as HAProxy holds it: a backend per service with its 10 servers, and the map
/// from Host to backend the frontend looks each request up in (`map_file`); the measured
/// requests' Host is not in it and takes the default backend.
fn haproxy_table(map_file: &str) -> (String, String, String) {
    let use_backend = format!("use_backend %[req.hdr(host),lower,map_str({map_file},next_hop)]\n");
    let mut backends = String::new();
    let mut map = String::new();
    for i in 0..TABLE_SERVICES {
        map += &format!("svc-{i}.bench.svc.cluster.local svc-{i}\n");
        backends += &format!("\nbackend svc-{i}\n");
        for e in 0..TABLE_ENDPOINTS_PER_SERVICE {
            let n = i * TABLE_ENDPOINTS_PER_SERVICE + e;
            backends += &format!("  server e{e} {} proto h2\n", endpoint_address(n));
        }
    }
    (use_backend, backends, map)
}

/// Puts the large table into HAProxy A's rendered config: the lookup replaces its
/// `default_backend next_hop`, the backends go at the end. The config, and the map for
/// `map_file`.
pub fn with_haproxy_table(config: &str, map_file: &str) -> Result<(String, String), Error> {
    let (use_backend, backends, map) = haproxy_table(map_file);
    let line = "default_backend next_hop\n";
    if config.matches(line).count() != 1 {
        return Err(Error::parse("haproxy-a.cfg", format!("expected one {line:?} to route by the table")));
    }
    Ok((config.replacen(line, &use_backend, 1) + &backends, map))
}

/// Puts the large table into braid A's rendered config: its items after the last `services:`
/// entry (the list is the file's last key).
pub fn with_braid_table(config: &str) -> Result<String, Error> {
    let last_key = config.lines().rfind(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.is_empty());
    if last_key != Some("services:") {
        return Err(Error::parse(
            "braid-a.yaml",
            "the table goes after `services:`, which must be the last key",
        ));
    }
    let mut out = config.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out + &braid_table())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_by_name_once_each_and_unknown_ones_are_named() {
        let names: Vec<&str> = list("c1000 64k-up c1000").expect("ok").iter().map(|w| w.name).collect();
        assert_eq!(names, ["c1000", "64k-up"]);
        assert_eq!(list("all").expect("all").len(), ALL.len());
        let error = list("c1000 websocket").expect_err("unknown");
        assert!(error.to_string().contains("unknown workload \"websocket\""), "{error}");
        assert!(error.to_string().contains("grpc-unary"), "lists the known ones: {error}");
        assert!(list(" ").is_err());
    }

    #[test]
    fn names_are_unique_and_the_sizes_are_not_the_training_mix() {
        for (i, w) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|o| o.name != w.name), "{} twice", w.name);
            let bytes = match w.request {
                Request::Get { bytes, .. }
                | Request::Post { bytes }
                | Request::Unary { bytes }
                | Request::ServerStream { bytes, .. } => bytes,
            };
            // The profile must not be trained on what is measured.
            assert!(crate::training::FILES.iter().all(|(_, size)| *size != bytes), "{}", w.name);
        }
    }

    #[test]
    fn peers_that_cannot_carry_a_workload_say_why() {
        let grpc = find("grpc-unary").expect("there");
        assert_eq!(not_offered(grpc, "braid"), None);
        assert_eq!(not_offered(grpc, "haproxy-mtls"), None);
        assert_eq!(not_offered(grpc, "envoy"), None);
        assert!(not_offered(grpc, "nginx").expect("no").contains("grpc_pass"));
        assert!(not_offered(grpc, "floor").is_some());
        let table = find("table").expect("there");
        assert_eq!(not_offered(table, "haproxy"), None);
        assert!(not_offered(table, "envoy").is_some());
        assert!(not_offered(table, "braid-mtls").is_some());
        assert!(not_offered(find("c1000").expect("there"), "braid-redirect").is_some());
        assert_eq!(not_offered(find("1m-up").expect("there"), "nginx-mtls"), None);
    }

    #[test]
    fn the_braid_table_has_every_service_and_endpoint_with_distinct_addresses() {
        let table = braid_table();
        assert_eq!(table.lines().filter(|l| l.starts_with("  - name: svc-")).count(), TABLE_SERVICES);
        assert_eq!(table.matches("meshed: true").count(), TABLE_SERVICES * TABLE_ENDPOINTS_PER_SERVICE);
        let mut addresses: Vec<&str> = table.lines().filter_map(|l| l.split('"').nth(1)).collect();
        let count = addresses.len();
        addresses.sort_unstable();
        addresses.dedup();
        assert_eq!(addresses.len(), count, "an address is used twice");
        assert_eq!(count, TABLE_SERVICES * (1 + TABLE_ENDPOINTS_PER_SERVICE));
        let config = "admin: x\nservices:\n  - name: origin\n    listen: 127.0.0.1:1\n";
        let with = with_braid_table(config).expect("ok");
        assert!(with.starts_with(config) && with.ends_with(&table));
        let error = with_braid_table("services:\n  - name: a\ntracing: {}\n").expect_err("not last");
        assert!(error.to_string().contains("must be the last key"), "{error}");
    }

    #[test]
    fn the_haproxy_table_routes_by_host_and_keeps_the_measured_backend_as_default() {
        let config = "frontend f\n  bind :1\n  default_backend next_hop\n\nbackend next_hop\n  server b x\n";
        let (with, map) = with_haproxy_table(config, "/w/services.map").expect("ok");
        assert!(with.contains("use_backend %[req.hdr(host),lower,map_str(/w/services.map,next_hop)]"));
        assert!(!with.contains("default_backend"));
        assert_eq!(with.matches("\nbackend svc-").count(), TABLE_SERVICES);
        assert_eq!(with.matches("  server e").count(), TABLE_SERVICES * TABLE_ENDPOINTS_PER_SERVICE);
        assert_eq!(map.lines().count(), TABLE_SERVICES);
        assert!(map.starts_with("svc-0.bench.svc.cluster.local svc-0\n"));
        assert!(with_haproxy_table("frontend f\n", "m").is_err());
    }
}
