//! The rollouts phase, driver side: turns the proxies' traffic on (so they report), asks the
//! server to start ROLLOUTS canary rollouts (rollouts.rs at the example's root runs them with
//! the operator's code), and measures, for every weight step the server applied, how long until
//! every subscription of every proxy calling that route had it; the server's CPU per interval
//! and memory; which rollouts finished how, and when.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use super::server_child::ServerChild;
use super::sim_proxy::Event;
use super::traffic::Traffic;
use crate::Args;
use crate::procfs::{self, ProcStats};
use crate::rollouts::wall_micros;
use crate::world::ProxySpec;

/// Every rollout has finished well before this at the default settings (4 steps of 3 s).
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// After the last rollout ended, how long the last steps may take to reach every proxy.
const GRACE: Duration = Duration::from_secs(30);

/// One weight step of one rollout.
pub struct Step {
    pub route: usize,
    /// The canary's weight.
    pub weight: i32,
    pub subscriptions: usize,
    /// Per subscription that got it: from the server applying it to the update's arrival.
    pub latencies: Vec<Duration>,
    /// From the server applying it until the last subscription had it.
    pub all_received: Option<Duration>,
}

pub struct Rollouts {
    /// Rollouts the server started.
    pub started: usize,
    pub interval: String,
    pub per_second: u64,
    pub steps: Vec<Step>,
    /// Per finished rollout: its route, phase and time from the start.
    pub ended: Vec<(usize, String, Duration)>,
    /// The server's CPU seconds in each interval while rollouts ran.
    pub interval_cpu: Vec<f64>,
    pub before: ProcStats,
    pub after: ProcStats,
    pub seconds: f64,
    pub server_cpu: f64,
    pub driver_cpu: f64,
    /// CPU of every other process on the machine during the phase, core-seconds.
    pub other_cpu: f64,
    /// Report messages the proxies sent.
    pub reports: u64,
}

/// The driver's Instant of a time the server printed (microseconds since the epoch): both
/// processes read the same clock.
fn instant_of(wall: u128) -> Instant {
    let (now, now_wall) = (Instant::now(), wall_micros());
    let ago = Duration::from_micros(u64::try_from(now_wall.saturating_sub(wall)).unwrap_or(u64::MAX));
    now.checked_sub(ago).unwrap_or(now)
}

/// First arrival per (route, v1 weight) and subscription (proxy, destination index).
type Arrivals = HashMap<(usize, u32), HashMap<(usize, usize), Instant>>;

fn field<T: std::str::FromStr>(fields: &[&str], i: usize, line: &str) -> anyhow::Result<T> {
    fields.get(i).and_then(|f| f.parse().ok()).with_context(|| format!("unreadable server line {line:?}"))
}

