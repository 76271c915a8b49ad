//! One system call for all the frames an HTTP/2 connection writes in one turn of its task.
//!
//! The h2 crate writes each DATA frame larger than 256 bytes with a write and a flush of its
//! own, so the responses of concurrent streams never share a write: on the benchmark's inbound
//! proxy that was 2.0 writes per request where HAProxy makes 1.3, and on loopback each write
//! also runs the peer's receive path.
//!
//! The connection writes into a `CoalescedIo`, which copies into a buffer. While the task that
//! drives the connection is polling it (inside `FlushAfterPoll`), a flush only leaves the bytes
//! due; `FlushAfterPoll` writes them as soon as that poll returns. So a flush is deferred to the
//! end of the very turn it was asked in, never to a later wake-up that might not come. Outside a
//! turn (handshakes, shutdown) a flush writes at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write waits for the socket: one turn's frames for many streams fit.
pub const MAX_BUFFERED: usize = 64 * 1024;

struct State<T> {
    io: T,
    buffer: Vec<u8>,
    /// How much of `buffer` is already written.
    written: usize,
    /// Set while `FlushAfterPoll` polls the connection: flushes may wait for the turn's end.
    in_turn: bool,
    /// A write error met at the end of a turn, for the connection's next call to see.
    error: Option<io::Error>,
}

impl<T: AsyncWrite + Unpin> State<T> {
    /// Writes the buffer out and flushes the transport; Ready when nothing is left.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        // A TLS transport holds the records it made until flushed.
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<T> State<T> {
    fn take_error(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

/// The transport as the HTTP/2 connection sees it.
pub struct CoalescedIo<T> {
    state: Arc<Mutex<State<T>>>,
}

/// Writes what a turn left due: held by the task that drives the connection.
pub struct Flusher<T> {
    state: Arc<Mutex<State<T>>>,
}

/// Wraps a transport; the connection made over it must be polled through `FlushAfterPoll`
/// with the returned `Flusher`.
pub fn coalesce<T>(io: T) -> (CoalescedIo<T>, Flusher<T>) {
    let state =
        Arc::new(Mutex::new(State { io, buffer: Vec::new(), written: 0, in_turn: false, error: None }));
    (CoalescedIo { state: state.clone() }, Flusher { state })
}

fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Only this connection's task takes the lock, so poisoning means a panic in that same task.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        state.take_error()?;
        Pin::new(&mut state.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> CoalescedIo<T> {
    /// Takes `len` bytes into the buffer with `copy`, first writing the buffer out when they
    /// would not fit; a write as large as the whole buffer goes straight to the transport.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        copy: impl FnOnce(&mut Vec<u8>),
        direct: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let mut state = lock(&self.state);
        state.take_error()?;
        if state.buffer.len() + len > MAX_BUFFERED {
            ready!(state.poll_write_out(cx))?;
            if len >= MAX_BUFFERED {
                return direct(Pin::new(&mut state.io), cx);
            }
        }
        copy(&mut state.buffer);
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_take(
            cx,
            data.len(),
            |buffer| buffer.extend_from_slice(data),
            |io, cx| io.poll_write(cx, data),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        self.poll_take(
            cx,
            len,
            |buffer| {
                buffer.reserve(len);
                for buf in bufs {
                    buffer.extend_from_slice(buf);
                }
            },
            |io, cx| io.poll_write_vectored(cx, bufs),
        )
    }

    /// Every write is a copy into the buffer, so slices cost nothing extra.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        state.take_error()?;
        if state.in_turn {
            // Written by FlushAfterPoll as soon as this turn's poll returns.
            return Poll::Ready(Ok(()));
        }
        state.poll_write_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        state.take_error()?;
        ready!(state.poll_write_out(cx))?;
        Pin::new(&mut state.io).poll_shutdown(cx)
    }
}

/// Polls a connection future, then writes what the poll left in its `CoalescedIo`.
pub struct FlushAfterPoll<'a, F, T> {
    connection: Pin<&'a mut F>,
    flusher: &'a Flusher<T>,
}

impl<'a, F, T> FlushAfterPoll<'a, F, T> {
    pub fn new(connection: Pin<&'a mut F>, flusher: &'a Flusher<T>) -> Self {
        Self { connection, flusher }
    }
}

impl<F: Future, T: AsyncWrite + Unpin> Future for FlushAfterPoll<'_, F, T> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        lock(&self.flusher.state).in_turn = true;
        let result = self.connection.as_mut().poll(cx);
        let mut state = lock(&self.flusher.state);
        state.in_turn = false;
        if state.error.is_none()
            && state.written < state.buffer.len()
            && let Poll::Ready(Err(error)) = state.poll_write_out(cx)
        {
            // The connection learns of it on its next call; make sure there is one.
            state.error = Some(error);
            cx.waker().wake_by_ref();
        }
        // Pending means the socket is full and this task is registered for it: the bytes are
        // written when it wakes, before anything else the connection writes.
        result
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair of real loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let addr = listener.local_addr().expect("listener address");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect on loopback"), accepted.expect("accept on loopback").0)
    }

