//! The Gateway API routes of the index (HTTPRoute and GRPCRoute with Service parents) and the
//! ReferenceGrants that let them refer to Services of other namespaces. A child of index.rs, so
//! that a destination's answer is built from one consistent view (docs/gateway-api.md).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use braid_api::config::{BackendConfig, RouteConfig};

use super::{Index, Key, RouteRef};
use crate::gateway::translate::{self, Lookup, Precedence, Refusal, RouteKind, RouteSpec};
use crate::gateway::types::ReferenceGrantSpec;

/// A Gateway API route as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRouteInfo {
    pub generation: i64,
    /// Creation time in RFC 3339: older routes win ties.
    pub created: String,
    pub spec: RouteSpec,
}

/// The Gateway API part of the index.
#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    routes: HashMap<(RouteKind, Key), GatewayRouteInfo>,
    grants: HashMap<Key, ReferenceGrantSpec>,
}

/// The Gateway API routes for one Service port, ready to join its configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayPart {
    pub routes: Vec<RouteConfig>,
    pub backends: Vec<BackendConfig>,
    /// The routes applied, for the Programmed counts.
    pub applied: Vec<RouteRef>,
    /// Routes left out, and why.
    pub refused: Vec<((RouteKind, Key), Refusal)>,
    /// The Services the backends are (a change to one changes the answer).
    pub depends_on: Vec<Key>,
}

impl Lookup for Index {
    fn service_exists(&self, key: &Key) -> bool {
        self.services.contains_key(key)
    }

    fn ref_permitted(&self, kind: RouteKind, from: &str, to: &Key) -> bool {
        self.gateway.grants.iter().any(|((namespace, _), grant)| {
            namespace == &to.0
                && grant.from.iter().any(|f| {
                    f.group == "gateway.networking.k8s.io" && f.kind == kind.as_str() && f.namespace == from
                })
                && grant.to.iter().any(|t| {
                    matches!(t.group.as_str(), "" | "core")
                        && t.kind == "Service"
                        && t.name.as_ref().is_none_or(|name| *name == to.1)
                })
        })
    }
}

/// The index as a translation sees it, noting each Service whose existence the answer depends
/// on: a backend that does not exist yet changes the answer when it is created.
struct Recording<'a> {
    index: &'a Index,
    asked: RefCell<BTreeSet<Key>>,
}

impl Lookup for Recording<'_> {
    fn service_exists(&self, key: &Key) -> bool {
        self.asked.borrow_mut().insert(key.clone());
        self.index.service_exists(key)
    }

    fn ref_permitted(&self, kind: RouteKind, from: &str, to: &Key) -> bool {
        self.index.ref_permitted(kind, from, to)
    }
}

impl Index {
    pub fn upsert_gateway_route(&mut self, kind: RouteKind, key: Key, route: GatewayRouteInfo) {
        if self.gateway.routes.get(&(kind, key.clone())) != Some(&route) {
            self.touch_parents(&key.0, &route);
            if let Some(old) = self.gateway.routes.insert((kind, key.clone()), route) {
                self.touch_parents(&key.0, &old);
            }
        }
    }

    pub fn remove_gateway_route(&mut self, kind: RouteKind, key: &Key) {
        if let Some(old) = self.gateway.routes.remove(&(kind, key.clone())) {
            self.touch_parents(&key.0, &old);
        }
    }

    /// A route's parents are the Services whose answers it is part of (for every client
    /// namespace: a consumer route changes which routes its namespace's clients get).
    fn touch_parents(&mut self, namespace: &str, route: &GatewayRouteInfo) {
        for (parent, _) in translate::service_parents(namespace, &route.spec) {
            self.touch_service(&parent);
        }
    }

    pub fn upsert_reference_grant(&mut self, key: Key, grant: ReferenceGrantSpec) {
        if self.gateway.grants.get(&key) != Some(&grant) {
            self.gateway.grants.insert(key, grant);
            self.touch_everything();
        }
    }

    pub fn remove_reference_grant(&mut self, key: &Key) {
        if self.gateway.grants.remove(key).is_some() {
            self.touch_everything();
        }
    }

    /// Every Gateway API route the index holds, for their status.
    pub fn gateway_routes(&self) -> Vec<((RouteKind, Key), GatewayRouteInfo)> {
        let mut routes: Vec<_> = self.gateway.routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        routes
    }

