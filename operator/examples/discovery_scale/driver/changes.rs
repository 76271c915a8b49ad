//! The change phase: CHANGES route changes, SPACING_MS apart, cycling over the fan-out classes
//! (route-0, which every proxy calls; a route a tenth of the proxies call; one a hundredth call).
//! Per change: when each subscribed proxy received it, when the server counted every one of them
//! as acked, and the CPU the server and the driver spent from the change's command until the
//! next change's (or, for the last, until SPACING_MS after it, at least until it was acked), so
//! whatever the change caused is in its window, and idle work is too (the idle rate, measured
//! before, says how much that is).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::server_child::ServerChild;
use super::sim_proxy::Event;
use crate::procfs::{self, ThreadTimes};
use crate::world::{Class, HOT, INITIAL_WEIGHT, NARROW, World};

const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the idle rate is measured over, after the connections settled.
const IDLE: Duration = Duration::from_secs(3);

pub struct Change {
    pub class: Class,
    pub route: usize,
    pub weight: u32,
    pub proxies: usize,
    /// Per proxy: from the command to the update's arrival.
    pub latencies: Vec<Duration>,
    /// From the command until the last subscribed proxy had the update.
    pub all_received: Option<Duration>,
    /// From the command until the driver read the server's "every proxy acked" line.
    pub all_acked: Option<Duration>,
    /// The same, on the server's clock (from reading the command).
    pub server_acked: Option<Duration>,
    pub server_total: usize,
    /// The CPU time the server spent counting acks for this change (the benchmark's own work),
    /// and how many counts it made.
    pub counting: Duration,
    pub counts: u64,
    /// From this change's command to the next one's.
    pub window: Duration,
    /// Server CPU in the window, seconds: per-thread runtime (ns) and utime+stime (10 ms ticks).
    pub server_cpu: f64,
    pub server_ticks: f64,
    /// Driver (simulated proxies) CPU in the window, seconds.
    pub driver_cpu: f64,
    /// The driver's CPU from the command until the last subscribed proxy had the update, as a
    /// share of that time: near 1, the simulated proxies (one core) set the pace, not the server.
    pub driver_busy: Option<f64>,
}

impl Change {
    /// The server's CPU in the window less the benchmark's ack counting: the operator's share.
    pub fn operator_cpu(&self) -> f64 {
        (self.server_cpu - self.counting.as_secs_f64()).max(0.0)
    }
}

pub struct Changes {
    pub results: Vec<Change>,
    /// Server and driver CPU seconds per second while nothing changed (connections open, HTTP/2
    /// keepalives), over IDLE.
    pub server_idle_rate: f64,
    pub driver_idle_rate: f64,
    pub seconds: f64,
    /// utime+stime over the whole phase.
    pub server_cpu: f64,
    pub driver_cpu: f64,
    /// Every other process on the machine, core-seconds, and hypervisor steal.
    pub other_cpu: f64,
    pub steal: f64,
}

/// The routes of each class the changes cycle over: those with at least one subscriber (with
/// fewer than 100 proxies some 1% routes have none).
fn schedule(world: &World) -> anyhow::Result<Vec<(Class, Vec<usize>)>> {
    let mut subscribed = [false; HOT];
    for p in 0..world.proxies {
        for route in world.proxy(p).destinations.iter().filter_map(|(_, r)| *r) {
            if route < HOT {
                subscribed[route] = true;
            }
        }
    }
    Class::ALL
        .iter()
        .map(|&class| {
            let routes: BTreeSet<usize> =
                (0..NARROW).map(|n| class.route(n)).filter(|&r| subscribed[r]).collect();
            anyhow::ensure!(!routes.is_empty(), "no proxy calls a route of the {}% class", class.percent());
            Ok((class, routes.into_iter().collect()))
        })
        .collect()
}

