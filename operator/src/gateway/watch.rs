//! Keeps the discovery index's HTTPRoutes, GRPCRoutes and ReferenceGrants current, and writes
//! the routes' `status.parents` entries (controller braid.dev/mesh) from it. Runs beside the
//! discovery watches (discovery/watch.rs), on the leader; when the Gateway API CRDs are not
//! installed it says so once and looks again every minute.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::status::{Verdict, desired_status, programmed, verdicts};
use super::translate::{Key, RouteKind, RouteSpec};
use super::types::{GRPCRoute, HTTPRoute, ReferenceGrant, RouteStatus};
use crate::discovery::index::GatewayRouteInfo;
use crate::discovery::index::RouteRef;
use crate::discovery::stream::Discovery;

const FIELD_MANAGER: &str = "braid-operator-gateway";
/// Changes that come together make one status write per route.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the proxies running each route are counted again while nothing else changes.
const PROGRAMMED_RECOUNT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Route(RouteKind),
    Grant,
}

enum Change {
    Route(RouteKind, Key, Option<GatewayRouteInfo>),
    Grant(Key, Option<super::types::ReferenceGrantSpec>),
    Start(Kind),
    Done(Kind),
}

fn key_of<K: Resource>(object: &K) -> Key {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

fn info<K: Resource>(object: &K, spec: RouteSpec) -> GatewayRouteInfo {
    GatewayRouteInfo {
        generation: object.meta().generation.unwrap_or(0),
        created: object.meta().creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default(),
        spec,
    }
}

fn watch<K, F>(api: Api<K>, kind: Kind, reduce: F) -> BoxStream<'static, Change>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Key, Option<&K>) -> Change + Send + 'static,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            std::future::ready(match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    Some(reduce(key_of(&o), Some(&o)))
                }
                Ok(watcher::Event::Delete(o)) => Some(reduce(key_of(&o), None)),
                Ok(watcher::Event::Init) => Some(Change::Start(kind)),
                Ok(watcher::Event::InitDone) => Some(Change::Done(kind)),
                Err(err) => {
                    tracing::warn!(?kind, %err, "Gateway API watch failed; retrying");
                    None
                }
            })
        })
        .boxed()
}

/// Whether the HTTPRoute CRD is served: a 404 means the Gateway API is not installed.
async fn installed(client: &Client) -> bool {
    let routes: Api<HTTPRoute> = Api::all(client.clone());
    match routes.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(err) => {
            tracing::debug!(%err, "cannot check for the Gateway API CRDs; checking again");
            false
        }
    }
}

/// Runs the watches and the status writer until `shutdown`.
pub async fn run(client: Client, discovery: Arc<Discovery>, shutdown: CancellationToken) {
    let mut said = false;
    while !installed(&client).await {
        if !said {
            tracing::info!(
                "the Gateway API CRDs are not installed: HTTPRoutes and GRPCRoutes are not routed until they are"
            );
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shutdown.cancelled() => return,
        }
    }
    tokio::spawn(write_statuses(client.clone(), discovery.clone(), shutdown.clone()));
    let mut changes = futures::stream::select_all([
        watch(Api::<HTTPRoute>::all(client.clone()), Kind::Route(RouteKind::Http), |key, r| {
            Change::Route(RouteKind::Http, key, r.map(|r| info(r, RouteSpec::Http(r.spec.clone()))))
        }),
        watch(Api::<GRPCRoute>::all(client.clone()), Kind::Route(RouteKind::Grpc), |key, r| {
            Change::Route(RouteKind::Grpc, key, r.map(|r| info(r, RouteSpec::Grpc(r.spec.clone()))))
        }),
        watch(Api::<ReferenceGrant>::all(client), Kind::Grant, |key, g| {
            Change::Grant(key, g.map(|g| g.spec.clone()))
        }),
    ]);
    let mut known: HashMap<Kind, HashSet<Key>> = HashMap::new();
    let mut relisting: HashMap<Kind, HashSet<Key>> = HashMap::new();
    loop {
        let change = tokio::select! {
            change = changes.next() => match change { Some(change) => change, None => return },
            () = shutdown.cancelled() => return,
        };
        let mut record = |kind: Kind, key: &Key, present: bool| {
            let set = known.entry(kind).or_default();
            if present {
                set.insert(key.clone());
                if let Some(seen) = relisting.get_mut(&kind) {
                    seen.insert(key.clone());
                }
            } else {
                set.remove(key);
            }
        };
        match change {
            Change::Route(kind, key, route) => {
                record(Kind::Route(kind), &key, route.is_some());
                discovery.update(|index| match route {
                    Some(route) => index.upsert_gateway_route(kind, key, route),
                    None => index.remove_gateway_route(kind, &key),
                });
            }
            Change::Grant(key, grant) => {
                record(Kind::Grant, &key, grant.is_some());
                discovery.update(|index| match grant {
                    Some(grant) => index.upsert_reference_grant(key, grant),
                    None => index.remove_reference_grant(&key),
                });
            }
            Change::Start(kind) => {
                relisting.insert(kind, HashSet::new());
            }
            Change::Done(kind) => {
                // What vanished while the watch was away is forgotten.
                let seen = relisting.remove(&kind).unwrap_or_default();
                let set = known.entry(kind).or_default();
                let gone: Vec<Key> = set.iter().filter(|k| !seen.contains(*k)).cloned().collect();
                for key in &gone {
                    set.remove(key);
                }
                discovery.update(|index| {
                    for key in &gone {
                        match kind {
                            Kind::Route(route_kind) => index.remove_gateway_route(route_kind, key),
                            Kind::Grant => index.remove_reference_grant(key),
                        }
                    }
                });
            }
        }
    }
}

