//! The driver: a CA, the server child, PROXIES simulated proxies, the route changes, the report.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use braid_api::config::ServiceConfig;
use braid_api::discovery::{self as api, Ack, ControlMessage, Hello, LineReader, ProxyMessage, Resource};
use braid_operator::identity::authority::{Authority, AuthoritySource};
use braid_operator::identity::ca::{self, Settings, Source, Stored};
use braid_operator::identity::csr::{CheckedCsr, spiffe_id};
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::procfs::{self, ProcStats};
use crate::server::Phases;
use crate::world::{self, HOT, INITIAL_WEIGHT, ProxySpec, World};

/// The discovery server's targets at 1,000 proxies: p99 propagation under 1 s, RSS under 300 MiB.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_RSS_MIB: f64 = 300.0;
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

enum Event {
    /// The proxy has its first answer for every subscription.
    Ready,
    /// A destination update for hot route `route` carrying v1 weight `weight`, received at `at`.
    Update {
        proxy: usize,
        route: usize,
        weight: Option<u32>,
        at: Instant,
    },
    Failed(usize, String),
}

struct Change {
    route: usize,
    weight: u32,
    proxies: usize,
    /// Per proxy: from the command to the update's arrival.
    latencies: Vec<Duration>,
    /// From the command until the last subscribed proxy had the update.
    all_received: Option<Duration>,
    /// From the command until the driver read the server's "every proxy acked" line.
    all_acked: Option<Duration>,
    /// The same, on the server's clock (from reading the command).
    server_acked: Option<Duration>,
    server_total: usize,
}

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

    // The mesh CA, as the operator makes it: a trust anchor and an issuer under it.
    let now = unix_now();
    let settings = Settings {
        trust_anchor_lifetime: Duration::from_secs(365 * 86400),
        issuer_lifetime: Duration::from_secs(30 * 86400),
        workload_lifetime: Duration::from_secs(86400),
        propagation: Duration::from_secs(60),
    };
    let plan = ca::plan(now, &Stored::default(), &Source::Generate, &settings, None);
    let stored = ca::apply(now, &Stored::default(), &plan, &Source::Generate, &settings)?;
    let issuer = stored.issuer.clone().context("the CA made no issuer")?;
    let bundle = ca::bundle(&stored);
    let ca_dir = std::env::temp_dir().join(format!("braid-discovery-scale-{}", std::process::id()));
    std::fs::create_dir_all(&ca_dir)?;
    std::fs::write(ca_dir.join("issuer.crt"), &issuer.cert_pem)?;
    std::fs::write(ca_dir.join("issuer.key"), &issuer.key_pem)?;
    std::fs::write(ca_dir.join("bundle.crt"), &bundle)?;
    let authority = Authority::new(AuthoritySource {
        issuer,
        bundle_pem: bundle.clone(),
        trust_domain: world::TRUST_DOMAIN.to_owned(),
        workload_lifetime: settings.workload_lifetime,
    })?;

    // The server child.
    let exe = std::env::current_exe()?;
    let mut command = match &args.server_cpus {
        Some(cpus) => {
            let mut command = tokio::process::Command::new("taskset");
            command.args(["-c", cpus]).arg(exe);
            command
        }
        None => tokio::process::Command::new(exe),
    };
    let mut child = command
        .arg("server")
        .args(["--pods", &world.pods.to_string(), "--services", &world.services.to_string()])
        .args(["--routes", &world.routes.to_string(), "--namespaces", &world.namespaces.to_string()])
        .args(["--proxies", &world.proxies.to_string()])
        .arg("--ca-dir")
        .arg(&ca_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server process")?;
    let server_pid = child.id().context("the server exited at once")?.to_string();
    let mut commands = child.stdin.take().context("server stdin")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = expect_line(&mut lines, "ready ", Duration::from_secs(120)).await?;
    let (addr, phases) = ready.split_once(' ').context("ready ADDR JSON")?;
    let addr: SocketAddr = addr.parse()?;
    let phases: Phases = serde_json::from_str(phases)?;
    let _ = std::fs::remove_dir_all(&ca_dir);
    eprintln!(
        "discovery_scale: server {server_pid} on {addr}: index of {} pods built in {:.2} s, RSS {:.1} MiB",
        world.pods,
        phases.index_build_seconds,
        mib(phases.serving.vm_rss_kib)
    );

    // Workload certificates, one per service account, issued by the same authority.
    let roots = Arc::new(roots_from_pem(&bundle)?);
    let mut configs: HashMap<(String, String), Arc<rustls::ClientConfig>> = HashMap::new();
    let specs: Vec<ProxySpec> = (0..world.proxies).map(|p| world.proxy(p)).collect();
    for spec in &specs {
        let identity = (spec.namespace.clone(), spec.service_account.clone());
        if configs.contains_key(&identity) {
            continue;
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = CheckedCsr {
            uri: spiffe_id(world::TRUST_DOMAIN, &identity.0, &identity.1),
            public_key_der: rcgen::PublicKeyData::subject_public_key_info(&key),
        };
        let issued = authority.issue(unix_now(), &csr)?;
        let chain: Vec<CertificateDer<'static>> = ca::certs(&issued.certificate_pem)
            .and_then(|leaf| Ok(leaf.into_iter().chain(ca::certs(authority.chain_pem())?)))
            .map_err(anyhow::Error::msg)?
            .map(|cert| CertificateDer::from(cert.der))
            .collect();
        configs.insert(identity, Arc::new(client_config(chain, key.serialize_der(), roots.clone())?));
    }

    // Connect every proxy.
    let before_connect = stats(&mut commands, &mut lines).await?;
    let (machine_before, steal_before) = procfs::machine();
    let driver_before = procfs::cpu_seconds("self");
    let shutdown = CancellationToken::new();
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let handshakes = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_started = Instant::now();
    for (p, spec) in specs.iter().enumerate() {
        let identity = (spec.namespace.clone(), spec.service_account.clone());
        let config = configs.get(&identity).context("a certificate per identity")?.clone();
        let (spec, events, handshakes, shutdown) =
            (spec.clone(), events_tx.clone(), handshakes.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = proxy(p, spec, config, addr, &events, handshakes, shutdown).await {
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
            Ok(Some(Event::Ready)) => ready += 1,
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    while events.try_recv().is_ok() {}
    let connected = stats(&mut commands, &mut lines).await?;

    // Change routes, one at a time, and time each.
    let mut weights = [INITIAL_WEIGHT; HOT];
    let mut results: Vec<Change> = Vec::new();
    let changes_cpu_before = procfs::cpu_seconds(&server_pid);
    let driver_changes_before = procfs::cpu_seconds("self");
    let (machine_before, steal_before) = procfs::machine();
    let changes_started = Instant::now();
    let mut next_start = Instant::now();
    for seq in 0..args.changes {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next_start)).await;
        let route = seq % HOT;
        let mut weight = 11 + (seq as u32 * 37) % 80;
        if weight == weights[route] {
            weight += 1;
        }
        weights[route] = weight;
        let mut pending: HashSet<usize> = world.subscribers(route).into_iter().collect();
        let proxies = pending.len();
        let mut change = Change {
            route,
            weight,
            proxies,
            latencies: Vec::with_capacity(proxies),
            all_received: None,
            all_acked: None,
            server_acked: None,
            server_total: 0,
        };
        let sent = Instant::now();
        next_start = sent + Duration::from_millis(args.spacing_ms);
        commands.write_all(format!("route {seq} {route} {weight}\n").as_bytes()).await?;
        commands.flush().await?;
        let deadline = tokio::time::Instant::from_std(sent + CHANGE_TIMEOUT);
        let acked_prefix = format!("acked {seq} ");
        while !pending.is_empty() || change.all_acked.is_none() {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Update { proxy, route: r, weight: w, at }) => {
                        if r == route && w == Some(weight) && pending.remove(&proxy) {
                            change.latencies.push(at.saturating_duration_since(sent));
                            if pending.is_empty() {
                                change.all_received = Some(sent.elapsed());
                            }
                        }
                    }
                    Some(Event::Failed(p, error)) => anyhow::bail!("proxy {p} failed during the changes: {error}"),
                    Some(Event::Ready) => {}
                    None => anyhow::bail!("every proxy task ended"),
                },
                line = lines.recv() => {
                    let line = line.context("the server exited")?;
                    if let Some(rest) = line.strip_prefix(&acked_prefix) {
                        change.all_acked = Some(sent.elapsed());
                        let fields: Vec<&str> = rest.split_whitespace().collect();
                        change.server_total = fields.first().and_then(|f| f.parse().ok()).unwrap_or(0);
                        change.server_acked =
                            fields.get(2).and_then(|f| f.parse().ok()).map(Duration::from_micros);
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
            "discovery_scale: change {seq} (route {route} → v1 {weight}%): {proxies} proxies, last received {}, all acked {}",
            ms(change.all_received),
            ms(change.all_acked)
        );
        results.push(change);
    }
    let changes_seconds = changes_started.elapsed().as_secs_f64();
    let server_changes_cpu = procfs::cpu_seconds(&server_pid) - changes_cpu_before;
    let driver_changes_cpu = procfs::cpu_seconds("self") - driver_changes_before;
    let (machine_after, steal_after) = procfs::machine();
    let changes_other = (machine_after - machine_before) - server_changes_cpu - driver_changes_cpu;
    let changes_steal = steal_after - steal_before;
    let after = stats(&mut commands, &mut lines).await?;
    let driver = procfs::process("self");

    shutdown.cancel();
    drop(commands);
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        child.kill().await?;
    }

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
        changes_seconds,
        server_changes_cpu,
        driver_changes_cpu,
        changes_other,
        changes_steal,
        results,
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

/// One simulated proxy: connect, hello, subscribe, ack everything, report hot-route updates.
async fn proxy(
    p: usize,
    spec: ProxySpec,
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    events: &mpsc::UnboundedSender<Event>,
    handshakes: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permit = handshakes.acquire_owned().await?;
    let tcp = tokio::net::TcpStream::connect(addr).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(world::SERVER_NAME)?, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tls))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    let (lines, outgoing) = mpsc::unbounded_channel::<Bytes>();
    let send = |message: &ProxyMessage| {
        let _ = lines.send(Bytes::from(api::encode(message)));
    };
    send(&ProxyMessage::Hello(Hello {
        pod_namespace: spec.namespace.clone(),
        pod_name: spec.pod.clone(),
        proxy_version: "bench".to_owned(),
    }));
    for (destination, _) in &spec.destinations {
        send(&ProxyMessage::Subscribe(Resource::Destination(destination.clone())));
    }
    send(&ProxyMessage::Subscribe(Resource::Inbound));
    let body = StreamBody::new(Box::pin(futures::stream::unfold(outgoing, |mut outgoing| async move {
        outgoing.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), outgoing))
    })));
    let request = hyper::Request::post(format!("https://{}{}", world::SERVER_NAME, api::PATH))
        .header(hyper::header::CONTENT_TYPE, api::CONTENT_TYPE)
        .body(body)?;
    let response = sender.send_request(request).await.context("the discovery request")?;
    anyhow::ensure!(response.status() == hyper::StatusCode::OK, "the server answered {}", response.status());
    drop(permit);

    let hot: HashMap<&str, usize> =
        spec.destinations.iter().filter_map(|(d, route)| Some((d.as_str(), (*route)?))).collect();
    let mut waiting: HashSet<Resource> =
        spec.destinations.iter().map(|(d, _)| Resource::Destination(d.clone())).collect();
    waiting.insert(Resource::Inbound);
    let mut body = response.into_body();
    let mut reader = LineReader::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = shutdown.cancelled() => return Ok(()),
        };
        let at = Instant::now();
        let Some(frame) = frame else { anyhow::bail!("the server ended the stream") };
        let Ok(data) = frame?.into_data() else { continue };
        reader.push(&data)?;
        while let Some(message) = reader.next::<ControlMessage>() {
            let (resource, version) = match message? {
                ControlMessage::Destination(update) => {
                    if let Some(&route) = hot.get(update.destination.as_str()) {
                        let weight = update.service.as_ref().and_then(v1_weight);
                        let _ = events.send(Event::Update { proxy: p, route, weight, at });
                    }
                    (Resource::Destination(update.destination), update.version)
                }
                ControlMessage::Inbound(update) => (Resource::Inbound, update.version),
                ControlMessage::Refused(refusal) => anyhow::bail!("refused: {refusal:?}"),
            };
            if waiting.remove(&resource) && waiting.is_empty() {
                let _ = events.send(Event::Ready);
            }
            send(&ProxyMessage::Ack(Ack { resource, version }));
        }
    }
}

