//! The gRPC echo server: `braid.echo.v1.Echo/Echo` (unary), `/EchoStream` (bidirectional: each
//! request message is answered as soon as it arrives), `/EchoRepeat` (server streaming: one
//! request answered a given number of times), and `grpc.health.v1.Health/Check`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::proto::{self, EchoRepeatRequest, EchoReply, EchoRequest};
use super::{
    CONTENT_TYPE, Deframer, ECHO_PATH, HEALTH_PATH, MAX_REPEAT, REPEAT_PATH, STREAM_PATH, Status, code, frame,
};
use crate::body::{self, Body};
use crate::echo::EchoConfig;
use crate::faults::Faults;
use crate::serve::Handler;

pub struct GrpcEcho {
    config: EchoConfig,
    shutting_down: AtomicBool,
}

impl GrpcEcho {
    pub fn new(config: EchoConfig) -> Arc<Self> {
        Arc::new(Self { config, shutting_down: AtomicBool::new(false) })
    }

    pub fn handler(self: &Arc<Self>) -> Handler {
        let server = self.clone();
        Arc::new(move |request, peer| {
            let server = server.clone();
            Box::pin(async move { server.handle(request, peer).await })
        })
    }

    /// From now on the health check answers NOT_SERVING.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if request.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "gRPC calls are POSTs\n");
        }
        let is_grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(CONTENT_TYPE));
        if !is_grpc {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this is a gRPC server: send content-type application/grpc\n",
            );
        }
        let path = request.uri().path().to_owned();
        tracing::debug!(%peer, path, "call");
        let faults = match self.config.faults.with_headers(request.headers()) {
            Ok(faults) => faults,
            Err(err) => return trailers_only(&Status::new(code::INVALID_ARGUMENT, err)),
        };
        let body = request.into_body();
        match path.as_str() {
            ECHO_PATH => self.unary(body, &faults).await,
            STREAM_PATH => self.stream(body, faults),
            REPEAT_PATH => self.repeat(body, &faults).await,
            HEALTH_PATH => {
                let status = if self.shutting_down.load(Ordering::SeqCst) {
                    proto::NOT_SERVING
                } else {
                    proto::SERVING
                };
                match read_messages(body).await {
                    Ok(_) => answer(vec![proto::encode_health(status)], &Status::ok()).await,
                    Err(status) => trailers_only(&status),
                }
            }
            other => trailers_only(&Status::new(code::UNIMPLEMENTED, format!("unknown method {other}"))),
        }
    }

    async fn unary(&self, body: Incoming, faults: &Faults) -> Response<Body> {
        let request = match read_one(body, "a unary call").await.and_then(|message| {
            EchoRequest::decode(&message).map_err(|err| Status::new(code::INVALID_ARGUMENT, err.to_string()))
        }) {
            Ok(request) => request,
            Err(status) => return trailers_only(&status),
        };
        if let Err(status) = inject(faults).await {
            return trailers_only(&status);
        }
        answer(vec![self.reply(request.message, 1).encode()], &Status::ok()).await
    }

    /// EchoRepeat: `count` replies, each sent when the connection takes it (the channel holds a
    /// few), so a long stream neither sits in memory nor outruns a slow client.
    async fn repeat(self: Arc<Self>, body: Incoming, faults: &Faults) -> Response<Body> {
        let request = match read_one(body, "a server-streaming call").await.and_then(|message| {
            EchoRepeatRequest::decode(&message)
                .map_err(|err| Status::new(code::INVALID_ARGUMENT, err.to_string()))
        }) {
            Ok(request) => request,
            Err(status) => return trailers_only(&status),
        };
        if !(1..=MAX_REPEAT).contains(&request.count) {
            let status = Status::new(
                code::INVALID_ARGUMENT,
                format!(
                    "count {} is out of range: EchoRepeat answers 1 to {MAX_REPEAT} times",
                    request.count
                ),
            );
            return trailers_only(&status);
        }
        if let Err(status) = inject(faults).await {
            return trailers_only(&status);
        }
        let (tx, response_body) = body::channel(16);
        tokio::spawn(async move {
            let mut reply = self.reply(request.message, 0);
            for sequence in 1..=u64::from(request.count) {
                reply.sequence = sequence;
                if tx.send(Frame::data(frame(&reply.encode()))).await.is_err() {
                    // The client reset the stream: nobody is left to answer.
                    return;
                }
            }
            let _ = tx.send(Frame::trailers(Status::ok().to_headers())).await;
        });
        grpc_response(response_body)
    }

    fn stream(self: Arc<Self>, mut body: Incoming, faults: Faults) -> Response<Body> {
        let (tx, response_body) = body::channel(16);
        tokio::spawn(async move {
            let status = async {
                inject(&faults).await?;
                let mut deframer = Deframer::default();
                let mut sequence = 0;
                while let Some(frame) = body.frame().await {
                    let frame = frame
                        .map_err(|err| Status::new(code::INTERNAL, format!("reading the request: {err}")))?;
                    let Ok(data) = frame.into_data() else { continue };
                    deframer.push(&data);
                    while let Some(message) = deframer.next_message()? {
                        let request = EchoRequest::decode(&message)
                            .map_err(|err| Status::new(code::INVALID_ARGUMENT, err.to_string()))?;
                        sequence += 1;
                        let reply = self.reply(request.message, sequence).encode();
                        if tx.send(Frame::data(super::frame(&reply))).await.is_err() {
                            // The client reset the stream: nobody is left to answer.
                            return Ok(());
                        }
                    }
                }
                if deframer.is_empty() {
                    Ok(())
                } else {
                    Err(Status::new(code::INTERNAL, "the request stream ended inside a message"))
                }
            }
            .await;
            let status = status.err().unwrap_or_else(Status::ok);
            let _ = tx.send(Frame::trailers(status.to_headers())).await;
        });
        grpc_response(response_body)
    }

    fn reply(&self, message: String, sequence: u64) -> EchoReply {
        EchoReply {
            message,
            name: self.config.name.clone(),
            version: self.config.version.clone(),
            pod: self.config.pod.clone(),
            sequence,
        }
    }
}

