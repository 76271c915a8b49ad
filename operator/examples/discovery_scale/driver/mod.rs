//! The driver: a CA, the server child, PROXIES simulated proxies, the route changes, the
//! rollouts, the report.
//!
//! Here: the run's phases, in order; `pki` (the CA and the proxies' certificates),
//! `server_child` (starting and commanding the server), `sim_proxy` (one simulated proxy),
//! `changes` (the route changes), `traffic` (what the proxies report), `rollouts` (the rollouts
//! phase) and `report` (the figures as Markdown).

mod changes;
mod pki;
mod report;
mod rollouts;
mod server_child;
mod sim_proxy;
mod traffic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::procfs;
use crate::world::{ProxySpec, World};
use pki::MeshCa;
use report::{Report, mib};
use server_child::ServerChild;
use sim_proxy::{Event, proxy};
use traffic::Traffic;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn main(world: World, args: Args) -> anyhow::Result<()> {
    let needed = world.proxies as u64 + 256;
    if let Some(limit) = procfs::open_files_limit()
        && limit < needed
    {
        anyhow::bail!(
            "the open-files limit is {limit}, {} proxies need about {needed} (one socket each in the \
             driver and in the server): run `ulimit -n 65536` first (bench/discovery.sh does)",
            world.proxies
        );
    }
    let rustc_before = procfs::count_named("rustc");
    let load_before = procfs::loadavg();

    let ca = MeshCa::create()?;
    let (mut server, addr, phases) = ServerChild::start(&args, &world, &ca.dir).await?;
    let server_pid = server.pid.clone();
    let _ = std::fs::remove_dir_all(&ca.dir);
    eprintln!(
        "discovery_scale: server {server_pid} on {addr}: index of {} pods built in {:.2} s, RSS {:.1} MiB",
        world.pods,
        phases.index_build_seconds,
        mib(phases.serving.vm_rss_kib)
    );
    let specs: Vec<ProxySpec> = (0..world.proxies).map(|p| world.proxy(p)).collect();
    let configs = ca.client_configs(&specs)?;

    // Connect every proxy.
    let before_connect = server.stats().await?;
    let (machine_before, steal_before) = procfs::machine();
    let driver_before = procfs::cpu_seconds("self");
    let shutdown = CancellationToken::new();
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let handshakes = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let traffic = Arc::new(Traffic { per_second: args.rollout_rps, ..Traffic::default() });
    let connect_started = Instant::now();
    for (p, spec) in specs.iter().enumerate() {
        let identity = (spec.namespace.clone(), spec.service_account.clone());
        let config = configs.get(&identity).context("a certificate per identity")?.clone();
        let (spec, events, handshakes, traffic, shutdown) =
            (spec.clone(), events_tx.clone(), handshakes.clone(), traffic.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = proxy(p, spec, config, addr, &events, handshakes, traffic, shutdown).await {
                let _ = events.send(Event::Failed(p, format!("{error:#}")));
            }
        });
    }
    let mut ready = 0;
    let mut failures: Vec<String> = Vec::new();
    let connect_deadline = connect_started + CONNECT_TIMEOUT;
    while ready + failures.len() < world.proxies {
        let left = connect_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Ready)) => {
                ready += 1;
                if ready % 2000 == 0 && ready < world.proxies {
                    eprintln!(
                        "discovery_scale: {ready} proxies connected, {:.1} s",
                        connect_started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(Some(Event::Failed(p, error))) => failures.push(format!("proxy {p}: {error}")),
            Ok(Some(Event::Update { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let server_connect_cpu = procfs::cpu_seconds(&server_pid) - before_connect.cpu_seconds;
    let driver_connect_cpu = procfs::cpu_seconds("self") - driver_before;
    let (machine_after, steal_after) = procfs::machine();
    let connect_other = (machine_after - machine_before) - server_connect_cpu - driver_connect_cpu;
    let connect_steal = steal_after - steal_before;
    if !failures.is_empty() {
        eprintln!("discovery_scale: {} proxies failed, first: {}", failures.len(), failures[0]);
    }
    anyhow::ensure!(
        ready == world.proxies,
        "only {ready} of {} proxies connected and got their snapshots ({} failed{})",
        world.proxies,
        failures.len(),
        failures.first().map(|f| format!(", first: {f}")).unwrap_or_default()
    );
    eprintln!("discovery_scale: {ready} proxies connected and subscribed in {connect_seconds:.1} s");
    // The last acks of the first snapshots settle before the idle rate is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while events.try_recv().is_ok() {}
    let connected = server.stats().await?;

    // Change routes, one at a time, and time each.
    let changes =
        changes::run(&world, &mut server, &mut events, args.changes, Duration::from_millis(args.spacing_ms))
            .await?;
    let after = server.stats().await?;

    let rollouts = if args.rollouts > 0 {
        Some(rollouts::run(&mut server, &mut events, &specs, &args, &traffic).await?)
    } else {
        None
    };
    let driver = procfs::process("self");

    shutdown.cancel();
    server.stop().await?;

    let report = Report {
        world,
        args: &args,
        phases,
        before_connect,
        connected,
        after,
        driver,
        connect_seconds,
        server_connect_cpu,
        driver_connect_cpu,
        connect_other,
        connect_steal,
        changes,
        rollouts,
        rustc: (rustc_before, procfs::count_named("rustc")),
        load: (load_before, procfs::loadavg()),
    };
    let markdown = report.markdown();
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{markdown}");
    Ok(())
}
