//! A stand-in for the operator's discovery server, driven by the test: HTTP/2 over mTLS (the
//! proxy's workload certificate verified against the test CA), the wire format of
//! `braid_api::discovery`. It answers subscriptions from a table the test fills, pushes
//! updates, records every message the proxies send, and can end streams or refuse connections.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::large_enum_variant)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_api::config::{PolicyConfig, ServiceConfig};
use braid_api::discovery::{
    self as api, ControlMessage, DestinationUpdate, InboundUpdate, LineReader, ProxyMessage, Refusal,
    Resource,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::identity::Authority;

/// The DNS name of the server's certificate.
pub const SERVER_NAME: &str = "discovery.test";

/// What the server answers to a subscription of a destination.
#[derive(Clone)]
pub enum Answer {
    Service(ServiceConfig),
    /// Not a mesh Service: `service: None`.
    NotMesh,
    Refuse(String),
    /// Nothing at all (the proxy's initialTimeout runs out).
    Silent,
}

type Body = BoxBody<Bytes, Infallible>;

pub struct DiscoveryServer {
    pub addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    answers: Mutex<HashMap<String, Answer>>,
    inbound: Mutex<Option<Option<PolicyConfig>>>,
    version: Mutex<u64>,
    /// Every message received, with the number of the stream it came on.
    pub received: Mutex<Vec<(usize, ProxyMessage)>>,
    /// The SPIFFE id of each stream's client certificate.
    pub client_ids: Mutex<Vec<Option<String>>>,
    /// The open response bodies; cleared by `end_streams`.
    streams: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
    accepting: AtomicBool,
    /// How long to wait before answering a subscription.
    pub answer_delay: Mutex<Duration>,
    /// Asks for reports this often (seconds), as the operator does; None: never, as an older one.
    pub report_interval: Mutex<Option<u64>>,
}

impl DiscoveryServer {
    pub async fn start(authority: &Authority) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (cert_pem, key) = authority.serving_for(SERVER_NAME);
        let mut chain = braid_proxy::identity::tls::parse_pem_certificates(cert_pem.as_bytes());
        chain.extend(braid_proxy::identity::tls::parse_pem_certificates(authority.issuer_pem.as_bytes()));
        let roots =
            Arc::new(braid_proxy::identity::tls::roots_from_pem(authority.root_pem.as_bytes()).unwrap());
        let provider = braid_proxy::identity::tls::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let server = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            tls: Arc::new(tls),
            answers: Mutex::default(),
            inbound: Mutex::default(),
            version: Mutex::new(0),
            received: Mutex::default(),
            client_ids: Mutex::default(),
            streams: Mutex::default(),
            accepting: AtomicBool::new(true),
            answer_delay: Mutex::new(Duration::ZERO),
            report_interval: Mutex::new(None),
        });
        let this = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                if !this.accepting.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let this = this.clone();
                tokio::spawn(async move {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(this.tls.clone()).accept(stream).await
                    else {
                        return;
                    };
                    let client_id = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| braid_api::identity::spiffe_id_of(cert));
                    let service = service_fn(move |request| this.clone().handle(request, client_id.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    /// The answer to future subscriptions of `destination`.
    pub fn set(&self, destination: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(destination.to_owned(), answer);
    }

    pub fn set_inbound(&self, policy: Option<PolicyConfig>) {
        *self.inbound.lock().unwrap() = Some(policy);
    }

    fn next_version(&self) -> u64 {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        *version
    }

    /// Sets the answer and sends it on every open stream now; returns its version.
    pub fn push(&self, destination: &str, answer: Answer) -> u64 {
        self.set(destination, answer.clone());
        let (message, version) = self.message(destination, &answer);
        if let Some(message) = message {
            self.push_raw(&api::encode(&message));
        }
        version
    }

    pub fn push_inbound(&self, policy: Option<PolicyConfig>) -> u64 {
        self.set_inbound(policy.clone());
        let version = self.next_version();
        self.push_raw(&api::encode(&ControlMessage::Inbound(InboundUpdate {
            version,
            policy,
            tracing: None,
        })));
        version
    }

    /// Bytes as they are, on every open stream.
    pub fn push_raw(&self, bytes: &[u8]) {
        let streams = self.streams.lock().unwrap();
        for stream in streams.iter() {
            let _ = stream.send(Bytes::copy_from_slice(bytes));
        }
    }

    /// Ends every open response body (an operator restart, a leader change).
    pub fn end_streams(&self) {
        self.streams.lock().unwrap().clear();
    }

    /// While false, new connections are closed at once (the server is away).
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    pub fn messages(&self) -> Vec<ProxyMessage> {
        self.received.lock().unwrap().iter().map(|(_, message)| message.clone()).collect()
    }

    /// Every report received, in order.
    pub fn reports(&self) -> Vec<api::Report> {
        self.messages()
            .into_iter()
            .filter_map(|m| match m {
                ProxyMessage::Report(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    pub fn hellos(&self) -> usize {
        self.messages().iter().filter(|m| matches!(m, ProxyMessage::Hello(_))).count()
    }

    pub fn subscriptions_of(&self, destination: &str) -> usize {
        let wanted = ProxyMessage::Subscribe(Resource::Destination(destination.to_owned()));
        self.messages().iter().filter(|m| **m == wanted).count()
    }

    pub fn unsubscriptions_of(&self, destination: &str) -> usize {
        let wanted = ProxyMessage::Unsubscribe(Resource::Destination(destination.to_owned()));
        self.messages().iter().filter(|m| **m == wanted).count()
    }

    /// Whether the proxy acked this version of the resource.
    pub fn acked(&self, resource: &Resource, version: u64) -> bool {
        self.messages().iter().any(
            |m| matches!(m, ProxyMessage::Ack(ack) if ack.resource == *resource && ack.version == version),
        )
    }

    /// The reason of the proxy's nack of this version, if it nacked it.
    pub fn nack_reason(&self, resource: &Resource, version: u64) -> Option<String> {
        self.messages().iter().find_map(|m| match m {
            ProxyMessage::Nack(nack) if nack.resource == *resource && nack.version == version => {
                Some(nack.reason.clone())
            }
            _ => None,
        })
    }

    fn message(&self, destination: &str, answer: &Answer) -> (Option<ControlMessage>, u64) {
        let version = self.next_version();
        let update = |service| {
            ControlMessage::Destination(DestinationUpdate {
                destination: destination.to_owned(),
                version,
                service,
            })
        };
        let message = match answer {
            Answer::Service(service) => Some(update(Some(service.clone()))),
            Answer::NotMesh => Some(update(None)),
            Answer::Refuse(reason) => Some(ControlMessage::Refused(Refusal {
                resource: Some(Resource::Destination(destination.to_owned())),
                reason: reason.clone(),
            })),
            Answer::Silent => None,
        };
        (message, version)
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        client_id: Option<String>,
    ) -> Result<Response<Body>, Infallible> {
        if request.method() != http::Method::POST || request.uri().path() != api::PATH {
            let body =
                http_body_util::Full::new(Bytes::from("not here")).map_err(|never| match never {}).boxed();
            return Ok(Response::builder().status(StatusCode::NOT_FOUND).body(body).unwrap());
        }
        let (sender, receiver) = mpsc::unbounded_channel::<Bytes>();
        let number = {
            let mut ids = self.client_ids.lock().unwrap();
            ids.push(client_id);
            ids.len() - 1
        };
        let weak = sender.downgrade();
        self.streams.lock().unwrap().push(sender);
        let this = self.clone();
        let mut body = request.into_body();
        // Weak: once `end_streams` drops the strong sender, the response body ends.
        tokio::spawn(async move {
            let mut reader = LineReader::default();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                reader.push(&data).unwrap();
                while let Some(message) = reader.next::<ProxyMessage>() {
                    let message = message.unwrap();
                    this.received.lock().unwrap().push((number, message.clone()));
                    let ProxyMessage::Subscribe(resource) = message else { continue };
                    let delay = *this.answer_delay.lock().unwrap();
                    let (this, weak) = (this.clone(), weak.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let message = match resource {
                            Resource::Inbound => {
                                let Some(policy) = this.inbound.lock().unwrap().clone() else { return };
                                let version = this.next_version();
                                Some(ControlMessage::Inbound(InboundUpdate {
                                    version,
                                    policy,
                                    tracing: None,
                                }))
                            }
                            Resource::Destination(name) => {
                                let answer = this.answers.lock().unwrap().get(&name).cloned();
                                answer.and_then(|answer| this.message(&name, &answer).0)
                            }
                        };
                        if let (Some(message), Some(sender)) = (message, weak.upgrade()) {
                            let _ = sender.send(Bytes::from(api::encode(&message)));
                        }
                    });
                }
            }
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver)
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let mut response = Response::builder().header(http::header::CONTENT_TYPE, api::CONTENT_TYPE);
        if let Some(seconds) = *self.report_interval.lock().unwrap() {
            response = response.header(api::REPORT_INTERVAL_HEADER, seconds);
        }
        Ok(response.body(StreamBody::new(stream).boxed()).unwrap())
    }
}

use tokio_stream::StreamExt as _;