/// Writes each route's entries whenever what Braid concludes about it changes.
async fn write_statuses(client: Client, discovery: Arc<Discovery>, shutdown: CancellationToken) {
    discovery.synced().await;
    let mut revisions = discovery.revisions();
    let mut written: HashMap<(RouteKind, Key), (i64, Vec<Verdict>)> = HashMap::new();
    loop {
        let all = discovery.read(|index| {
            index
                .gateway_routes()
                .into_iter()
                .map(|((kind, key), route)| {
                    let mut verdicts = verdicts(&key.0, &key.1, &route, index);
                    let reference = RouteRef {
                        kind: Some(kind),
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        generation: route.generation,
                    };
                    for verdict in &mut verdicts {
                        let port = verdict.parent_ref.port.and_then(|port| u16::try_from(port).ok());
                        let counts = discovery.registry.programming(&verdict.target, port, &reference);
                        verdict.programmed = Some(programmed(verdict, &counts, route.generation));
                    }
                    ((kind, key), (route.generation, verdicts))
                })
                .collect::<Vec<_>>()
        });
        let present: HashSet<(RouteKind, Key)> = all.iter().map(|(k, _)| k.clone()).collect();
        written.retain(|k, _| present.contains(k));
        let mut failed = false;
        for (route, verdict) in all {
            if written.get(&route) == Some(&verdict) {
                continue;
            }
            match write(&client, &route, verdict.0, &verdict.1).await {
                Ok(()) => {
                    written.insert(route, verdict);
                }
                Err(err) => {
                    let route = format!("{} {}/{}", route.0.as_str(), route.1.0, route.1.1);
                    // A conflict (another writer of status.parents, or a newer generation) is
                    // retried at once; anything else is worth a warning.
                    if matches!(&err, kube::Error::Api(status) if status.code == 409) {
                        tracing::debug!(%route, %err, "route status changed meanwhile; retrying");
                    } else {
                        tracing::warn!(%route, %err, "cannot write the route's status; retrying");
                    }
                    failed = true;
                }
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            // A write that failed (a conflict, the API server away) is retried; proxies' acks,
            // which change no revision, are counted again.
            () = tokio::time::sleep(if failed { Duration::from_secs(5) } else { PROGRAMMED_RECOUNT }) => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLE) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// `status.parents` is an atomic list shared with other controllers (a gateway's): it is read,
/// Braid's entries replaced, and written back with a merge patch that carries the
/// resourceVersion read, so a concurrent writer's change is never lost (a conflict retries).
async fn write(
    client: &Client,
    (kind, (namespace, name)): &(RouteKind, Key),
    generation: i64,
    verdicts: &[Verdict],
) -> Result<(), kube::Error> {
    let now = Time(Timestamp::now());
    match kind {
        RouteKind::Http => {
            let api: Api<HTTPRoute> = Api::namespaced(client.clone(), namespace);
            let current = api.get(name).await?;
            let (version, status) = (current.resource_version(), current.status);
            patch(&api, name, version, status.unwrap_or_default(), verdicts, generation, &now).await
        }
        RouteKind::Grpc => {
            let api: Api<GRPCRoute> = Api::namespaced(client.clone(), namespace);
            let current = api.get(name).await?;
            let (version, status) = (current.resource_version(), current.status);
            patch(&api, name, version, status.unwrap_or_default(), verdicts, generation, &now).await
        }
    }
}

async fn patch<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<String>,
    previous: RouteStatus,
    verdicts: &[Verdict],
    generation: i64,
    now: &Time,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let status = desired_status(&previous, verdicts, generation, now);
    if status == previous {
        return Ok(());
    }
    let body = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
    api.patch_status(
        name,
        &PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() },
        &Patch::Merge(&body),
    )
    .await?;
    tracing::info!(route = name, generation, "route status updated");
    Ok(())
}
