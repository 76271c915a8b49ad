//! Opaque TCP: bytes forwarded both ways, unparsed, until either side closes, or (with an
//! `Idle`) until no byte has crossed either way for its timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

use crate::client::{self, TlsTarget};

/// How long a connection may stay idle, and the counter of those closed for it
/// (tcp_idle_timeout).
#[derive(Clone)]
pub struct Idle {
    pub timeout: Duration,
    pub closed: Counter,
}

pub async fn forward<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    addr: SocketAddr,
    tls: Option<&TlsTarget>,
    idle: Option<Idle>,
) {
    let server = match client::connect(addr, tls).await {
        Ok(server) => server,
        Err(error) => {
            // Closing the client connection is all TCP can say.
            debug!(%error, "opaque connection: upstream unreachable");
            return;
        }
    };
    let start = Instant::now();
    let last = AtomicU64::new(0);
    // Without an idle timeout nothing reads the activity: not even a clock read is spent on it.
    let noted = idle.as_ref().map(|_| &last);
    let mut client = Activity { inner: client, start, last: noted };
    let mut server = Activity { inner: server, start, last: noted };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    let result = match idle {
        None => copy.await,
        Some(idle) => tokio::select! {
            result = copy => result,
            () = idle_for(idle.timeout, start, &last) => {
                idle.closed.inc();
                debug!(%addr, timeout = ?idle.timeout, "opaque connection idle: closed");
                return;
            }
        },
    };
    match result {
        Ok((sent, received)) => debug!(%addr, sent, received, "opaque connection closed"),
        Err(error) => debug!(%addr, %error, "opaque connection failed"),
    }
}

/// Returns once nothing has crossed the connection for `timeout`.
async fn idle_for(timeout: Duration, start: Instant, last: &AtomicU64) {
    loop {
        let due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + timeout;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// One side of an opaque connection, noting (when `last` is given) when bytes last crossed it,
/// in milliseconds since `start`: one clock read per read or write, no timer moved.
struct Activity<'a, T> {
    inner: T,
    start: Instant,
    last: Option<&'a AtomicU64>,
}

impl<T> Activity<'_, T> {
    fn seen(&self) {
        if let Some(last) = self.last {
            last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<'_, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.seen();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.seen();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An echo server's address.
    async fn echo() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    // Real time: the upstream is a real socket, which a paused clock would not wait for.
    #[tokio::test]
    async fn traffic_keeps_a_connection_open_and_silence_closes_it() {
        let addr = echo().await;
        let (mut app, proxy_side) = tokio::io::duplex(1024);
        let idle = Idle { timeout: Duration::from_millis(400), closed: Counter::default() };
        let forwarding = tokio::spawn(forward(proxy_side, addr, None, Some(idle.clone())));
        let mut back = [0u8; 4];
        // Bytes every 200 ms, for 1.2 s: never 400 ms of silence.
        for _ in 0..6 {
            app.write_all(b"ping").await.unwrap();
            app.read_exact(&mut back).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!forwarding.is_finished(), "closed while bytes were crossing it");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(forwarding.is_finished(), "still open after 800 ms of silence");
        assert_eq!(idle.closed.get(), 1);
    }
}