/// The mesh roots of a PEM bundle, as a proxy trusts them.
fn roots_from_pem(bundle: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca::certs(bundle).map_err(anyhow::Error::msg)? {
        roots.add(CertificateDer::from(cert.der))?;
    }
    Ok(roots)
}

/// What a proxy connects to the discovery server with: TLS 1.3, its workload certificate as the
/// client certificate, the server's checked against the mesh roots, HTTP/2.
fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key_pkcs8: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key_pkcs8.into()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The weight of the `-v1` backend in the route's rule (not the default route).
fn v1_weight(service: &ServiceConfig) -> Option<u32> {
    service
        .routes
        .iter()
        .filter(|r| r.name.as_deref() != Some("default"))
        .flat_map(|r| &r.backends)
        .find(|b| b.name.ends_with("-v1"))
        .map(|b| b.weight)
}

async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    prefix: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .with_context(|| format!("no {prefix:?} line from the server in {wait:?}"))?
            .context("the server exited")?;
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_owned());
        }
    }
}

async fn stats(
    commands: &mut tokio::process::ChildStdin,
    lines: &mut mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<ProcStats> {
    commands.write_all(b"stats\n").await?;
    commands.flush().await?;
    Ok(serde_json::from_str(&expect_line(lines, "stats ", Duration::from_secs(30)).await?)?)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

struct Report<'a> {
    world: World,
    args: &'a Args,
    phases: Phases,
    before_connect: ProcStats,
    connected: ProcStats,
    after: ProcStats,
    driver: ProcStats,
    connect_seconds: f64,
    server_connect_cpu: f64,
    driver_connect_cpu: f64,
    connect_other: f64,
    connect_steal: f64,
    changes_seconds: f64,
    server_changes_cpu: f64,
    driver_changes_cpu: f64,
    changes_other: f64,
    changes_steal: f64,
    results: Vec<Change>,
    rustc: (usize, usize),
    load: (String, String),
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let w = &self.world;
        let p = &self.phases;
        let mut all: Vec<Duration> = self.results.iter().flat_map(|c| c.latencies.iter().copied()).collect();
        all.sort();
        let missing: usize = self.results.iter().map(|c| c.proxies - c.latencies.len()).sum();
        let acked: Vec<Duration> = {
            let mut v: Vec<Duration> = self.results.iter().filter_map(|c| c.all_acked).collect();
            v.sort();
            v
        };
        let unacked = self.results.iter().filter(|c| c.server_acked.is_none()).count();
        let p99 = percentile(&all, 0.99);
        let rss_peak = mib(self.after.vm_hwm_kib);
        let pass = |ok: bool| if ok { "**PASS**" } else { "**MISS**" };
        let at_target = w.proxies >= 1000;
        let delta = |a: &ProcStats, b: &ProcStats| (a.rss_anon_kib as f64 - b.rss_anon_kib as f64) * 1024.0;

        let mut s = String::new();
        let _ = writeln!(s, "# Discovery at scale\n");
        let _ = writeln!(
            s,
            "{} proxies · {} pods · {} Services ({} MeshRoutes) · {} namespaces · {} changes, {} ms apart{}\n",
            w.proxies,
            w.pods,
            w.services,
            w.routes,
            w.namespaces,
            self.args.changes,
            self.args.spacing_ms,
            if self.args.label.is_empty() { String::new() } else { format!(" · {}", self.args.label) }
        );
        let _ = writeln!(
            s,
            "Machine: load average {} at the start, {} at the end; rustc processes running (other \
             builds) {} at the start, {} at the end. CPU of other processes while measuring: {:.1} \
             core-s during the connect phase ({:.1} s), {:.1} core-s during the changes ({:.1} s); \
             hypervisor steal {:.1} / {:.1} core-s.\n",
            self.load.0,
            self.load.1,
            self.rustc.0,
            self.rustc.1,
            self.connect_other.max(0.0),
            self.connect_seconds,
            self.changes_other.max(0.0),
            self.changes_seconds,
            self.connect_steal,
            self.changes_steal,
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target (at 1,000 proxies) | measured | |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| p99 propagation under 1 s (per proxy, every change) | {} | {} |",
            ms(p99),
            if at_target {
                pass(p99.is_some_and(|p| p < TARGET_P99) && missing == 0)
            } else {
                "(not at 1,000 proxies)"
            }
        );
        let _ = writeln!(
            s,
            "| every subscribed proxy acked, slowest change, under 1 s | {} | {} |",
            ms(acked.last().copied()),
            if at_target {
                pass(
                    acked.last().is_some_and(|a| *a < TARGET_P99)
                        && unacked == 0
                        && acked.len() == self.results.len(),
                )
            } else {
                "(not at 1,000 proxies)"
            }
        );
        let _ = writeln!(
            s,
            "| operator RSS under 300 MiB (peak, VmHWM) | {rss_peak:.1} MiB | {} |\n",
            if at_target { pass(rss_peak < TARGET_RSS_MIB) } else { "(not at 1,000 proxies)" }
        );

        let _ = writeln!(s, "## Propagation (MeshRoute change → proxies)\n");
        let _ = writeln!(
            s,
            "Over all changes, per proxy ({} updates{}): p50 {}, p90 {}, p99 {}, max {}. Every subscribed \
             proxy acked (the server's Programmed count reached total): median {}, max {}.\n",
            all.len(),
            if missing > 0 { format!(", **{missing} never arrived**") } else { String::new() },
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.9)),
            ms(p99),
            ms(all.last().copied()),
            ms(percentile(&acked, 0.5)),
            ms(acked.last().copied()),
        );
        let _ = writeln!(
            s,
            "| change | route | proxies | p50 | p99 | max (last received) | all acked (driver) | all acked (server clock) |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, c) in self.results.iter().enumerate() {
            let mut l = c.latencies.clone();
            l.sort();
            let _ = writeln!(
                s,
                "| {i} | route-{} → v1 {}% | {}{} | {} | {} | {} | {} | {} |",
                c.route,
                c.weight,
                c.proxies,
                if c.server_total != c.proxies {
                    format!(" (server counted {})", c.server_total)
                } else {
                    String::new()
                },
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.99)),
                ms(c.all_received),
                ms(c.all_acked),
                ms(c.server_acked),
            );
        }
        for fanout in [true, false] {
            let mut l: Vec<Duration> = self
                .results
                .iter()
                .filter(|c| (c.route == 0) == fanout)
                .flat_map(|c| c.latencies.iter().copied())
                .collect();
            l.sort();
            let mut a: Vec<Duration> = self
                .results
                .iter()
                .filter(|c| (c.route == 0) == fanout)
                .filter_map(|c| c.all_acked)
                .collect();
            a.sort();
            let _ = writeln!(
                s,
                "{}: per proxy p50 {}, p99 {}, max {}; all acked median {}, max {}.",
                if fanout {
                    "\nChanges to route-0 (every proxy subscribes)"
                } else {
                    "Changes to routes 1–9 (1/9 of the proxies each)"
                },
                ms(percentile(&l, 0.5)),
                ms(percentile(&l, 0.99)),
                ms(l.last().copied()),
                ms(percentile(&a, 0.5)),
                ms(a.last().copied()),
            );
        }

        let _ = writeln!(s, "\n## Server memory (VmRSS / RssAnon)\n");
        let _ = writeln!(s, "| phase | VmRSS | RssAnon | step (RssAnon) |\n|---|---|---|---|");
        let policies = w.namespaces.min(w.services - 2 * w.routes);
        let rows: Vec<(String, &ProcStats, Option<&ProcStats>)> = vec![
            ("empty (process started)".into(), &p.empty, None),
            (format!("+ {} pods", w.pods), &p.pods, Some(&p.empty)),
            (format!("+ {} Services", w.services), &p.services, Some(&p.pods)),
            (format!("+ {} EndpointSlices", w.services), &p.slices, Some(&p.services)),
            (
                format!("+ {} MeshRoutes, {policies} MeshPolicies", w.routes),
                &p.routes_policies,
                Some(&p.slices),
            ),
            ("+ the watches' relist key sets".into(), &p.relist_keys, Some(&p.routes_policies)),
            ("serving (runtime, TLS), no proxy".into(), &p.serving, Some(&p.relist_keys)),
            ("just before connecting".into(), &self.before_connect, Some(&p.serving)),
            (
                format!("{} proxies connected and subscribed", w.proxies),
                &self.connected,
                Some(&self.before_connect),
            ),
            (format!("after {} changes", self.results.len()), &self.after, Some(&self.connected)),
        ];
        for (name, stats, base) in rows {
            let _ = writeln!(
                s,
                "| {name} | {:.1} MiB | {:.1} MiB | {} |",
                mib(stats.vm_rss_kib),
                mib(stats.rss_anon_kib),
                base.map_or_else(String::new, |b| format!("{:+.1} MiB", delta(stats, b) / 1048576.0)),
            );
        }
        let _ = writeln!(s, "\nPeak (VmHWM) {rss_peak:.1} MiB. Threads: {}.\n", self.after.threads);
        let index_bytes = delta(&p.relist_keys, &p.empty);
        let _ = writeln!(
            s,
            "Per pod: the pods step is {:.0} bytes per pod (key, service account, labels); the whole \
             index with its relist keys is {:.0} bytes per pod ({:.1} MiB for {} pods, {} Services). \
             Per connected proxy: {:.1} KiB (connection, TLS and HTTP/2 buffers, stream task, \
             registry entry, its share of the memoized snapshots). RSS steps are upper bounds: \
             they include malloc's headers and free space.\n",
            delta(&p.pods, &p.empty) / w.pods as f64,
            index_bytes / w.pods as f64,
            index_bytes / 1048576.0,
            w.pods,
            w.services,
            delta(&self.connected, &self.before_connect) / 1024.0 / w.proxies as f64,
        );

        let _ = writeln!(s, "## CPU (utime + stime)\n");
        let _ = writeln!(
            s,
            "| phase | wall | server | driver (simulated proxies) | other processes |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| connect {} proxies (TLS 1.3 handshakes, hello, 6 subscriptions each) | {:.1} s | {:.2} s ({:.2} ms per proxy) | {:.2} s | {:.1} s |",
            w.proxies,
            self.connect_seconds,
            self.server_connect_cpu,
            self.server_connect_cpu * 1000.0 / w.proxies as f64,
            self.driver_connect_cpu,
            self.connect_other.max(0.0),
        );
        let updates: usize = self.results.iter().map(|c| c.proxies).sum();
        let _ = writeln!(
            s,
            "| {} changes ({updates} proxy updates) | {:.1} s | {:.2} s ({:.1} ms per change, {:.0} µs per proxy update) | {:.2} s | {:.1} s |",
            self.results.len(),
            self.changes_seconds,
            self.server_changes_cpu,
            self.server_changes_cpu * 1000.0 / self.results.len().max(1) as f64,
            self.server_changes_cpu * 1e6 / updates.max(1) as f64,
            self.driver_changes_cpu,
            self.changes_other.max(0.0),
        );
        let _ = writeln!(
            s,
            "\nThe driver process (all simulated proxies) peaked at {:.1} MiB VmRSS.",
            mib(self.driver.vm_hwm_kib)
        );
        s
    }
}