    /// Counts the writes that reach the socket.
    struct CountingWrites {
        socket: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let result = Pin::new(&mut this.socket).poll_write(cx, data);
            if let Poll::Ready(Ok(_)) = result {
                this.writes.fetch_add(1, Ordering::Relaxed);
            }
            result
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().socket).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
        }
    }

    async fn read_exactly(socket: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut received = vec![0; len];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut received))
            .await
            .expect("the bytes arrive within 5 s")
            .expect("read from the peer");
        received
    }

    /// A turn like h2's: three frames, each written and flushed, then the connection waits.
    #[tokio::test]
    async fn the_frames_of_one_turn_leave_in_one_write_when_the_turn_ends() {
        let (socket, mut peer) = socket_pair().await;
        let writes = Arc::new(AtomicUsize::new(0));
        let (mut io, flusher) = coalesce(CountingWrites { socket, writes: writes.clone() });
        let mut first_turn = true;
        let connection = poll_fn(|cx| {
            if std::mem::take(&mut first_turn) {
                for frame in [&b"one "[..], b"two ", b"three"] {
                    let written = Pin::new(&mut io).poll_write(cx, frame);
                    assert!(matches!(written, Poll::Ready(Ok(n)) if n == frame.len()));
                    assert!(matches!(Pin::new(&mut io).poll_flush(cx), Poll::Ready(Ok(()))));
                }
                assert_eq!(writes.load(Ordering::Relaxed), 0, "nothing written inside the turn");
            }
            // Then it waits for something that never comes, as an idle connection does.
            Poll::<()>::Pending
        });
        tokio::pin!(connection);
        let driven = FlushAfterPoll::new(connection.as_mut(), &flusher);
        let received = tokio::select! {
            () = driven => unreachable!("the connection never completes"),
            received = read_exactly(&mut peer, 13) => received,
        };
        assert_eq!(received, b"one two three");
        assert_eq!(writes.load(Ordering::Relaxed), 1, "one write for the turn");
    }

    #[tokio::test]
    async fn a_flush_outside_a_turn_writes_at_once() {
        let (socket, mut peer) = socket_pair().await;
        let (mut io, _flusher) = coalesce(socket);
        io.write_all(b"PRI * HTTP/2.0").await.expect("write");
        io.flush().await.expect("flush");
        assert_eq!(read_exactly(&mut peer, 14).await, b"PRI * HTTP/2.0");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered_first() {
        let (socket, mut peer) = socket_pair().await;
        let (mut io, flusher) = coalesce(socket);
        let connection = poll_fn(|cx| {
            let _ = Pin::new(&mut io).poll_write(cx, b"goaway");
            Pin::new(&mut io).poll_shutdown(cx)
        });
        tokio::pin!(connection);
        FlushAfterPoll::new(connection.as_mut(), &flusher).await.expect("shutdown");
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.expect("read to the end");
        assert_eq!(received, b"goaway");
    }

    /// A peer that reads nothing: the buffer stops at its bound and the writer waits, and once
    /// the peer reads, every byte arrives in order.
    #[tokio::test]
    async fn a_slow_peer_bounds_the_buffer_and_loses_nothing() {
        let (socket, mut peer) = socket_pair().await;
        let (mut io, flusher) = coalesce(socket);
        // More than loopback's socket buffers hold, so the writer has to wait for the reader.
        let total = 256 * MAX_BUFFERED;
        let mut sent = 0usize;
        let writer = async {
            while sent < total {
                let chunk: Vec<u8> = (sent..sent + 1000).map(|i| (i % 251) as u8).collect();
                let connection = poll_fn(|cx| {
                    let result = Pin::new(&mut io).poll_write(cx, &chunk);
                    assert!(lock(&flusher.state).buffer.len() <= MAX_BUFFERED, "the buffer stays bounded");
                    result
                });
                tokio::pin!(connection);
                let n = FlushAfterPoll::new(connection.as_mut(), &flusher).await.expect("write");
                sent += n;
            }
            poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await.expect("shutdown");
        };
        let reader = async {
            // Let the socket buffers fill before reading.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut received = Vec::new();
            peer.read_to_end(&mut received).await.expect("read to the end");
            received
        };
        let ((), received) = tokio::join!(writer, reader);
        assert_eq!(received.len(), sent);
        assert!(received.iter().enumerate().all(|(i, byte)| *byte == (i % 251) as u8), "bytes in order");
    }

    #[tokio::test]
    async fn a_write_error_at_the_end_of_a_turn_reaches_the_connection() {
        let (socket, peer) = socket_pair().await;
        drop(peer);
        let (mut io, flusher) = coalesce(socket);
        let mut turns = 0;
        let connection = poll_fn(|cx| {
            turns += 1;
            assert!(turns < 10_000, "the write error never reached the connection");
            // A frame each turn, written and flushed, as h2 does until it is told of the error.
            match Pin::new(&mut io).poll_write(cx, &[0; 4096]) {
                Poll::Ready(Err(error)) => return Poll::Ready(error),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
            match Pin::new(&mut io).poll_flush(cx) {
                Poll::Ready(Err(error)) => Poll::Ready(error),
                _ => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
        });
        tokio::pin!(connection);
        let error =
            tokio::time::timeout(Duration::from_secs(5), FlushAfterPoll::new(connection.as_mut(), &flusher))
                .await
                .expect("the error arrives within 5 s");
        assert!(
            matches!(error.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
            "{error:?}"
        );
    }
}