pub async fn run(
    world: &World,
    server: &mut ServerChild,
    events: &mut mpsc::UnboundedReceiver<Event>,
    changes: usize,
    spacing: Duration,
) -> anyhow::Result<Changes> {
    let schedule = schedule(world)?;
    let pid = server.pid.clone();

    // Idle: what the server and driver spend with every proxy connected and nothing changing.
    while events.try_recv().is_ok() {}
    let (server_idle, driver_idle, idle_started) =
        (procfs::thread_times(&pid), procfs::thread_times("self"), Instant::now());
    tokio::time::sleep(IDLE).await;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let server_idle_rate = procfs::thread_times(&pid).since(&server_idle) / idle_seconds;
    let driver_idle_rate = procfs::thread_times("self").since(&driver_idle) / idle_seconds;
    while events.try_recv().is_ok() {}

    let mut weights = [INITIAL_WEIGHT; HOT];
    let mut results: Vec<Change> = Vec::new();
    // The CPU samples at each change's command, and one after the last change.
    let mut marks: Vec<(ThreadTimes, ThreadTimes, Instant)> = Vec::new();
    let phase_server = procfs::cpu_seconds(&pid);
    let phase_driver = procfs::cpu_seconds("self");
    let (machine_before, steal_before) = procfs::machine();
    let started = Instant::now();
    let mut next_start = Instant::now();
    for seq in 0..changes {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next_start)).await;
        let (class, routes) = &schedule[seq % schedule.len()];
        let route = routes[(seq / schedule.len()) % routes.len()];
        let mut weight = 11 + (seq as u32 * 37) % 80;
        if weight == weights[route] {
            weight += 1;
        }
        weights[route] = weight;
        let mut pending: HashSet<usize> = world.subscribers(route).into_iter().collect();
        let proxies = pending.len();
        let mut change = Change {
            class: *class,
            route,
            weight,
            proxies,
            latencies: Vec::with_capacity(proxies),
            all_received: None,
            all_acked: None,
            server_acked: None,
            server_total: 0,
            counting: Duration::ZERO,
            counts: 0,
            window: Duration::ZERO,
            server_cpu: 0.0,
            server_ticks: 0.0,
            driver_cpu: 0.0,
            driver_busy: None,
        };
        let mut driver_at_received = None;
        marks.push((procfs::thread_times(&pid), procfs::thread_times("self"), Instant::now()));
        let sent = Instant::now();
        next_start = sent + spacing;
        server.commands.write_all(format!("route {seq} {route} {weight}\n").as_bytes()).await?;
        server.commands.flush().await?;
        let deadline = tokio::time::Instant::from_std(sent + CHANGE_TIMEOUT);
        let acked_prefix = format!("acked {seq} ");
        while !pending.is_empty() || change.all_acked.is_none() {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Update { proxy, route: r, weight: w, at, .. }) => {
                        if r == route && w == Some(weight) && pending.remove(&proxy) {
                            change.latencies.push(at.saturating_duration_since(sent));
                            if pending.is_empty() {
                                change.all_received = Some(sent.elapsed());
                                driver_at_received = Some(procfs::thread_times("self"));
                            }
                        }
                    }
                    Some(Event::Failed(p, error)) => anyhow::bail!("proxy {p} failed during the changes: {error}"),
                    Some(Event::Ready) => {}
                    None => anyhow::bail!("every proxy task ended"),
                },
                line = server.lines.recv() => {
                    let line = line.context("the server exited")?;
                    if let Some(rest) = line.strip_prefix(&acked_prefix) {
                        change.all_acked = Some(sent.elapsed());
                        let fields: Vec<&str> = rest.split_whitespace().collect();
                        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
                        change.server_total = number(0).unwrap_or(0) as usize;
                        change.server_acked = number(2).map(Duration::from_micros);
                        change.counting = Duration::from_micros(number(3).unwrap_or(0));
                        change.counts = number(4).unwrap_or(0);
                        if change.server_acked.is_none() {
                            eprintln!("discovery_scale: change {seq}: the server saw no full ack: {line}");
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    eprintln!("discovery_scale: change {seq} timed out: {} proxies never got it", pending.len());
                    break;
                }
            }
        }
        eprintln!(
            "discovery_scale: change {seq} ({}%: route {route} → v1 {weight}%): {proxies} proxies, last received {}, all acked {}",
            class.percent(),
            super::report::ms(change.all_received),
            super::report::ms(change.all_acked)
        );
        let driver_at_command = &marks[marks.len() - 1].1;
        change.driver_busy = driver_at_received
            .zip(change.all_received)
            .map(|(at, elapsed)| at.since(driver_at_command) / elapsed.as_secs_f64().max(1e-6));
        results.push(change);
    }
    // The last change's window ends as the others do: SPACING after its command, or once acked.
    tokio::time::sleep_until(tokio::time::Instant::from_std(next_start)).await;
    marks.push((procfs::thread_times(&pid), procfs::thread_times("self"), Instant::now()));
    for (change, window) in results.iter_mut().zip(marks.windows(2)) {
        let [(server_a, driver_a, a), (server_b, driver_b, b)] = window else { continue };
        change.window = b.saturating_duration_since(*a);
        change.server_cpu = server_b.since(server_a);
        change.server_ticks = server_b.ticks_since(server_a);
        change.driver_cpu = driver_b.since(driver_a);
    }
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = procfs::cpu_seconds(&pid) - phase_server;
    let driver_cpu = procfs::cpu_seconds("self") - phase_driver;
    let (machine_after, steal_after) = procfs::machine();
    Ok(Changes {
        results,
        server_idle_rate,
        driver_idle_rate,
        seconds,
        server_cpu,
        driver_cpu,
        other_cpu: ((machine_after - machine_before) - server_cpu - driver_cpu).max(0.0),
        steal: steal_after - steal_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changes_cycle_over_the_classes_and_reach_their_share_of_the_proxies() {
        let world = World { pods: 12_000, services: 2000, routes: 300, namespaces: 50, proxies: 10_000 };
        let classes: Vec<(Class, usize, usize)> = schedule(&world)
            .expect("a schedule")
            .iter()
            .map(|(class, routes)| (*class, routes[0], routes.len()))
            .collect();
        assert_eq!(classes, [(Class::All, 0, 1), (Class::Wide, 1, 10), (Class::Narrow, 11, 100)]);
        for (route, share) in [(0, 10_000), (1, 1000), (10, 1000), (11, 100), (110, 100)] {
            assert_eq!(world.subscribers(route).len(), share, "route-{route}");
        }

        let small = World { proxies: 300, ..world };
        let narrow = &schedule(&small).expect("a schedule")[2].1;
        assert_eq!(narrow.len(), 30, "with 300 proxies, 30 of the 1% routes have a subscriber");
        assert!(narrow.iter().all(|&r| !small.subscribers(r).is_empty()));
    }
}
