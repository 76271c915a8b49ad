//! The server side of the rollouts phase: COUNT routes get a `spec.canary`, and each runs the
//! operator's own rollout code, as the MeshRoute controller does on every reconcile: the
//! decision (`canary::rollout::step` on the proxies' measurements), the status it writes
//! (`meshroute::status::desired_status`, kept on an in-memory MeshRoute as the status
//! subresource would keep it) and the route the discovery watch puts in the index from that
//! object (`discovery::watch::route_info`: the spec with the rollout's effective weights).
//!
//! Printed, one line each, times as microseconds since the Unix epoch (the driver converts):
//!   rollout-start COUNT WALL                  the canary specs are in the index
//!   rollout-step ROUTE CANARY-WEIGHT WALL     a decision changed the weight the proxies get
//!   rollout-end ROUTE PHASE WALL              the rollout finished (Promoted or RolledBack)
//!   rollout-stats WALL JSON                   every interval: this process's CPU and memory
//!   rollout-done WALL                         every rollout finished (or gave up)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_crds::MeshRoute;
use braid_operator::canary::{rollout, weights};
use braid_operator::discovery::index::{Key, RouteRef};
use braid_operator::discovery::stream::Discovery;
use braid_operator::discovery::watch::route_info;
use braid_operator::meshroute::status::{Programming, desired_status, referenced_services};
use braid_operator::meshroute::validate::validate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::procfs;
use crate::world::World;

/// Canary steps of every rollout; after the last the canary is promoted to 100.
pub const STEPS: [i32; 3] = [10, 25, 50];
/// Requests to the canary an interval needs: low, since a route of the synthetic world may have
/// a single subscribed proxy.
const MIN_REQUESTS: i32 = 5;
/// The controller requeues a rollout this much after its next check is due (controller.rs).
const REQUEUE_SLACK: Duration = Duration::from_millis(200);
/// A rollout that has not finished by then is left as it is (the driver reports it).
const GIVE_UP: Duration = Duration::from_secs(600);

pub fn wall_micros() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// The MeshRoute a user applies to start route `route`'s rollout: all traffic on v1, the canary
/// block naming v1 and v2.
pub fn canary_route(
    world: &World,
    route: usize,
    generation: i64,
    interval: &str,
) -> anyhow::Result<MeshRoute> {
    let (namespace, name) = world.route_key(route);
    let mut spec = world.route_info(route, generation, 100).spec;
    spec.canary = Some(serde_json::from_value(json!({
        "stable": format!("app-{route}-v1"),
        "canary": format!("app-{route}-v2"),
        "steps": STEPS,
        "interval": interval,
        "minRequests": MIN_REQUESTS,
    }))?);
    let problems = validate(&spec);
    anyhow::ensure!(problems.is_empty(), "the canary route is not valid: {problems:?}");
    let mut object = MeshRoute::new(&name, spec);
    object.metadata.namespace = Some(namespace);
    object.metadata.generation = Some(generation);
    object.metadata.creation_timestamp = Some(Time(crate::world::CREATED.parse()?));
    Ok(object)
}

/// Starts the rollouts of `routes` (each at its `generations` entry, bumped here: a new spec)
/// and a task printing the process's stats every interval until they all finished.
pub fn start(
    discovery: &Arc<Discovery>,
    world: &World,
    routes: &[usize],
    generations: &mut [i64],
    interval: &str,
) -> anyhow::Result<()> {
    let every = braid_crds::duration::parse_duration(interval)?;
    let mut objects = Vec::with_capacity(routes.len());
    for &route in routes {
        generations[route] += 1;
        objects.push((route, canary_route(world, route, generations[route], interval)?));
    }
    // The user applies every canary spec at once: the discovery watch indexes each.
    discovery.update(|index| {
        for (route, object) in &objects {
            index.upsert_route(world.route_key(*route), route_info(object));
        }
    });
    println!("rollout-start {} {}", objects.len(), wall_micros());
    let baselines = Arc::new(rollout::Baselines::default());
    let running = Arc::new(AtomicUsize::new(objects.len()));
    for (route, object) in objects {
        let (discovery, baselines, running) = (discovery.clone(), baselines.clone(), running.clone());
        let key = world.route_key(route);
        tokio::spawn(async move {
            run(&discovery, &baselines, key, route, object).await;
            running.fetch_sub(1, Ordering::SeqCst);
        });
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            println!("rollout-stats {} {}", wall_micros(), serde_json::to_string(&procfs::process("self"))?);
            if running.load(Ordering::SeqCst) == 0 {
                println!("rollout-done {}", wall_micros());
                return Ok::<_, serde_json::Error>(());
            }
        }
    });
    Ok(())
}

/// One route's reconciles, as the controller runs them: decide, write the status when it
/// changed (the watch then re-indexes the route), come back when the next check is due.
async fn run(
    discovery: &Discovery,
    baselines: &rollout::Baselines,
    key: Key,
    route: usize,
    mut object: MeshRoute,
) {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let existing: BTreeSet<String> = referenced_services(&object.spec).into_keys().collect();
    let service: Key = (key.0.clone(), object.spec.service.clone());
    let reference = RouteRef {
        kind: None,
        namespace: key.0.clone(),
        name: key.1.clone(),
        generation: object.metadata.generation.unwrap_or(0),
    };
    loop {
        // Whole seconds, as the controller does: what the status keeps of a time.
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
        let Some(step) = rollout::step(&object, Some(&discovery.measurements), baselines, now) else {
            println!("rollout-end {route} NoRollout {}", wall_micros());
            return;
        };
        let programming = Programming::Counted(discovery.registry.programming(&service, None, &reference));
        let status = desired_status(&object, &existing, &programming, Some(&step.decision), &Time(now));
        if object.status.as_ref() != Some(&status) {
            let before = weights::effective_weight(&object);
            object.status = Some(status);
            let after = weights::effective_weight(&object);
            let applied = wall_micros();
            discovery.update(|index| index.upsert_route(key.clone(), route_info(&object)));
            if after != before {
                println!("rollout-step {route} {} {applied}", after.unwrap_or(0));
            }
        }
        if step.decision.status.phase.is_finished() {
            println!("rollout-end {route} {} {}", step.decision.status.phase.as_str(), wall_micros());
            return;
        }
        let wait = step.next_check.map_or(GIVE_UP, |next| next + REQUEUE_SLACK);
        if tokio::time::Instant::now() + wait > deadline {
            println!("rollout-end {route} {} {}", step.decision.status.phase.as_str(), wall_micros());
            return;
        }
        tokio::time::sleep(wait).await;
    }
}
