//! The server process: the synthetic index served by the real discovery server over mTLS.
//!
//! Prints `ready ADDR PHASES-JSON` once it listens, then answers commands on stdin, one per line:
//!   route SEQ N WEIGHT   MeshRoute N gets the next generation with v1 weight WEIGHT; once every
//!                        proxy routing to its Service acked that generation (as the operator's
//!                        Programmed condition counts it) prints
//!                        `acked SEQ TOTAL ACKED MICROS COUNTING-MICROS COUNTS` (MICROS from the
//!                        command, or `timeout` after 60 s; COUNTING-MICROS the time the COUNTS
//!                        counts took, the benchmark's own cost, not the operator's)
//!   stats                prints `stats JSON` (memory and CPU of this process)
//!   rollouts COUNT INTERVAL  starts COUNT canary rollouts with that interval (rollouts.rs says
//!                        what it prints)
//! and exits at the end of stdin.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use braid_operator::discovery::index::{Key, RouteRef};
use braid_operator::discovery::server::{self, ServerSettings};
use braid_operator::discovery::stream::Discovery;
use braid_operator::identity::authority::{Authority, AuthoritySource};
use braid_operator::identity::ca::KeyedCert;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::procfs::{self, ProcStats};
use crate::rollouts;
use crate::world::{self, World};

/// Memory as the index grows, each step cumulative.
#[derive(Debug, Serialize, Deserialize)]
pub struct Phases {
    pub empty: ProcStats,
    pub pods: ProcStats,
    pub services: ProcStats,
    pub slices: ProcStats,
    pub routes_policies: ProcStats,
    /// After the keys watch.rs keeps to notice deletions across relists.
    pub relist_keys: ProcStats,
    /// The runtime and the TLS listener up, no proxy yet.
    pub serving: ProcStats,
    pub index_build_seconds: f64,
}

pub fn main(world: World, ca_dir: &Path) -> anyhow::Result<()> {
    let empty = procfs::process("self");
    // Built on the main thread, before the runtime starts, so the steps measure the index alone.
    let started = Instant::now();
    let mut index = world.new_index();
    let mut pod_keys = Vec::new();
    world.add_pods(&mut index, &mut pod_keys);
    let pods = procfs::process("self");
    let mut service_keys = Vec::new();
    world.add_services(&mut index, &mut service_keys);
    let services = procfs::process("self");
    let mut slice_keys = Vec::new();
    world.add_slices(&mut index, &mut slice_keys);
    let slices = procfs::process("self");
    let mut other_keys = Vec::new();
    world.add_routes_and_policies(&mut index, &mut other_keys);
    let routes_policies = procfs::process("self");
    let index_build_seconds = started.elapsed().as_secs_f64();
    // watch.rs keeps, per kind, the set of keys it has seen (to drop what vanished during a
    // relist): the same sets here, so the figure is what the operator holds.
    let known: Vec<HashSet<Key>> = [pod_keys, service_keys, slice_keys, other_keys]
        .into_iter()
        .map(|keys| keys.into_iter().collect())
        .collect();
    let relist_keys = procfs::process("self");
    anyhow::ensure!(index.pod_count() == world.pods, "the index holds {} pods", index.pod_count());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(
        world,
        ca_dir,
        index,
        Phases {
            empty,
            pods,
            services,
            slices,
            routes_policies,
            relist_keys,
            serving: ProcStats::default(),
            index_build_seconds,
        },
    ))?;
    drop(known);
    Ok(())
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))
}