    /// The ports of Service `key`, `None` when it does not exist.
    pub fn service_ports(&self, key: &Key) -> Option<Vec<u16>> {
        self.services.get(key).map(|s| s.ports.iter().map(|p| p.port).collect())
    }

    /// The accepted MeshRoutes of Service `key` that apply to `port`: when there is one, the
    /// Gateway API routes of that port are not applied (MeshRoutes win, docs/gateway-api.md).
    pub fn meshroutes_on(&self, key: &Key, port: u16) -> Vec<String> {
        self.routes_for(key, port).into_iter().map(|(name, _)| name.to_owned()).collect()
    }

    /// Whether routes of namespace `client` (another namespace than the Service's) are attached
    /// to port `port` of Service `key`: consumer routes, which replace the Service's own routes
    /// for the clients of that namespace (GAMMA).
    pub fn has_consumer_routes(&self, key: &Key, port: u16, client: &str) -> bool {
        client != key.0
            && self.gateway.routes.iter().any(|((_, route_key), route)| {
                route_key.0 == client && attached(&route_key.0, route, key, Some(port))
            })
    }

    /// The proxy routes and backends of the Gateway API routes attached to port `port` of
    /// Service `key`, in the API's precedence order: the consumer routes of namespace `client`
    /// when it has any, otherwise the producer routes (those of the Service's namespace).
    pub fn gateway_destination(&self, key: &Key, port: u16, client: Option<&str>) -> GatewayPart {
        let from = match client {
            Some(client) if self.has_consumer_routes(key, port, client) => client,
            _ => key.0.as_str(),
        };
        let mut part = GatewayPart::default();
        let lookup = Recording { index: self, asked: RefCell::default() };
        let mut ordered: Vec<(Precedence, RouteConfig)> = Vec::new();
        let mut sources: BTreeMap<String, translate::BackendSource> = BTreeMap::new();
        for ((kind, route_key), route) in &self.gateway.routes {
            if route_key.0 != from || !attached(&route_key.0, route, key, Some(port)) {
                continue;
            }
            match translate::translate(
                &route_key.0,
                &route_key.1,
                &route.created,
                &route.spec,
                key,
                port,
                &lookup,
            ) {
                Ok(translated) => {
                    ordered.extend(translated.routes);
                    sources.extend(translated.backends);
                    part.applied.push(RouteRef {
                        kind: Some(*kind),
                        namespace: route_key.0.clone(),
                        name: route_key.1.clone(),
                        generation: route.generation,
                    });
                }
                Err(refusal) => part.refused.push(((*kind, route_key.clone()), refusal)),
            }
        }
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        part.routes = ordered.into_iter().map(|(_, route)| route).collect();
        part.backends = sources
            .into_iter()
            .map(|(name, (namespace, service, backend_port))| {
                let service = (namespace, service);
                let endpoints = self.endpoints(&service, backend_port, None);
                lookup.asked.borrow_mut().insert(service);
                BackendConfig { endpoints, name }
            })
            .collect();
        part.depends_on = lookup.asked.into_inner().into_iter().collect();
        part
    }
}

impl Index {
    /// The HTTPRoutes and GRPCRoutes (`KIND namespace/name`) attached to Service `key` on `port`
    /// (`None`: any port) that a MeshRoute there keeps from applying: the MeshRoute's status
    /// names them.
    pub fn gateway_routes_on(&self, key: &Key, port: Option<u16>) -> Vec<String> {
        let mut names: Vec<String> = self
            .gateway
            .routes
            .iter()
            .filter(|((_, route_key), route)| attached(&route_key.0, route, key, port))
            .map(|((kind, (namespace, name)), _)| format!("{} {namespace}/{name}", kind.as_str()))
            .collect();
        names.sort();
        names
    }
}

/// Whether route `route` of namespace `namespace` has Service `key` as a parent, on `port` (or
/// on any port when `port` is None).
fn attached(namespace: &str, route: &GatewayRouteInfo, key: &Key, port: Option<u16>) -> bool {
    translate::service_parents(namespace, &route.spec)
        .into_iter()
        .any(|(target, p)| target == *key && (port.is_none() || p.is_none() || p == port))
}
