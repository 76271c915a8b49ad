//! One simulated proxy: a real discovery client over HTTP/2 and mTLS that subscribes, acks every
//! update, tells the driver when the routes' updates arrive, and reports its traffic when the
//! server asks (traffic.rs).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use braid_api::config::ServiceConfig;
use braid_api::discovery::{self as api, Ack, ControlMessage, Hello, LineReader, ProxyMessage, Resource};
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::traffic::{Calls, Traffic};
use crate::world::{self, ProxySpec};

/// What a simulated proxy tells the driver.
pub enum Event {
    /// The proxy has its first answer for every subscription.
    Ready,
    /// An update of destination `subscription` (its index in the spec), route `route`'s target
    /// Service, carrying v1 weight `weight`, received at `at`.
    Update {
        proxy: usize,
        subscription: usize,
        route: usize,
        weight: Option<u32>,
        at: Instant,
    },
    Failed(usize, String),
}

/// One simulated proxy: connect, hello, subscribe, ack everything, tell route updates, report.
// Each argument is a different thing the task needs; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    p: usize,
    spec: ProxySpec,
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    events: &mpsc::UnboundedSender<Event>,
    handshakes: Arc<Semaphore>,
    traffic: Arc<Traffic>,
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
    // As the real proxy: reports only when the server asks, as often as it says.
    let mut reports = response
        .headers()
        .get(api::REPORT_INTERVAL_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|seconds| {
            let mut ticker = tokio::time::interval(Duration::from_secs(seconds.clamp(1, 300)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
    let mut calls = Calls::default();

    let routes: HashMap<&str, (usize, usize)> = spec
        .destinations
        .iter()
        .enumerate()
        .filter_map(|(i, (d, route))| Some((d.as_str(), (i, (*route)?))))
        .collect();
    let mut waiting: HashSet<Resource> =
        spec.destinations.iter().map(|(d, _)| Resource::Destination(d.clone())).collect();
    waiting.insert(Resource::Inbound);
    let mut body = response.into_body();
    let mut reader = LineReader::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = shutdown.cancelled() => return Ok(()),
            period = async {
                match reports.as_mut() {
                    Some(ticker) => {
                        ticker.tick().await;
                        ticker.period()
                    }
                    None => std::future::pending().await,
                }
            } => {
                for report in calls.reports(&traffic, period) {
                    send(&report);
                }
                continue;
            }
        };
        let at = Instant::now();
        let Some(frame) = frame else { anyhow::bail!("the server ended the stream") };
        let Ok(data) = frame?.into_data() else { continue };
        reader.push(&data)?;
        while let Some(message) = reader.next::<ControlMessage>() {
            let (resource, version) = match message? {
                ControlMessage::Destination(update) => {
                    if let Some(&(subscription, route)) = routes.get(update.destination.as_str()) {
                        let weight = update.service.as_ref().and_then(v1_weight);
                        let _ = events.send(Event::Update { proxy: p, subscription, route, weight, at });
                    }
                    calls.update(&update.destination, update.service.as_ref());
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