pub async fn run(
    server: &mut ServerChild,
    events: &mut mpsc::UnboundedReceiver<Event>,
    specs: &[ProxySpec],
    args: &Args,
    traffic: &Traffic,
) -> anyhow::Result<Rollouts> {
    let mut subscriptions: HashMap<usize, usize> = HashMap::new();
    for spec in specs {
        for route in spec.destinations.iter().filter_map(|(_, route)| *route) {
            *subscriptions.entry(route).or_default() += 1;
        }
    }
    while events.try_recv().is_ok() {}
    let before = server.stats().await?;
    let driver_before = procfs::cpu_seconds("self");
    let server_before = procfs::cpu_seconds(&server.pid);
    let (machine_before, _) = procfs::machine();
    traffic.on.store(true, Ordering::Relaxed);
    let reports_before = traffic.reports.load(Ordering::Relaxed);
    let started_at = Instant::now();
    server
        .commands
        .write_all(format!("rollouts {} {}\n", args.rollouts, args.rollout_interval).as_bytes())
        .await?;
    server.commands.flush().await?;

    let mut arrivals: Arrivals = HashMap::new();
    let mut applied: Vec<(usize, i32, Instant)> = Vec::new();
    let mut ended = Vec::new();
    let mut stats: Vec<ProcStats> = Vec::new();
    let (mut started, mut start) = (0, started_at);
    let mut done: Option<Instant> = None;
    let deadline = tokio::time::Instant::from_std(started_at + PHASE_TIMEOUT);
    let complete = |arrivals: &Arrivals, applied: &[(usize, i32, Instant)]| {
        applied.iter().all(|(route, weight, _)| {
            let v1 = u32::try_from(100 - weight).unwrap_or(0);
            arrivals.get(&(*route, v1)).map_or(0, HashMap::len)
                >= subscriptions.get(route).copied().unwrap_or(0)
        })
    };
    loop {
        let grace = done.map_or(deadline, |done| tokio::time::Instant::from_std(done + GRACE));
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Update { proxy, subscription, route, weight: Some(weight), at }) => {
                    arrivals.entry((route, weight)).or_default().entry((proxy, subscription)).or_insert(at);
                }
                Some(Event::Failed(p, error)) => anyhow::bail!("proxy {p} failed during the rollouts: {error}"),
                Some(_) => {}
                None => anyhow::bail!("every proxy task ended"),
            },
            line = server.lines.recv() => {
                let line = line.context("the server exited")?;
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.first().copied() {
                    Some("rollout-start") => {
                        started = field(&fields, 1, &line)?;
                        start = instant_of(field(&fields, 2, &line)?);
                        eprintln!("discovery_scale: {started} rollouts started");
                    }
                    Some("rollout-step") => applied.push((
                        field(&fields, 1, &line)?,
                        field(&fields, 2, &line)?,
                        instant_of(field(&fields, 3, &line)?),
                    )),
                    Some("rollout-end") => {
                        let at = instant_of(field(&fields, 3, &line)?);
                        let phase = fields.get(2).copied().unwrap_or_default().to_owned();
                        ended.push((field(&fields, 1, &line)?, phase, at.saturating_duration_since(start)));
                    }
                    Some("rollout-stats") => {
                        let json = line.splitn(3, ' ').nth(2).context("rollout-stats WALL JSON")?;
                        stats.push(serde_json::from_str(json)?);
                    }
                    Some("rollout-done") => {
                        eprintln!("discovery_scale: every rollout ended; {} weight steps", applied.len());
                        done = Some(Instant::now());
                    }
                    _ => {}
                }
            }
            // Once every rollout ended, the grace period runs out on its own: no update may come.
            () = tokio::time::sleep_until(grace.min(deadline)) => {
                if grace >= deadline {
                    eprintln!("discovery_scale: the rollouts phase timed out ({} of {started} ended)", ended.len());
                    break;
                }
            }
        }
        if let Some(done) = done
            && (done.elapsed() >= GRACE || complete(&arrivals, &applied))
        {
            break;
        }
    }
    let seconds = started_at.elapsed().as_secs_f64();
    traffic.on.store(false, Ordering::Relaxed);
    let server_cpu = procfs::cpu_seconds(&server.pid) - server_before;
    let driver_cpu = procfs::cpu_seconds("self") - driver_before;
    let (machine_after, _) = procfs::machine();
    let other_cpu = (machine_after - machine_before - server_cpu - driver_cpu).max(0.0);
    let reports = traffic.reports.load(Ordering::Relaxed) - reports_before;
    let after = server.stats().await?;

    let steps = applied
        .into_iter()
        .map(|(route, weight, at)| {
            let v1 = u32::try_from(100 - weight).unwrap_or(0);
            let mut latencies: Vec<Duration> = arrivals
                .get(&(route, v1))
                .map(|got| got.values().map(|t| t.saturating_duration_since(at)).collect())
                .unwrap_or_default();
            latencies.sort();
            let subscriptions = subscriptions.get(&route).copied().unwrap_or(0);
            let all_received =
                (latencies.len() >= subscriptions).then(|| latencies.last().copied()).flatten();
            Step { route, weight, subscriptions, latencies, all_received }
        })
        .collect();
    let interval_cpu = stats.windows(2).map(|w| w[1].cpu_seconds - w[0].cpu_seconds).collect();
    Ok(Rollouts {
        started,
        interval: args.rollout_interval.clone(),
        per_second: traffic.per_second,
        steps,
        ended,
        interval_cpu,
        before,
        after,
        seconds,
        server_cpu,
        driver_cpu,
        other_cpu,
        reports,
    })
}
