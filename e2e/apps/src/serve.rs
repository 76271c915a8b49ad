//! How every app serves: braid-runtime's accept loop with HTTP/1.1 and h2c (prior knowledge) on
//! one port, and a graceful drain of open connections when told to stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use braid_runtime::serve::{self, Protocol, Settings};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::Body;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Answers one request; the peer is the address the connection came from.
pub type Handler = Arc<dyn Fn(Request<Incoming>, SocketAddr) -> BoxFuture<Response<Body>> + Send + Sync>;

/// Serves `listener` until `stop` fires, then stops accepting, lets in-flight requests finish
/// (idle keep-alive connections are closed at once, HTTP/2 clients get a GOAWAY) and returns when
/// all connections are closed or after `drain`, whichever comes first.
pub async fn serve(listener: TcpListener, handler: Handler, stop: CancellationToken, drain: Duration) {
    // Plain HTTP: in the mesh, the sidecar proxy terminates mTLS in front of the app.
    let settings = Settings { drain_timeout: drain, ..Settings::new("server", Protocol::Auto) };
    let make_service = move |connection: &serve::Connection<'_>| {
        let handler = handler.clone();
        let peer = connection.peer;
        Some(service_fn(move |request| {
            let answer = handler(request, peer);
            async move { Ok::<_, Infallible>(answer.await) }
        }))
    };
    serve::serve(listener, None, make_service, settings, stop).await;
}
