//! One body type for everything the proxy sends: a streamed body it forwards (from hyper, or
//! straight from an HTTP/2 stream to another proxy), a small body it kept to replay, or a short
//! answer of its own. An enum rather than a boxed trait object: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::http1::{Http1Body, Http1Error};
use super::replay::ReplayBody;
use crate::metrics::{End, GrpcStatus, PendingResponse};
use crate::spans::{Outcome, Span};

pub struct ProxyBody {
    kind: Kind,
    /// A response's entry in response_total, counted when its body ends, fails or is dropped
    /// unfinished (the client went away): how the exchange ended is known only then.
    pending: Option<PendingResponse>,
    /// The span of the exchange, when it is traced: reported when the body ends, with its size.
    span: Option<Box<Span>>,
}

enum Kind {
    Streaming(Incoming),
    /// The response body of a request the proxy sent over its own HTTP/2 client connection.
    Http2(Http2Body),
    /// The response body of a request sent over a lean HTTP/1.1 connection (`http1`).
    Http1(Http1Body),
    Full(Option<Bytes>),
    /// A request body of unknown length, kept as it streams so that a retry can send it again.
    Replay(ReplayBody),
}

/// Why a forwarded body broke off: the connection or stream it came on failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("the HTTP/2 stream failed: {0}")]
    Http2(#[from] h2::Error),
    #[error("the HTTP/1.1 response body failed: {0}")]
    Http1(#[from] Http1Error),
    #[error("the request body was sent on by a later try and is no longer kept for this one")]
    NotReplayable,
}

impl BodyError {
    /// The reason of a reset the sender of the body sent for its HTTP/2 stream.
    pub fn stream_reset(&self) -> Option<h2::Reason> {
        match self {
            Self::Http2(error) if error.is_reset() && error.is_remote() => error.reason(),
            _ => None,
        }
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

impl ProxyBody {
    fn of(kind: Kind) -> Self {
        Self { kind, pending: None, span: None }
    }

    pub fn empty() -> Self {
        Self::of(Kind::Full(None))
    }

    pub fn text(text: impl Into<Bytes>) -> Self {
        let bytes = text.into();
        Self::of(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// A body hyper's server or client reads from its connection.
    pub fn streaming(body: Incoming) -> Self {
        Self::of(Kind::Streaming(body))
    }

    pub fn http2(body: Http2Body) -> Self {
        Self::of(Kind::Http2(body))
    }

    pub fn http1(body: Http1Body) -> Self {
        Self::of(Kind::Http1(body))
    }

    pub fn replay(body: ReplayBody) -> Self {
        Self::of(Kind::Replay(body))
    }

    /// The whole body, when it is held in memory (`Some(None)`: empty).
    pub fn in_memory(&self) -> Option<Option<&Bytes>> {
        match &self.kind {
            Kind::Full(bytes) => Some(bytes.as_ref()),
            _ => None,
        }
    }

    /// Counts the response this is the body of in response_total when the body ends: as
    /// `pending` says when it ends whole, as a failure when it breaks off (or its gRPC trailers
    /// carry a status other than OK), as cancelled when it is dropped unfinished.
    pub fn count_at_end(&mut self, pending: PendingResponse) {
        self.pending = Some(pending);
    }

    /// Reports `span`, with the response's status, when the response's body ends, with the bytes
    /// that passed and how it ended. Nothing when the request was not traced.
    pub fn trace(response: &mut http::Response<Self>, span: Option<Box<Span>>) {
        if let Some(mut span) = span {
            span.answered(response.status().as_u16());
            response.body_mut().span = Some(span);
        }
    }

    /// The same body with nothing in it: a response the proxy rewrites keeps its pending count.
    pub fn emptied(mut self) -> Self {
        self.kind = Kind::Full(None);
        self
    }

    /// Counts the response now, as if its body had ended whole: one the client gets in another
    /// form (a stream reset passed on).
    pub fn count_now(mut self) {
        self.finish(End::Complete);
    }

    fn finish(&mut self, end: End) {
        if let Some(pending) = self.pending.take() {
            pending.finish(end);
        }
        if let Some(span) = self.span.take() {
            span.finish(match end {
                End::Complete => Outcome::Complete,
                End::Failed => Outcome::Failed,
                End::Cancelled => Outcome::Cancelled,
            });
        }
    }

    fn is_watched(&self) -> bool {
        self.pending.is_some() || self.span.is_some()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.is_watched() {
            // A server stops polling a body that says it has ended (HEAD, a last DATA frame).
            let end = if self.kind.is_end_stream() { End::Complete } else { End::Cancelled };
            self.finish(end);
        }
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(body) => body.is_end_stream(),
            Self::Http2(body) => body.stream.is_end_stream(),
            Self::Http1(body) => body.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
            Self::Replay(body) => body.is_end_stream(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Streaming(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            Kind::Http2(body) => body.poll_frame(cx),
            Kind::Http1(body) => body.poll_frame(cx).map_err(BodyError::from),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Replay(body) => Pin::new(body).poll_frame(cx),
        };
        if this.is_watched() {
            match &polled {
                Poll::Ready(None) => this.finish(End::Complete),
                Poll::Ready(Some(Err(_))) => this.finish(End::Failed),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers end the body; gRPC says there how the call went.
                    if let Some(trailers) = frame.trailers_ref() {
                        let failed = trailers.get(GRPC_STATUS).is_some_and(|status| status != "0");
                        if let Some(pending) = &mut this.pending {
                            pending.trailers(GrpcStatus::of(trailers));
                        }
                        this.finish(if failed { End::Failed } else { End::Complete });
                    } else {
                        if let Some(pending) = &mut this.pending {
                            pending.first_byte();
                        }
                        if let (Some(span), Some(data)) = (&mut this.span, frame.data_ref()) {
                            span.response_size += data.len() as u64;
                        }
                    }
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streaming(body) => body.size_hint(),
            Kind::Http2(body) => body.content_length.map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Http1(body) => body.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Replay(body) => body.size_hint(),
        }
    }
}

/// An HTTP/2 response body: its data, each chunk's flow-control window given back as it is
/// passed on, then its trailers.
pub struct Http2Body {
    stream: h2::RecvStream,
    content_length: Option<u64>,
}

impl Http2Body {
    pub fn new(stream: h2::RecvStream, headers: &HeaderMap) -> Self {
        let content_length = headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
        Self { stream, content_length }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match ready!(self.stream.poll_data(cx)) {
            Some(Ok(data)) => {
                // The window reopens once the data is handed on, so a slow reader slows the sender.
                let _ = self.stream.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => match ready!(self.stream.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(error) => Poll::Ready(Some(Err(error.into()))),
            },
        }
    }
}
