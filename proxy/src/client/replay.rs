//! A request body that can be sent again: the first try streams it as the client sends it, and
//! each chunk is kept, up to a bound, so that a retry replays what was read and then goes on
//! reading where the client is. Nothing waits for the whole body (a gRPC stream may be answered
//! before it ends). Past the bound the copy is dropped and the request is no longer retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::{BodyError, ProxyBody};

/// One try's view of the shared body; `replay` makes the next try's.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// How many chunks of the body this try has sent.
    next: usize,
    trailers_sent: bool,
}

struct Shared {
    /// The client's body, read by whichever try gets past the kept chunks first.
    client: ProxyBody,
    /// The chunks read so far, from chunk number `first` on (all of them while under `limit`).
    kept: Vec<Bytes>,
    first: usize,
    /// Chunks read from the client so far.
    read: usize,
    kept_bytes: usize,
    limit: usize,
    /// More than `limit` bytes were read: the copy is gone and no try can start over.
    overflowed: bool,
    /// The client's body broke off: a retry could not send it whole either.
    failed: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    pub fn new(client: ProxyBody, limit: usize) -> Self {
        let shared = Shared {
            client,
            kept: Vec::new(),
            first: 0,
            read: 0,
            kept_bytes: 0,
            limit,
            overflowed: false,
            failed: false,
            ended: false,
            trailers: None,
        };
        Self { shared: Arc::new(Mutex::new(shared)), next: 0, trailers_sent: false }
    }

    /// The body for another try, from its start; `None` once it cannot be sent whole again.
    pub fn replay(&self) -> Option<Self> {
        self.can_replay().then(|| Self { shared: self.shared.clone(), next: 0, trailers_sent: false })
    }

    /// Whether another try could still send the whole body.
    pub fn can_replay(&self) -> bool {
        let shared = self.lock();
        !shared.overflowed && !shared.failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // (Not `lock()`: the guard borrows `this.shared` only, so `this.next` stays writable.)
        if this.next < shared.read {
            let Some(chunk) = this.next.checked_sub(shared.first).and_then(|i| shared.kept.get(i)) else {
                // An earlier try still sending, after a later one outran the bound.
                return Poll::Ready(Some(Err(BodyError::NotReplayable)));
            };
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent
                && let Some(trailers) = shared.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut shared.client).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => {
                shared.failed = true;
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                shared.ended = true;
                shared.trailers = frame.trailers_ref().cloned();
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(frame)));
            }
        };
        shared.read += 1;
        this.next = shared.read;
        if !shared.overflowed {
            if shared.kept_bytes + data.len() > shared.limit {
                shared.overflowed = true;
                shared.kept = Vec::new();
            } else {
                shared.kept_bytes += data.len();
                shared.kept.push(data.clone());
            }
        }
        if shared.overflowed {
            shared.first = shared.read;
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        shared.ended && self.next == shared.read && (self.trailers_sent || shared.trailers.is_none())
    }

    /// Unknown: a body of known size is kept whole instead (`keep_for_replay`).
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    async fn read(body: ReplayBody) -> Result<Bytes, BodyError> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn each_try_sends_the_whole_body_while_it_is_within_the_bound() {
        let first = ReplayBody::new(ProxyBody::text("hello, world"), 64);
        let second = first.replay().expect("nothing read yet");
        assert_eq!(read(first).await.unwrap(), "hello, world");
        let third = second.replay().expect("12 bytes are within the bound");
        assert_eq!(read(second).await.unwrap(), "hello, world");
        assert_eq!(read(third).await.unwrap(), "hello, world");
    }

    #[tokio::test]
    async fn past_the_bound_the_copy_is_dropped_and_no_try_can_start_over() {
        let first = ReplayBody::new(ProxyBody::text("twelve bytes"), 8);
        let early = first.replay().expect("nothing read yet");
        assert_eq!(read(first).await.unwrap(), "twelve bytes", "the try under way gets it all");
        assert!(early.replay().is_none(), "no further try after the bound was passed");
        assert!(matches!(read(early).await, Err(BodyError::NotReplayable)));
    }
}
