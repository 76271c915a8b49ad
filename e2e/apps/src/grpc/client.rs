//! A gRPC client over one HTTP/2 connection (prior knowledge, no TLS): what the tests and
//! `grpc-echo call` use to talk to the server, or to any gRPC server of proto/echo.proto.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::proto::{self, EchoReply, EchoRequest, ProtoError};
use super::{CONTENT_TYPE, Deframer, ECHO_PATH, HEALTH_PATH, STREAM_PATH, Status, code, frame};
use crate::body::{self, Body};

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Status(#[from] Status),
    #[error("bad message: {0}")]
    Proto(#[from] ProtoError),
    #[error("not a gRPC answer: {0}")]
    Protocol(String),
}

impl GrpcError {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<u32> {
        match self {
            Self::Status(status) => Some(status.code),
            _ => None,
        }
    }
}

pub struct GrpcClient {
    sender: SendRequest<Body>,
    authority: String,
}

impl GrpcClient {
    /// Connects to `addr` ("host:port").
    pub async fn connect(addr: &str) -> Result<Self, GrpcError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| GrpcError::Connect { addr: addr.to_owned(), source })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "gRPC connection ended with an error");
            }
        });
        Ok(Self { sender, authority: addr.to_owned() })
    }

    pub async fn echo(&mut self, message: &str) -> Result<EchoReply, GrpcError> {
        self.echo_with(message, &HeaderMap::new()).await
    }

    /// A unary Echo with extra request headers (`x-echo-*` faults, say).
    pub async fn echo_with(&mut self, message: &str, headers: &HeaderMap) -> Result<EchoReply, GrpcError> {
        let request = EchoRequest { message: message.to_owned() }.encode();
        let messages = self.call(ECHO_PATH, vec![request], headers).await?;
        match messages.as_slice() {
            [reply] => Ok(EchoReply::decode(reply)?),
            other => Err(GrpcError::Protocol(format!("a unary call answered {} messages", other.len()))),
        }
    }

    /// `grpc.health.v1.Health/Check` of the whole server: SERVING (1) or NOT_SERVING (2).
    pub async fn health(&mut self) -> Result<u64, GrpcError> {
        let messages = self.call(HEALTH_PATH, vec![Vec::new()], &HeaderMap::new()).await?;
        match messages.as_slice() {
            [status] => Ok(proto::decode_health(status)?),
            other => Err(GrpcError::Protocol(format!("a health check answered {} messages", other.len()))),
        }
    }

    /// Sends whole `messages` to `path`, and returns the messages of a successful answer.
    pub async fn call(
        &mut self,
        path: &str,
        messages: Vec<Vec<u8>>,
        headers: &HeaderMap,
    ) -> Result<Vec<Bytes>, GrpcError> {
        let (tx, body) = body::channel(messages.len().max(1));
        for message in messages {
            // Room for every message, and the receiver is in `body`: this cannot fail.
            let _ = tx.send(Frame::data(frame(&message))).await;
        }
        drop(tx);
        let mut answer = self.start(path, body, headers).await?;
        let mut messages = Vec::new();
        while let Some(message) = answer.next_message().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// Opens a bidirectional EchoStream.
    pub async fn echo_stream(&mut self, headers: &HeaderMap) -> Result<EchoStream, GrpcError> {
        let (tx, body) = body::channel(16);
        let answer = self.start(STREAM_PATH, body, headers).await?;
        Ok(EchoStream { tx: Some(tx), answer })
    }

    async fn start(&mut self, path: &str, body: Body, headers: &HeaderMap) -> Result<Answer, GrpcError> {
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = format!("http://{}{path}", self.authority).parse().map_err(|err| {
            GrpcError::Protocol(format!("{path} does not make a URI with {}: {err}", self.authority))
        })?;
        let request_headers = request.headers_mut();
        request_headers.extend(headers.clone());
        request_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        request_headers.insert(header::TE, HeaderValue::from_static("trailers"));
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(GrpcError::Protocol(format!("HTTP status {}", response.status())));
        }
        // A trailers-only answer carries its status in the headers, and no messages.
        let status = match Status::from_headers(response.headers()) {
            Some(Ok(status)) => Some(status),
            Some(Err(err)) => return Err(GrpcError::Protocol(err)),
            None => None,
        };
        Ok(Answer { body: response.into_body(), deframer: Deframer::default(), status })
    }
}

/// The messages of an answer, then its status.
struct Answer {
    body: Incoming,
    deframer: Deframer,
    /// Set once the status has been read.
    status: Option<Status>,
}

impl Answer {
    /// The next message; None once the call ended with OK; the status as an error otherwise.
    async fn next_message(&mut self) -> Result<Option<Bytes>, GrpcError> {
        loop {
            if let Some(message) = self.deframer.next_message()? {
                return Ok(Some(message));
            }
            if let Some(status) = &self.status {
                if !self.deframer.is_empty() {
                    return Err(GrpcError::Protocol("the answer ended inside a message".to_owned()));
                }
                return if status.code == code::OK { Ok(None) } else { Err(status.clone().into()) };
            }
            match self.body.frame().await {
                Some(frame) => match frame?.into_data() {
                    Ok(data) => self.deframer.push(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        self.status = Some(match Status::from_headers(&trailers) {
                            Some(Ok(status)) => status,
                            Some(Err(err)) => return Err(GrpcError::Protocol(err)),
                            None => {
                                return Err(GrpcError::Protocol("trailers without grpc-status".to_owned()));
                            }
                        });
                    }
                },
                None => return Err(GrpcError::Protocol("the answer ended without grpc-status".to_owned())),
            }
        }
    }
}

/// A bidirectional EchoStream: send messages and receive replies in any interleaving.
pub struct EchoStream {
    tx: Option<mpsc::Sender<Frame<Bytes>>>,
    answer: Answer,
}

impl EchoStream {
    pub async fn send(&mut self, message: &str) -> Result<(), GrpcError> {
        let tx =
            self.tx.as_ref().ok_or_else(|| GrpcError::Protocol("the request stream is closed".to_owned()))?;
        let message = EchoRequest { message: message.to_owned() }.encode();
        tx.send(Frame::data(frame(&message)))
            .await
            .map_err(|_| GrpcError::Protocol("the connection closed the request stream".to_owned()))
    }

    /// Ends the request stream; the server then ends the answer.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next reply; None when the call ended with OK.
    pub async fn recv(&mut self) -> Result<Option<EchoReply>, GrpcError> {
        match self.answer.next_message().await? {
            Some(message) => Ok(Some(EchoReply::decode(&message)?)),
            None => Ok(None),
        }
    }
}