/// Sleeps the injected delay, then fails the call with UNAVAILABLE (a code clients retry) if
/// the dice say so.
async fn inject(faults: &Faults) -> Result<(), Status> {
    let outcome = faults.roll();
    if !outcome.delay.is_zero() {
        tokio::time::sleep(outcome.delay).await;
    }
    match outcome.fail {
        Some(_) => Err(Status::new(code::UNAVAILABLE, "injected failure")),
        None => Ok(()),
    }
}

/// Every message of a request whose stream has ended.
async fn read_messages(mut body: Incoming) -> Result<Vec<Bytes>, Status> {
    let mut deframer = Deframer::default();
    let mut messages = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|err| Status::new(code::INTERNAL, format!("reading the request: {err}")))?;
        if let Ok(data) = frame.into_data() {
            deframer.push(&data);
            while let Some(message) = deframer.next_message()? {
                messages.push(message);
            }
        }
    }
    if !deframer.is_empty() {
        return Err(Status::new(code::INTERNAL, "the request ended inside a message"));
    }
    Ok(messages)
}

/// The one message of `kind` ("a unary call"), whose request stream holds just that.
async fn read_one(body: Incoming, kind: &str) -> Result<Bytes, Status> {
    let messages = read_messages(body).await?;
    match <[Bytes; 1]>::try_from(messages) {
        Ok([message]) => Ok(message),
        Err(messages) => Err(Status::new(
            code::INVALID_ARGUMENT,
            format!("{kind} takes 1 message, not {}", messages.len()),
        )),
    }
}

/// An answer of whole messages, then the status in the trailers.
async fn answer(messages: Vec<Vec<u8>>, status: &Status) -> Response<Body> {
    let (tx, body) = body::channel(messages.len() + 1);
    for message in messages {
        // The channel has room for every frame, and the receiver is alive: these cannot fail.
        let _ = tx.send(Frame::data(frame(&message))).await;
    }
    let _ = tx.send(Frame::trailers(status.to_headers())).await;
    grpc_response(body)
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// An answer without messages: the status goes in the headers.
fn trailers_only(status: &Status) -> Response<Body> {
    let mut response = grpc_response(body::empty());
    response.headers_mut().extend(status.to_headers());
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
}
