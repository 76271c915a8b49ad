//! The MeshRoute controller: looks up the Services a route names, computes its status with the
//! pure functions beside this file, and writes it with server-side apply.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use braid_crds::MeshRoute;
use futures::{Future, StreamExt};
use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use serde_json::json;

use super::status::{Programming, desired_status, referenced_services};
use crate::{
    Error, FIELD_MANAGER,
    backoff::FailureBackoff,
    discovery::{index::RouteRef, stream::Discovery, translate},
    metrics::Metrics,
};

const CONTROLLER: &str = "meshroute";
/// Routes are re-checked this often even without events, as a safety net.
const RESYNC: Duration = Duration::from_secs(600);

/// What each reconcile needs.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub backoff: FailureBackoff,
    /// The discovery server of this operator, whose proxies' acks make the Programmed condition.
    pub discovery: Option<Arc<Discovery>>,
    /// Records canary transitions as Events on the route.
    pub recorder: Option<kube::runtime::events::Recorder>,
    /// Where each rollout's current interval started.
    pub baselines: crate::canary::rollout::Baselines,
}

/// Which namespaces the controller watches.
#[derive(Debug, Clone)]
pub enum Scope {
    AllNamespaces,
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::AllNamespaces => Api::all(client),
            Scope::Namespace(ns) => Api::namespaced(client, ns),
        }
    }
}

/// Checks that the MeshRoute CRD is installed, so a missing CRD is one clear error at start
/// rather than a watch that fails forever.
pub async fn check_crd(client: &Client, scope: &Scope) -> Result<(), Error> {
    let routes: Api<MeshRoute> = scope.api(client.clone());
    match routes.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing),
        Err(err) => Err(Error::Kube(err)),
    }
}

/// Runs the controller until `shutdown` resolves. `on_ready` is called once the controller has
/// listed every MeshRoute.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    on_ready: impl FnOnce() + Send + 'static,
) {
    let routes: Api<MeshRoute> = scope.api(ctx.client.clone());
    let services: Api<Service> = scope.api(ctx.client.clone());
    let (store, writer) = reflector::store();
    // Readiness comes from the watch's InitDone event rather than Store::wait_until_ready, which
    // wakes only its most recent waiter (and the controller's runner is one).
    let mut on_ready = Some(on_ready);
    let routes_stream = watcher(routes, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone))
                && let Some(on_ready) = on_ready.take()
            {
                on_ready();
            }
        })
        .touched_objects();
    ctx.metrics.expose_failures(CONTROLLER, &Error::METRIC_LABELS);
    let controller = Controller::for_stream(routes_stream, store.clone());
    let acks = match &ctx.discovery {
        Some(discovery) => ack_triggers(discovery.clone(), store.clone()),
        None => futures::stream::pending().boxed(),
    };
    let gateway = match &ctx.discovery {
        Some(discovery) => gateway_triggers(discovery.clone(), store.clone()),
        None => futures::stream::pending().boxed(),
    };
    controller
        .reconcile_on(acks)
        .reconcile_on(gateway)
        .watches(services, watcher::Config::default(), move |service| routes_naming(&store, &service))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((route, _)) => tracing::debug!(%route, "reconciled"),
                // Reconcile errors are logged by error_policy; these are watch errors, which the
                // controller retries with backoff.
                Err(err) => tracing::warn!(error = %err, "controller event failed"),
            }
        })
        .await;
}

/// Routes to re-check because their proxies' acks changed: at most every 200 ms, so a fleet of
/// proxies acking one change makes a handful of status writes, not one per proxy.
fn ack_triggers(
    discovery: Arc<Discovery>,
    store: Store<MeshRoute>,
) -> futures::stream::BoxStream<'static, ObjectRef<MeshRoute>> {
    let changes = discovery.registry.changes();
    futures::stream::unfold((changes, discovery, store), |(mut changes, discovery, store)| async move {
        changes.changed().await.ok()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        changes.mark_unchanged();
        let (services, _) = discovery.registry.take_dirty();
        let routes: Vec<ObjectRef<MeshRoute>> = store
            .state()
            .into_iter()
            .filter(|route| {
                services.contains(&(route.namespace().unwrap_or_default(), route.spec.service.clone()))
            })
            .map(|route| ObjectRef::from_obj(&*route))
            .collect();
        Some((futures::stream::iter(routes), (changes, discovery, store)))
    })
    .flatten()
    .boxed()
}

/// Routes to re-check because the HTTPRoutes and GRPCRoutes they override changed (their
/// Accepted message names them), at most every second.
fn gateway_triggers(
    discovery: Arc<Discovery>,
    store: Store<MeshRoute>,
) -> futures::stream::BoxStream<'static, ObjectRef<MeshRoute>> {
    let revisions = discovery.revisions();
    let named: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    futures::stream::unfold(
        (revisions, discovery, store, named),
        |(mut revisions, discovery, store, mut named)| async move {
            revisions.changed().await.ok()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            revisions.mark_unchanged();
            let mut changed = Vec::new();
            for route in store.state() {
                let now = overridden(&discovery, &route);
                if named.get(&key(&route)).map_or(&[][..], Vec::as_slice) != now.as_slice() {
                    named.insert(key(&route), now);
                    changed.push(ObjectRef::from_obj(&*route));
                }
            }
            Some((futures::stream::iter(changed), (revisions, discovery, store, named)))
        },
    )
    .flatten()
    .boxed()
}