async fn serve(
    world: World,
    ca_dir: &Path,
    index: braid_operator::discovery::index::Index,
    mut phases: Phases,
) -> anyhow::Result<()> {
    let source = AuthoritySource {
        issuer: KeyedCert { cert_pem: read(ca_dir, "issuer.crt")?, key_pem: read(ca_dir, "issuer.key")? },
        bundle_pem: read(ca_dir, "bundle.crt")?,
        trust_domain: world::TRUST_DOMAIN.to_owned(),
        workload_lifetime: Duration::from_secs(86400),
    };
    let authority = Arc::new(Authority::new(source).context("the issuer the driver wrote")?);
    let (_authorities_tx, authorities) = watch::channel(Some(authority));
    let discovery = Discovery::new(index);
    discovery.mark_synced();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    let settings = ServerSettings {
        dns_names: vec![world::SERVER_NAME.to_owned()],
        ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        // Every simulated proxy connects from 127.0.0.1; in a cluster each pod has its own address.
        max_connections_per_address: usize::MAX,
    };
    let shutdown = CancellationToken::new();
    let server =
        tokio::spawn(server::run(discovery.clone(), listener, settings, authorities, shutdown.clone()));
    // The TLS configuration is built by the server's own task: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    phases.serving = procfs::process("self");
    println!("ready {addr} {}", serde_json::to_string(&phases)?);

    let mut generations = vec![1i64; world.routes];
    // tokio's stdin needs a feature the operator does not enable: a thread reads it instead.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["stats"] => println!("stats {}", serde_json::to_string(&procfs::process("self"))?),
            ["rollouts", count, interval] => {
                let routes = world.canary_routes(count.parse()?);
                rollouts::start(&discovery, &world, &routes, &mut generations, interval)?;
            }
            ["route", seq, route, weight] => {
                let received = Instant::now();
                let (seq, route, weight): (u64, usize, u32) = (seq.parse()?, route.parse()?, weight.parse()?);
                anyhow::ensure!(route < world.routes && (1..100).contains(&weight), "bad command {line:?}");
                generations[route] += 1;
                let generation = generations[route];
                let key = world.route_key(route);
                discovery.update(|index| {
                    index.upsert_route(key.clone(), world.route_info(route, generation, weight))
                });
                let reference = RouteRef { kind: None, namespace: key.0.clone(), name: key.1, generation };
                let service: Key = (key.0, format!("app-{route}"));
                tokio::spawn(await_acks(discovery.clone(), seq, service, reference, received));
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(())
}

/// Waits until every proxy that routes to `service` acked a configuration carrying `route`,
/// counting as the MeshRoute status writer does (registry.programming), re-counted at most every
/// ACK_POLL after the registry changed: the time is exact to ACK_POLL. (The operator's status
/// writer re-checks at most every 200 ms.) Each count walks every connected proxy, so at 10,000
/// proxies the counting is a visible share of the server's CPU in a change: its time is printed,
/// and the driver takes it out of the operator's figure. Wall time stands for CPU time here: a
/// count runs without yielding, and a thread's CPU clock needs a system call the example has no
/// safe binding for (its schedstat lags by up to a scheduler tick while it runs).
async fn await_acks(discovery: Arc<Discovery>, seq: u64, service: Key, route: RouteRef, since: Instant) {
    const ACK_POLL: Duration = Duration::from_millis(2);
    let mut changes = discovery.registry.changes();
    let deadline = tokio::time::Instant::from_std(since + Duration::from_secs(60));
    let (mut counting, mut counts_made) = (Duration::ZERO, 0u64);
    loop {
        changes.mark_unchanged();
        let counting_started = Instant::now();
        let counts = discovery.registry.programming(&service, None, &route);
        counting += counting_started.elapsed();
        counts_made += 1;
        let counting = format!("{} {counts_made}", counting.as_micros());
        if counts.total > 0 && counts.acked == counts.total {
            println!(
                "acked {seq} {} {} {} {counting}",
                counts.total,
                counts.acked,
                since.elapsed().as_micros()
            );
            return;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(ACK_POLL).await;
            }
            () = tokio::time::sleep_until(deadline) => {
                println!("acked {seq} {} {} timeout {counting}", counts.total, counts.acked);
                return;
            }
        }
    }
}