/// The Gateway API routes this route keeps from applying (docs/gateway-api.md: a MeshRoute wins).
fn overridden(discovery: &Discovery, route: &MeshRoute) -> Vec<String> {
    let service = (route.namespace().unwrap_or_default(), route.spec.service.clone());
    let port = route.spec.port.and_then(|p| u16::try_from(p).ok());
    discovery.read(|index| index.gateway_routes_on(&service, port))
}

/// The routes, in the Service's namespace, that name it: they must be re-checked when it
/// appears or disappears.
fn routes_naming(store: &Store<MeshRoute>, service: &Service) -> Vec<ObjectRef<MeshRoute>> {
    let (Some(name), Some(namespace)) =
        (service.metadata.name.as_deref(), service.metadata.namespace.as_deref())
    else {
        return Vec::new();
    };
    store
        .state()
        .into_iter()
        .filter(|route| route.namespace().as_deref() == Some(namespace))
        .filter(|route| referenced_services(&route.spec).contains_key(name))
        .map(|route| ObjectRef::from_obj(&*route))
        .collect()
}

#[tracing::instrument(skip_all, fields(route = %route.name_any(), namespace = route.namespace()))]
async fn reconcile(route: Arc<MeshRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = tokio::time::Instant::now();
    let result = apply_status(&route, &ctx).await;
    ctx.metrics.observe(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.backoff.succeeded(&key(&route));
    }
    // A rollout comes back for its next check; a little late rather than early, so the check
    // is due when it runs.
    result.map(|next_check| {
        Action::requeue(next_check.map_or(RESYNC, |next| (next + Duration::from_millis(200)).min(RESYNC)))
    })
}

/// Writes the route's status; returns when its rollout wants the next check.
async fn apply_status(route: &MeshRoute, ctx: &Context) -> Result<Option<Duration>, Error> {
    let namespace = route.namespace().ok_or(Error::MissingNamespace)?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut existing = BTreeSet::new();
    for name in referenced_services(&route.spec).into_keys() {
        if services.get_metadata_opt(&name).await?.is_some() {
            existing.insert(name);
        }
    }
    let programming = match &ctx.discovery {
        None => Programming::Off,
        Some(discovery) => match translate::check_route(&route.name_any(), &route.spec) {
            Err(why) => Programming::Unsupported(why.to_string()),
            Ok(()) => {
                let reference = RouteRef {
                    kind: None,
                    namespace: namespace.clone(),
                    name: route.name_any(),
                    generation: route.metadata.generation.unwrap_or(0),
                };
                let port = route.spec.port.and_then(|p| u16::try_from(p).ok());
                Programming::Counted(discovery.registry.programming(
                    &(namespace.clone(), route.spec.service.clone()),
                    port,
                    &reference,
                ))
            }
        },
    };
    // Whole seconds: what the status keeps of a time, so a re-read status compares equal.
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
    let rollout = if crate::meshroute::validate::validate(&route.spec).is_empty() {
        crate::canary::rollout::step(
            route,
            ctx.discovery.as_ref().map(|d| &d.measurements),
            &ctx.baselines,
            now,
        )
    } else {
        None
    };
    if rollout.is_none() {
        ctx.baselines.forget(&key(route));
        crate::canary::rollout::forget_metrics(&namespace, &route.name_any(), &ctx.metrics);
    }
    let next_check = rollout.as_ref().and_then(|r| r.next_check);
    let mut status =
        desired_status(route, &existing, &programming, rollout.as_ref().map(|r| &r.decision), &Time(now));
    if let Some(rollout) = &rollout {
        rollout.observe(route, &ctx.metrics);
    }
    // Never silent: an HTTPRoute or GRPCRoute this route overrides is named in Accepted.
    if let Some(discovery) = &ctx.discovery
        && let overridden = overridden(discovery, route)
        && !overridden.is_empty()
        && let Some(accepted) =
            status.conditions.iter_mut().find(|c| c.type_ == "Accepted" && c.status == "True")
    {
        accepted.message = format!(
            "{}; it wins over {} on this Service (docs/gateway-api.md)",
            accepted.message,
            overridden.join(", ")
        );
    }
    if route.status.as_ref() == Some(&status) {
        return Ok(next_check);
    }
    let patch = json!({
        "apiVersion": MeshRoute::api_version(&()),
        "kind": MeshRoute::kind(&()),
        "status": status,
    });
    let routes: Api<MeshRoute> = Api::namespaced(ctx.client.clone(), &namespace);
    routes
        .patch_status(&route.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await?;
    let accepted = status.conditions.first().map(|c| c.status.as_str()).unwrap_or("Unknown");
    tracing::info!(generation = ?status.observed_generation, accepted, "status updated");
    // Only once the status says so: a failed write is retried, and must not record twice.
    if let (Some(rollout), Some(recorder)) = (&rollout, &ctx.recorder) {
        rollout.publish(route, recorder).await;
    }
    Ok(next_check)
}

fn error_policy(route: Arc<MeshRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error.metric_label());
    let delay = ctx.backoff.failed(&key(&route));
    tracing::warn!(route = %route.name_any(), namespace = route.namespace(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn key(route: &MeshRoute) -> String {
    format!("{}/{}", route.namespace().unwrap_or_default(), route.name_any())
}
